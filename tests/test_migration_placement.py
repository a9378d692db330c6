"""Standbys chosen and held by placement (specs/migration.md §4): only hosts placement
would pick for the deployment (signed policy, labels, room) become standbys, each
standby's own lease table holds room for the keep, a standby without room refuses
and the host moves on, and the hold becomes the running keep's lease on takeover.
The successor is still the HRW choice among the live, trusted standbys."""

from __future__ import annotations

from keepmesh.protocol.deployment import deployment_id
from keepmesh.protocol.effects import Commit
from keepmesh.protocol.migration import effects as fx
from keepmesh.protocol.placement import PlacementMachine
from migration_net import deployment
from test_migration_machine import Host, MeshSim

ZONE_A = {"replicas": 1, "labels": {"zone": "a"}}


def _place(sim: MeshSim, host_addr: str, name: str, **manifest: object) -> str:
    host = sim.hosts[host_addr]
    d = deployment(name, **manifest)  # type: ignore[arg-type]
    keep = deployment_id(d)
    sim.deployments[keep] = d
    host.counters[keep] = 5
    host.node.command(Commit(0, keep, 1, d.owner_key, 64), sim.now)
    host.node.complete(fx.KeepHosted(d, 1), sim.now)
    sim.after(host_addr)
    return keep


def _leases(h: Host) -> PlacementMachine:
    m = h.node.machine(PlacementMachine)
    assert isinstance(m, PlacementMachine)
    return m


def _standbys(sim: MeshSim, host: Host, keep: str) -> list[str]:
    loc = host.machine.engine.locations.get(keep)
    return [] if loc is None else [sim.addr_of(s) for s in loc.standbys]


def test_standbys_only_on_hosts_that_meet_the_signed_labels_and_hold_a_lease() -> None:
    zones = ["a", "b", "b", "a", "b", "b"]
    sim = MeshSim(6, seed=3, placement=True, labels=[{"zone": z} for z in zones])
    sim.run_until(15.0)
    addrs = list(sim.hosts)
    host = sim.hosts[addrs[0]]
    keeps = [_place(sim, addrs[0], f"zoned-{i}", placement=ZONE_A) for i in range(4)]
    sim.run_until(25.0)
    for keep in keeps:
        # whatever HRW would rank first, the only zone-a member is the standby
        assert _standbys(sim, host, keep) == [addrs[3]]
        held = _leases(sim.hosts[addrs[3]]).leases.holds(keep)
        assert held is not None and not held.committed and held.memory_mb == 64
        for other in addrs[1:3] + addrs[4:]:
            assert _leases(sim.hosts[other]).leases.holds(keep) is None
    # without the label constraint, zone-b hosts are candidates too
    free = _place(sim, addrs[0], "anywhere")
    sim.run_until(35.0)
    assert _standbys(sim, host, free) and len(_standbys(sim, host, free)) == 1
    # the hold is renewed while it stays a standby (lease life 30 s, refresh 10 s)
    sim.run_until(80.0)
    held = _leases(sim.hosts[addrs[3]]).leases.holds(keeps[0])
    assert held is not None and not held.committed


def test_takeover_commits_the_standby_hold_at_the_new_epoch() -> None:
    zones = ["a", "b", "a", "b"]
    sim = MeshSim(4, seed=5, placement=True, labels=[{"zone": z} for z in zones])
    sim.run_until(15.0)
    addrs = list(sim.hosts)
    keep = _place(sim, addrs[0], "moving", placement=ZONE_A)
    sim.run_until(25.0)
    assert _standbys(sim, sim.hosts[addrs[0]], keep) == [addrs[2]]
    sim.hosts[addrs[0]].up = False
    sim.run_until(50.0)
    new = sim.hosts[addrs[2]]
    assert new.counters.get(keep) == 5
    held = _leases(new).leases.holds(keep)
    assert held is not None and held.committed and held.epoch == 2
    assert _leases(new).leases.free_mb() == 1024 - 64


def test_a_standby_whose_lease_table_has_no_room_refuses_and_the_host_moves_on() -> None:
    # every member advertises 1024 MiB, but n1 and n2's lease tables hold only 32 MiB
    sim = MeshSim(4, seed=8, placement=True, lease_mb=[1024, 32, 32, 1024])
    sim.run_until(15.0)
    addrs = list(sim.hosts)
    keeps = [_place(sim, addrs[0], f"big-{i}") for i in range(3)]
    sim.run_until(40.0)
    for keep in keeps:
        assert _standbys(sim, sim.hosts[addrs[0]], keep) == [addrs[3]]
        assert _leases(sim.hosts[addrs[1]]).leases.holds(keep) is None
    assert _leases(sim.hosts[addrs[3]]).leases.free_mb() == 1024 - 3 * 64


def test_standby_hold_is_released_when_the_keep_stops_needing_it() -> None:
    sim = MeshSim(3, seed=9, placement=True, labels=[{"zone": "a"}] * 3)
    sim.run_until(15.0)
    addrs = list(sim.hosts)
    keep = _place(sim, addrs[0], "short", migration={"standbys": 1, "checkpoint_s": 1.0})
    sim.run_until(22.0)
    [standby] = _standbys(sim, sim.hosts[addrs[0]], keep)
    assert _leases(sim.hosts[standby]).leases.holds(keep) is not None
    # the owner stops the keep: its record says "stopped", the standby gives the room back
    sim.hosts[addrs[0]].node.complete(fx.KeepEnded(keep, lost=False), sim.now)
    sim.hosts[addrs[0]].counters.pop(keep)
    sim.after(addrs[0])
    sim.run_until(60.0)
    assert _leases(sim.hosts[standby]).leases.holds(keep) is None


def test_a_standby_hold_no_record_names_is_not_renewed() -> None:
    """The hold is renewed "while the keep's record still names its host at that epoch"
    (specs/migration.md §4); with no record at all it was renewed for ever, so a member
    replicating keeps nobody runs (its own self-signed deployments) held a standby's
    capacity for good. Found by the placement/migration sweep. A real host's record
    reaches the standby ahead of its replicate (the renewal case: the first test)."""
    from keepmesh.protocol.migration.messages import Replicate
    from keepmesh.protocol.wire import encode_payload
    sim = MeshSim(3, seed=11, placement=True)
    sim.run_until(15.0)
    addrs = list(sim.hosts)
    sender, standby = sim.hosts[addrs[1]], sim.hosts[addrs[2]]
    d = deployment("nobody-runs-it")
    keep = deployment_id(d)
    standby.node.receive(encode_payload(Replicate(
        keep=keep, epoch=1, deployment=encode_payload(d), package_size=3,
        package_digest=bytes(32))), addrs[1], sender.node.node_id, sim.now)
    sim.after(addrs[2])
    assert _leases(standby).leases.holds(keep) is not None  # taken: no record yet
    sim.run_until(60.0)
    assert standby.machine.engine.locations.get(keep) is None
    assert _leases(standby).leases.holds(keep) is None
