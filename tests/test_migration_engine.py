"""Migration end to end in virtual time: crash, drain, trust loss, partition and heal.

Several `Migration` engines on tests/migration_net.py's virtual network; time
is explicit and randomness seeded, so each scenario is exact.
"""

from __future__ import annotations

from keepmesh.protocol.migration import effects as fx
from keepmesh.protocol.migration.engine import TRUST_GRACE_S
from migration_net import BASE_POLICY, Net


def _location(net: Net, keep: str, viewer: int = 0) -> tuple[bytes, int]:
    loc = net.nodes[viewer].engine.locations.get(keep)
    assert loc is not None
    return loc.host, loc.epoch


def test_standby_is_replicated_and_listed() -> None:
    net = Net(4)
    keep = net.deploy(net.nodes[0], "counter")
    net.run(1.0)
    r = net.nodes[0].engine.running[keep]
    ready = r.replication.ready()
    assert len(ready) == 1
    standby = net.by_id(ready[0])
    assert standby.held[keep]["package"][0] == 0
    # every member learns the location and its standby
    for n in net.nodes:
        loc = n.engine.locations.get(keep)
        assert loc is not None and loc.host == net.nodes[0].id and loc.standbys == ready


def test_checkpoints_flow_and_crash_recovers_latest() -> None:
    net = Net(5)
    host = net.nodes[0]
    keep = net.deploy(host, "counter")
    for _ in range(7):
        net.call(keep)
        net.run(1.0)
    # checkpoint_s defaults to 5: at least one checkpoint acked by the standby, which
    # hears of it at once (others at the next periodic re-push)
    standby = net.by_id(host.engine.running[keep].replication.ready()[0])
    loc = standby.engine.locations.get(keep)
    assert loc is not None and loc.checkpoint_seq >= 1
    acked_value = host.counters[keep]
    net.call(keep)  # after the last checkpoint: may be lost on a crash
    net.run(5.0)    # the next checkpoint carries it
    value_at_ckpt = int.from_bytes(host.checkpoints[keep][max(host.checkpoints[keep])], "big")
    assert value_at_ckpt >= acked_value
    net.crash(host)
    copies = net.running(keep)
    assert len(copies) == 1 and copies[0] is not host
    assert copies[0].counters[keep] == value_at_ckpt
    for n in net.nodes[1:]:
        assert _location(net, keep, net.nodes.index(n)) == (copies[0].id, 2)
    moved = [e for e in copies[0].events if isinstance(e, fx.KeepMoved)]
    assert moved and moved[0].trigger == "dead" and moved[0].epoch == 2
    # the new host picks a new standby among the survivors
    net.run(1.0)
    assert len(copies[0].engine.running[keep].replication.ready()) == 1


def test_drain_moves_every_keep_with_no_loss() -> None:
    net = Net(5, seed=3)
    host = net.nodes[0]
    keeps = [net.deploy(host, f"k{i}") for i in range(3)]
    net.run(1.0)
    for k in keeps:
        for _ in range(4):
            net.call(k)
    values = {k: host.counters[k] for k in keeps}
    host.engine.drain(net.now)
    net.pump()
    net.run(1.0)
    assert not host.counters
    done = [e for e in host.events if isinstance(e, fx.DrainFinished)]
    assert len(done) == 1 and not done[0].failed
    assert sorted(m.keep for m in done[0].moved) == sorted(keeps)
    for k in keeps:
        [copy] = net.running(k)
        assert copy is not host and copy.counters[k] == values[k]  # nothing lost
        assert _location(net, k, 4) == (copy.id, 2)
    assert all(s.reason == "moved" for s in host.stopped)
    # a new record naming the hand-over checkpoint gives the time it was taken, not 0
    net.run(1.0)
    locs = [net.nodes[4].engine.locations.get(k) for k in keeps]
    named = [loc for loc in locs if loc is not None and loc.checkpoint_seq >= 1]
    assert named
    assert all(0 < loc.checkpoint_at <= net.now for loc in named), named


