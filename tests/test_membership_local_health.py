"""Lifeguard local health for a starved process (specs/membership.md §6 "Late timers"):
when our own timers fire late, that counts against our health, not against the members
whose acks we could not read in time. Explicit time, no sleeps: deterministic."""

from __future__ import annotations

from keepmesh.protocol.membership import Membership, MemberState, Ping, decode_swim

from tests.membership_cluster import LAN, Cluster

SLACK = LAN.late_timer_slack * LAN.probe_timeout


def start_probe(c: Cluster) -> tuple[Membership, int, float]:
    """Run member 0's timers on time until it sends a probe; (member, target, when)."""
    m = c.nodes[0]
    while True:
        t = m.get_timer()
        assert t is not None
        m.handle_timer(t)
        for o in m.datagrams_to_send():
            msg = decode_swim(o.data, 1400, (Ping,)) if b"swim.ping" in o.data else None
            if isinstance(msg, Ping) and not o.reliable:
                return m, c.by_address[o.dst], t


def run_on_time(m: Membership, until: float) -> None:
    while (t := m.get_timer()) is not None and t <= until:
        m.handle_timer(t)
        m.datagrams_to_send()


def test_missed_ack_on_time_suspects_the_target() -> None:
    c = Cluster(4)
    m, target, t0 = start_probe(c)
    run_on_time(m, t0 + LAN.probe_interval + 0.01)  # no ack, no nacks delivered
    assert m.state_of(c.id(target)) is MemberState.SUSPECT
    assert m.stats.get("timers.late", 0) == 0


def test_missed_ack_while_we_ran_late_accuses_nobody() -> None:
    c = Cluster(4)
    m, target, t0 = start_probe(c)
    score = m.awareness.score
    # our loop was starved: the next timer call comes a whole second late
    m.handle_timer(t0 + LAN.probe_interval + 1.0)
    m.datagrams_to_send()
    assert m.state_of(c.id(target)) is MemberState.ALIVE
    assert m.stats["timers.late"] == 1 and m.stats["probes.inconclusive"] == 1
    assert m.awareness.score == score + 1
    assert m.max_timer_lateness >= 1.0
    # the scaled timeout is longer now
    assert m.awareness.scale(LAN.probe_timeout) == 2 * LAN.probe_timeout


def test_slightly_late_timer_is_not_counted() -> None:
    c = Cluster(4)
    m, target, t0 = start_probe(c)
    t = m.get_timer()
    assert t is not None
    m.handle_timer(t + SLACK * 0.9)
    assert m.stats.get("timers.late", 0) == 0


def test_lateness_raises_awareness_at_most_once_per_probe_period() -> None:
    c = Cluster(4)
    m = c.nodes[0]
    now = 0.0
    for _ in range(10):  # ten calls, each 0.5 s late, within about 1.5 s
        t = m.get_timer()
        assert t is not None
        now = max(now, t) + 0.5
        m.handle_timer(now)
        m.datagrams_to_send()
    assert m.stats["timers.late"] >= 3
    assert m.awareness.score <= int(now / LAN.probe_interval) + 1


def test_late_suspicion_expiry_is_deferred_once() -> None:
    c = Cluster(5)
    m, target, t0 = start_probe(c)
    run_on_time(m, t0 + LAN.probe_interval + 0.01)
    assert m.state_of(c.id(target)) is MemberState.SUSPECT
    susp = m._members[c.id(target)].suspicion
    assert susp is not None
    deadline = susp.deadline
    run_on_time(m, deadline - 0.01)
    # the expiry is processed 1 s late: the refutation may be sitting unread
    m.handle_timer(deadline + 1.0)
    m.datagrams_to_send()
    assert m.state_of(c.id(target)) is MemberState.SUSPECT
    run_on_time(m, deadline + 1.0 + m.awareness.scale(LAN.probe_interval) + 0.01)
    assert m.state_of(c.id(target)) is MemberState.DEAD


def test_deadline_moved_into_the_past_by_input_is_due_not_late() -> None:
    """Confirmations can shorten a suspicion below its elapsed time: the deadline is
    then due at once; that is not our process running late (no awareness penalty)."""
    from keepmesh.protocol.membership import Gossip, Suspect
    from keepmesh.protocol.membership.messages import accusation_signed_bytes
    from keepmesh.protocol.wire import encode_payload

    from tests.membership_cluster import address

    c = Cluster(6)
    m, target, t0 = start_probe(c)
    run_on_time(m, t0 + LAN.probe_interval + 0.01)
    assert m.state_of(c.id(target)) is MemberState.SUSPECT
    susp = m._members[c.id(target)].suspicion
    assert susp is not None and susp.deadline > susp.start + susp.lo
    now = susp.start + susp.lo + 0.5  # past the minimum, before the current deadline
    run_on_time(m, now)
    late_before = m.stats.get("timers.late", 0)
    inc = c.record(target).incarnation
    for accuser in [i for i in range(1, 6) if i != target][:2]:
        unsigned = Suspect(node=c.id(target), incarnation=inc, accuser=c.id(accuser),
                           signature=b"")
        item = encode_payload(Suspect(node=c.id(target), incarnation=inc, accuser=c.id(accuser),
                                      signature=c.signers[accuser].sign(
                                          accusation_signed_bytes(unsigned))))
        m.receive(encode_payload(Gossip(sender=c.id(accuser), gossip=(item,))),
                  address(accuser), now, src_id=c.id(accuser))
    assert m.get_timer() == now  # due at once
    m.handle_timer(now)
    assert m.stats.get("timers.late", 0) == late_before
    assert m.state_of(c.id(target)) is MemberState.DEAD
