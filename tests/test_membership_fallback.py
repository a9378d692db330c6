"""The stream fallback ping (memberlist's TCP fallback; specs/membership.md §6 "Probe").

When neither the direct ping nor the relays bring an ack by the probe timeout, the
prober also sends the ping on a reliable stream with its own seq. An ack to it from
the target itself ends the probe without a suspicion; nothing else does.
"""

from __future__ import annotations

import dataclasses

import msgpack
from keepmesh.protocol.membership import Ack, MemberState, Ping, decode_swim
from keepmesh.protocol.membership.messages import with_gossip
from keepmesh.protocol.wire import PROTOCOL_VERSION, decode_payload, encode_payload

from tests.membership_cluster import LAN, Cluster, address

PROBER, TARGET, OTHER = 0, 1, 2


def _probe_until_timeout(c: Cluster) -> tuple[float, list]:  # type: ignore[type-arg]
    """Run the prober to its probe timeout with the direct ping (and any ping_req) lost;
    return the time and what it sent then."""
    m = c.nodes[PROBER]
    t = m.get_timer()
    assert t is not None
    m.handle_timer(t)
    (ping,) = c.drain(PROBER)  # the direct ping: lost
    msg = decode_swim(ping.data, 1400, (Ping,))
    assert isinstance(msg, Ping) and msg.target == c.id(TARGET) and not ping.reliable
    t = m.get_timer()
    assert t is not None
    m.handle_timer(t)
    return t, c.drain(PROBER)


def _fallback(out: list, c: Cluster):  # type: ignore[no-untyped-def, type-arg]
    found = [o for o in out if o.dst == address(TARGET) and o.reliable]
    assert len(found) == 1
    msg = decode_swim(found[0].data, 1400, (Ping,))
    assert isinstance(msg, Ping) and msg.stream is True and msg.target == c.id(TARGET)
    return found[0], msg


def _finish(c: Cluster) -> None:
    """Run the prober to the end of this probe's period (and no further)."""
    m = c.nodes[PROBER]
    probe = m._probe
    end = 0.0 if probe is None else probe.end_at
    t = m.get_timer()
    while t is not None and t <= end:
        m.handle_timer(t)
        c.drain(PROBER)
        t = m.get_timer()


def test_target_reachable_only_by_stream_is_not_suspected() -> None:
    c = Cluster(2)  # no relay available: only the fallback can save the target
    m = c.nodes[PROBER]
    score = m.awareness.score
    t, out = _probe_until_timeout(c)
    sent, ping = _fallback(out, c)
    c.deliver(PROBER, [sent], t + 0.01)
    (ack,) = c.drain(TARGET)
    assert ack.reliable and ack.dst == address(PROBER)  # answered on a stream too
    c.deliver(TARGET, [ack], t + 0.02)
    _finish(c)
    assert m.state_of(c.id(TARGET)) is MemberState.ALIVE
    assert m.stats["probes.fallback_acked"] == 1
    assert m.awareness.score == score  # memberlist: no health change either way


def test_target_that_answers_nothing_is_suspected() -> None:
    c = Cluster(2)
    m = c.nodes[PROBER]
    _t, out = _probe_until_timeout(c)
    _fallback(out, c)  # sent, never answered (the target is down)
    _finish(c)
    assert m.state_of(c.id(TARGET)) is MemberState.SUSPECT
    assert "probes.fallback_acked" not in m.stats


def test_fallback_ack_from_another_member_does_not_spare_the_target() -> None:
    c = Cluster(3)
    m = c.nodes[PROBER]
    t, out = _probe_until_timeout(c)
    _sent, ping = _fallback(out, c)
    forged = encode_payload(Ack(seq=ping.seq, sender=c.id(OTHER), gossip=()))
    m.receive(forged, address(OTHER), t + 0.01, src_id=c.id(OTHER))
    _finish(c)
    assert m.state_of(c.id(TARGET)) is MemberState.SUSPECT


def test_stale_fallback_seq_does_not_end_a_later_probe() -> None:
    """An ack carrying a seq we never used for a fallback ends nothing."""
    c = Cluster(2)
    m = c.nodes[PROBER]
    t, out = _probe_until_timeout(c)
    _sent, ping = _fallback(out, c)
    wrong = encode_payload(Ack(seq=(ping.seq + 1) & 0xFFFFFFFF, sender=c.id(TARGET), gossip=()))
    m.receive(wrong, address(TARGET), t + 0.01, src_id=c.id(TARGET))
    _finish(c)
    assert m.state_of(c.id(TARGET)) is MemberState.SUSPECT


def test_fallback_can_be_turned_off() -> None:
    c = Cluster(2, config=dataclasses.replace(LAN, fallback_ping=False))
    _t, out = _probe_until_timeout(c)
    assert [o for o in out if o.reliable] == []
    _finish(c)
    assert c.nodes[PROBER].state_of(c.id(TARGET)) is MemberState.SUSPECT


def test_ordinary_ping_is_answered_by_datagram_stream_ping_by_stream() -> None:
    c = Cluster(2)
    target = c.nodes[TARGET]
    for stream, reliable in ((None, False), (True, True), (False, False)):
        ping = Ping(seq=9, sender=c.id(PROBER), target=c.id(TARGET), gossip=(), stream=stream)
        target.receive(encode_payload(ping), address(PROBER), 1.0, src_id=c.id(PROBER))
        (ack,) = c.drain(TARGET)
        assert ack.reliable is reliable
        assert isinstance(decode_swim(ack.data, 1400, (Ack,)), Ack)


def test_ping_without_stream_keeps_its_old_bytes_and_stream_keeps_gossip_last() -> None:
    sender, target = b"\x01" * 32, b"\x02" * 32
    old = msgpack.packb([PROTOCOL_VERSION, "swim.ping",
                         {"seq": 5, "sender": sender, "target": target, "gossip": []}],
                        use_bin_type=True)
    assert encode_payload(Ping(seq=5, sender=sender, target=target, gossip=())) == old
    streamed = encode_payload(Ping(seq=5, sender=sender, target=target, gossip=(),
                                   stream=True))
    carried = with_gossip(streamed, [b"item"])
    back = decode_payload(carried, expect=(Ping,))
    assert isinstance(back, Ping) and back.stream is True and back.gossip == (b"item",)
    assert back == Ping(seq=5, sender=sender, target=target, gossip=(b"item",), stream=True)
