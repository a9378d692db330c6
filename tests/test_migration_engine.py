"""Migration end to end in virtual time: crash, drain, trust loss, partition and heal.

Several `Migration` engines on tests/migration_net.py's virtual network; time
is explicit and randomness seeded, so each scenario is exact.
"""

from __future__ import annotations

import pytest
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


def test_a_hand_over_deadline_is_a_time_at_which_tick_acts() -> None:
    """next_deadline() said sent_at + RESEND_S (and started + 4 x the deadline), but tick()
    tested `now - sent_at >= RESEND_S`, which rounds below it for some times (0.3 + 2.0),
    and `now - started > 120` (strict): at that deadline nothing happened and the same past
    deadline came back, so a virtual-time driver spun (the placement/migration sweep)."""
    from keepmesh.protocol.migration.drain import Outgoing, Step
    node, keep = b"\x01" * 32, "ab" * 16
    og = Outgoing(keep, 1, "drain", 0.0)
    og.advance([node], 0.0, 1)
    og.checkpoint_taken(1)
    [handover] = og.acked(node, 1, 0.30000000000000004)
    assert og.step is Step.HANDOVER
    t = og.next_deadline()
    assert t is not None
    assert og.tick(t) and og.next_deadline() > t  # type: ignore[operator]
    og = Outgoing(keep, 1, "drain", 8.200000000000001)
    og.advance([node], og.started, 1)
    og.checkpoint_taken(1)
    og.acked(node, 1, og.started)
    for _ in range(100):  # resends until the final deadline, which ends it
        t = og.next_deadline()
        if t is None:
            break
        og.tick(t)
    assert og.step is Step.FAILED and og.resume_epoch == 3


def test_a_standby_forgets_what_no_record_can_use_and_keeps_the_rest() -> None:
    """Found checking the sweep's bounds (holdings only ever grew): nothing but a
    take-over here removed a holding, so every keep a standby ever served stayed held,
    deployment bytes and all, until MAX_HELD (10,000), and then every new replicate was
    refused ("standby full"). A holding is dropped once the keep's record is stopped or
    names another host or epoch; one its record still names is kept."""
    net = Net(3)
    host = net.nodes[0]
    stopped, running = net.deploy(host, "stops"), net.deploy(host, "runs")
    net.run(1.0)
    standby = {k: net.by_id(host.engine.running[k].replication.ready()[0])
               for k in (stopped, running)}
    assert all(k in standby[k].engine.holdings.held for k in (stopped, running))
    host.engine.keep_gone(stopped, net.now)
    host.counters.pop(stopped)
    net.pump()
    net.run(12.0)  # one refresh period
    assert stopped not in standby[stopped].engine.holdings.held
    assert running in standby[running].engine.holdings.held  # still its host's standby
    # and the driver is told to delete what it stored (DropStandby), only for that keep
    assert stopped not in standby[stopped].held and running in standby[running].held
    # the keep moves on (its host crashes): what another member held for the old epoch goes
    net.crash(host)
    [new] = net.running(running)
    assert running not in new.held  # taken over: its standby copy has served
    net.run(12.0)
    for n in net.nodes[1:]:
        h = n.engine.holdings.held.get(running)
        assert h is None or (h.host, h.epoch) == (new.id, 2)
        assert (running in n.held) == (h is not None)  # the driver's store follows


def test_a_restarted_host_signs_above_the_records_of_its_earlier_run() -> None:
    """Found reviewing record order for replayed records during the sweep: a
    host that restarts runs its keeps at the same epoch with a fresh engine, its record
    versions from 0. The mesh's record from its earlier run (higher version, or equal
    and different) superseded every new one: members kept that run's standbys (here a
    crashed one) while the live standby went unlisted, so a crash would orphan the keep.
    Told its old record (the rejoin push), the host now signs above it."""
    import random

    from keepmesh.protocol.attestation.policy import load_policy
    from keepmesh.protocol.membership.signing import Ed25519Verifier
    from keepmesh.protocol.migration.engine import Migration
    from keepmesh.protocol.migration.triggers import Attested
    from migration_net import evidence
    net = Net(4)
    host = net.nodes[0]
    keep = net.deploy(host, "restarts")
    for _ in range(30):  # standbys and checkpoints: the record's version climbs
        net.call(keep)
        net.run(1.0)
    old = host.engine
    [first_standby] = old.running[keep].replication.ready()
    host.engine = Migration(host.signer, Ed25519Verifier(), old.address, random.Random(5),
                            net.now, default_policy=load_policy(BASE_POLICY))
    for n in net.nodes:
        host.engine.member_state(n.id, True, net.now)
        host.engine.member_evidence(n.id, Attested(evidence(n.id), 0.0), net.now)
    for n in net.nodes[1:]:
        n.engine.member_state(host.id, True, net.now, rejoined=True)
    host.engine.keep_running(net.deployments[keep], 1, net.now)  # from disk, same epoch
    net.pump()
    net.crash(net.by_id(first_standby))
    for _ in range(40):
        net.call(keep)
        net.run(1.0)
    ready = host.engine.running[keep].replication.ready()
    assert ready and first_standby not in ready
    for n in net.nodes[1:]:
        if n.up:
            loc = n.engine.locations.get(keep)
            assert loc is not None and loc.host == host.id and loc.standbys == ready