def test_calls_during_a_drain_are_never_served_by_two_copies() -> None:
    net = Net(3, seed=5)
    host = net.nodes[0]
    keep = net.deploy(host, "c")
    net.run(1.0)
    host.engine.drain(net.now)
    served = []
    while True:
        out = host.engine.next_output()
        if out is None:
            break
        net._do(host, out)
        served.append(net.call(keep))
        assert len([n for n in net.running(keep) if keep not in n.paused]) <= 1
        net.pump()
    net.run(1.0)
    assert len(net.running(keep)) == 1


def test_trust_loss_moves_only_the_deployment_whose_policy_fails() -> None:
    net = Net(4, seed=7)
    host = net.nodes[0]
    strict = BASE_POLICY + "[snp]\nmin_tcb = { microcode = 210 }\n"
    k_strict = net.deploy(host, "strict", strict)
    k_loose = net.deploy(host, "loose")
    net.run(1.0)
    for _ in range(3):
        net.call(k_strict)
    net.set_tcb(host, 200)  # below microcode 210: a TCB rollback
    net.run(2.0)
    assert k_loose in host.counters                 # still satisfies its policy
    assert k_strict not in host.counters
    [copy] = net.running(k_strict)
    assert copy.counters[k_strict] == 3             # handed over, nothing lost
    moved = [e for e in copy.events if isinstance(e, fx.KeepMoved)]
    assert moved[0].trigger == "trust"


def test_standbys_take_over_from_an_untrusted_host_that_does_not_hand_over() -> None:
    net = Net(4, seed=9)
    host = net.nodes[0]
    strict = BASE_POLICY + "[snp]\nmin_tcb = { microcode = 210 }\n"
    keep = net.deploy(host, "strict", strict)
    net.run(6.0)
    # Peers see the rolled-back TCB; the host itself is told nothing (a silent host).
    host.microcode = 200
    from keepmesh.protocol.migration.triggers import Attested
    from migration_net import evidence
    for n in net.nodes[1:]:
        n.engine.member_evidence(host.id, Attested(evidence(host.id, microcode=200), net.now),
                                 net.now)
    net.pump()
    net.run(TRUST_GRACE_S / 2)
    assert net.running(keep) == [host]              # grace: the host may hand over itself
    net.run(TRUST_GRACE_S)
    copies = net.running(keep)
    assert host not in copies or len(copies) == 1
    # the host learns the higher epoch and stops its copy (fenced, not merged)
    assert keep not in host.counters
    assert [s.reason for s in host.stopped] == ["fenced"]


def test_partition_then_heal_leaves_one_copy_and_keeps_loser_state_aside() -> None:
    net = Net(6, seed=11)
    host = net.nodes[0]
    keep = net.deploy(host, "p")
    net.run(6.0)
    standby = net.by_id(host.engine.running[keep].replication.ready()[0])
    minority = [host] + [n for n in net.nodes if n is not host and n is not standby][:1]
    majority = [n for n in net.nodes if n not in minority]
    net.partition(minority, majority)
    net.run(2.0)
    assert len(net.running(keep)) == 2              # split brain while partitioned
    host.counters[keep] += 5                        # writes on the losing side
    net.heal()
    net.run(1.0)
    copies = net.running(keep)
    assert len(copies) == 1 and copies[0] is standby
    assert host.fenced_state[keep] >= 5             # set aside, not merged
    fenced = [e for e in host.events if isinstance(e, fx.KeepFenced)]
    assert fenced and fenced[0].winner == standby.id and fenced[0].winner_epoch == 2


def test_concurrent_promotions_at_one_epoch_converge_to_the_hrw_winner() -> None:
    net = Net(5, seed=13)
    host = net.nodes[0]
    # two standbys so two members can believe they are the successor
    from keepmesh.protocol.migration.settings import MigrationSettings
    keep = net.deploy(host, "t")
    r = host.engine.running[keep]
    r.settings = MigrationSettings(standbys=2)
    r.replication.settings = r.settings
    host.engine._reconcile(r, net.now)
    net.pump()
    net.run(6.0)
    a, b = (net.by_id(x) for x in host.engine.running[keep].replication.ready())
    # a's view: host dead; b's view: host dead AND a dead -> both promote at epoch 2
    net.groups = {a.id: 1, b.id: 2, host.id: 3}
    b.engine.member_state(a.id, False, net.now)
    net.crash(host)
    assert len(net.running(keep)) == 2
    net.groups.clear()
    b.engine.member_state(a.id, True, net.now)
    a.engine.member_state(b.id, True, net.now)
    net.pump()
    net.run(1.0)
    [winner] = net.running(keep)
    assert winner is a  # a ranks first for this keep: it was the successor


def test_hostile_migrate_messages_are_dropped_and_counted() -> None:
    from keepmesh.protocol.migration.messages import Handover, Location
    from keepmesh.protocol.wire import encode_payload

    net = Net(3, seed=17)
    host, other, victim = net.nodes
    keep = net.deploy(host, "h")
    net.run(1.0)
    e = victim.engine
    e.receive(b"\x93\x01\xa9migrate.x\x80", other.id, net.now)      # unknown type
    e.receive(b"garbage", other.id, net.now)
    e.receive(b"", None, net.now)                                  # unattested channel
    loc = e.locations.get(keep)
    assert loc is not None
    forged = Location(**{**loc.__dict__, "epoch": loc.epoch + 5})  # not re-signed
    e.receive(encode_payload(forged), other.id, net.now)
    assert e.dropped == 4 and e.locations.get(keep) == loc
    # a hand-over from a member that is not the keep's host is refused
    e.receive(encode_payload(Handover(keep=keep, epoch=2, from_epoch=1, seq=0,
                                      trigger="drain")), other.id, net.now)
    out = e.next_output()
    assert isinstance(out, fx.Send) and out.message.ok is False  # type: ignore[attr-defined]
    assert net.running(keep) == [host]


def test_stale_epoch_gets_a_fenced_reply_naming_the_current_host() -> None:
    net = Net(3, seed=19)
    keep = net.deploy(net.nodes[0], "f")
    net.run(6.0)
    net.crash(net.nodes[0])
    e = net.nodes[2].engine
    assert e.check_epoch(keep, 2) is None
    fenced = e.check_epoch(keep, 1)
    assert fenced is not None
    from keepmesh.protocol.migration.messages import Location
    from keepmesh.protocol.wire import decode_payload
    loc = decode_payload(fenced.location)
    assert isinstance(loc, Location) and loc.epoch == 2 and loc.host == net.running(keep)[0].id


def test_restarted_host_that_lost_its_keep_says_so_and_a_standby_takes_over() -> None:
    net = Net(4, seed=23)
    host = net.nodes[0]
    keep = net.deploy(host, "r")
    for _ in range(2):
        net.call(keep)
    net.run(6.0)
    # the host restarts with an empty engine (its copy is gone, membership says alive)
    from keepmesh.protocol.migration.engine import Migration
    host.engine = Migration(host.signer, host.engine.verifier, host.engine.address,
                            host.engine.rng, net.now, default_policy=host.engine.default_policy)
    host.counters.clear()
    for n in net.nodes:
        host.engine.member_state(n.id, True, net.now)
        if n is not host:
            n.engine.member_state(host.id, True, net.now, rejoined=True)
    net.pump()
    net.run(2.0)
    [copy] = net.running(keep)
    assert copy is not host and copy.counters[keep] == 2


def test_a_keep_whose_host_is_gone_is_listed_moving_or_orphaned_not_running() -> None:
    """The location record is its host's word, and nobody signs a newer one until a
    standby takes over: a viewer that knows the host is gone shows `moving` while a
    standby is live, `orphaned` when none is (what `keepmesh keeps` prints), never
    `running` at a host that left."""
    net = Net(3)
    host = net.nodes[0]
    keep = net.deploy(host, "counter")
    net.run(1.0)
    standby = net.by_id(host.engine.running[keep].replication.ready()[0])
    viewer = next(n for n in net.nodes if n is not host and n is not standby)

    def shown() -> object:
        summary = viewer.engine.summary(keep)
        assert summary is not None
        return summary["state"]
    assert shown() == "running"
    viewer.engine.member_state(host.id, False, net.now)  # this view only: no take-over yet
    assert shown() == "moving"
    viewer.engine.member_state(standby.id, False, net.now)
    assert shown() == "orphaned"
    viewer.engine.member_state(host.id, True, net.now)  # the host is back: its record holds
    assert shown() == "running"