def test_a_successor_that_starts_before_the_hand_over_fences_the_old_copy() -> None:
    """Found reviewing odd orders during the sweep (a record at epoch + 1 before the
    hand-over): a host handing a keep over for trust loss whose final checkpoint did
    not reach the successor; after its 10 s grace the successor took over on its own,
    from its older checkpoint. The old host took that record for its hand-over and
    stopped "moved": the writes since that checkpoint were gone with no KeepFenced and
    no fenced state. Only a record after the hand-over was sent is one."""
    from keepmesh.protocol.migration.drain import Step
    from keepmesh.protocol.migration.messages import Transfer
    strict = BASE_POLICY + "[snp]\nmin_tcb = { microcode = 210 }\n"
    net = Net(3)
    host = net.nodes[0]
    keep = net.deploy(host, "ship", policy=strict)
    for _ in range(8):
        net.call(keep)
        net.run(1.0)
    succ = net.by_id(host.engine.running[keep].replication.ready()[0])
    send = net._send

    def lossy(src: object, dst_id: bytes, msg: object) -> None:
        if src is host and dst_id == succ.id and isinstance(msg, Transfer) \
                and msg.kind == "checkpoint":
            return  # the final checkpoint never reaches the successor
        send(src, dst_id, msg)  # type: ignore[arg-type]
    net._send = lossy  # type: ignore[method-assign]
    for _ in range(3):
        net.call(keep)  # writes after the standby's last checkpoint
    written = host.counters[keep]
    net.set_tcb(host, 200)  # the host fails this keep's policy: it hands over
    net.run(0.5)
    og = host.engine.running[keep].outgoing
    assert og is not None and og.step is Step.SHIP and og.successor == succ.id
    net.run(15.0)
    assert succ.counters[keep] < written  # it restored its older checkpoint
    assert [s.reason for s in host.stopped] == ["fenced"]
    assert host.fenced_state[keep] == written
    [fenced] = [e for e in host.events if isinstance(e, fx.KeepFenced)]
    assert fenced.winner == succ.id and fenced.winner_epoch == 2


@pytest.mark.parametrize("lost", [False, True])
def test_a_drain_finishes_when_a_keep_stops_here_during_it(lost: bool) -> None:
    """Found reviewing odd orders during the sweep (KeepEnded during a drain): a
    keep stopped by its owner, or lost, while a drain waited on it stayed in the drain's
    set for good, so DrainFinished never came (`agent.drain` timed out). Stopped, it no
    longer needs moving; lost, it is a failure; the drain finishes either way."""
    from keepmesh.protocol.migration.messages import Transfer
    net = Net(3)
    host = net.nodes[0]
    moves, stops = net.deploy(host, "moves"), net.deploy(host, "stops")
    net.run(6.0)
    send, blocked = net._send, [True]

    def held_back(src: object, dst_id: bytes, msg: object) -> None:
        if not (blocked[0] and src is host and isinstance(msg, Transfer)):
            send(src, dst_id, msg)  # type: ignore[arg-type]
    net._send = held_back  # type: ignore[method-assign]
    host.engine.drain(net.now)
    net.pump()
    host.engine.keep_gone(stops, net.now, lost=lost)
    host.counters.pop(stops)
    net.pump()
    blocked[0] = False
    net.run(60.0)
    [done] = [e for e in host.events if isinstance(e, fx.DrainFinished)]
    assert [m.keep for m in done.moved] == [moves]
    assert [k for k, _ in done.failed] == ([stops] if lost else [])



def _orphan_keeps(cap: int | None = None) -> tuple[Net, list[str]]:
    """Three keeps whose host crashed and whose two standbys are both ineligible: the
    standby `nodes[1]` reports them orphaned."""
    net = Net(3)
    host, sb, other = net.nodes
    if cap is not None:
        sb.engine.max_orphaned = cap
    keeps = [net.deploy(host, f"orphan{i}", migration={"standbys": 2, "checkpoint_s": 5.0})
             for i in range(3)]
    net.run(1.0)
    assert all(sb.id in host.engine.running[k].replication.ready() for k in keeps)
    for n in (sb, other):  # neither standby is eligible any more: nobody can take over
        for m in (sb, other):
            n.engine.member_evidence(m.id, None, net.now)
    net.crash(host)
    net.run(2.0)
    return net, keeps


def test_keeps_reported_orphaned_are_forgotten_once_their_record_moves_on() -> None:
    """A standby remembers which keeps it reported orphaned so it says so once per epoch;
    that memory kept every (keep, epoch) ever reported, for good. An entry now leaves
    when the keep's record moves past that epoch, or is forgotten."""
    from keepmesh.protocol.migration.location import sign_location
    from keepmesh.protocol.migration.messages import LocationStatement
    net, keeps = _orphan_keeps()
    sb, other = net.nodes[1], net.nodes[2]
    net.run(2.0)
    reported = [e.keep for e in sb.events if isinstance(e, fx.KeepOrphaned)]
    assert sorted(reported) == sorted(keeps)  # once per keep and epoch, still
    assert len(sb.engine._orphaned) == 3
    for keep in keeps[:2]:  # the keep runs again at epoch 2: its entry goes
        old = sb.engine.locations.get(keep)
        assert old is not None
        sb.engine.learn(sign_location(other.signer, LocationStatement(
            keep=keep, owner=old.owner, host=other.id, address="10.0.0.2:7000", epoch=2,
            version=0, standbys=(), checkpoint_seq=0, checkpoint_at=0.0,
            state="running")), net.now)
    assert list(sb.engine._orphaned) == keeps[2:]
    sb.engine.locations.forget(keeps[2])  # a record the table forgot: gone at the sweep
    sb.engine.handle_timer(net.now + 10.0)
    assert not sb.engine._orphaned


def test_keeps_reported_orphaned_are_capped() -> None:
    net, keeps = _orphan_keeps(cap=2)
    sb = net.nodes[1]
    assert len(sb.engine._orphaned) == 2
    assert {e.keep for e in sb.events if isinstance(e, fx.KeepOrphaned)} == set(keeps)
