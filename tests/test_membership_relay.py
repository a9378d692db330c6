"""swim.ping_req relay dialling rule (specs/membership.md §6 "Relay"): only a member we
hold, at the address we hold, at most one datagram toward a target per probe."""

from __future__ import annotations

import pytest
from keepmesh.protocol.membership import Ack, Nack, Ping, PingReq, decode_swim
from keepmesh.protocol.wire import encode_payload

from tests.membership_cluster import Cluster, address

RELAY, TARGET = 0, 2


def ping_req(c: Cluster, requester: int, target_id: bytes, target_addr: str,
             seq: int = 7) -> bytes:
    return encode_payload(PingReq(seq=seq, sender=c.id(requester), target=target_id,
                                  target_addr=target_addr, nack=True, gossip=()))


def pings_toward(c: Cluster, out: list, addr: str) -> int:  # type: ignore[type-arg]
    return sum(1 for o in out if o.dst == addr
               and isinstance(decode_swim(o.data, 1400, (Ping, Ack, Nack, PingReq)), Ping))


def test_member_at_its_address_is_probed_once_and_ack_forwarded() -> None:
    c = Cluster(4)
    relay = c.nodes[RELAY]
    relay.receive(ping_req(c, 1, c.id(TARGET), address(TARGET)), address(1), 1.0, src_id=c.id(1))
    out = relay.datagrams_to_send()
    assert pings_toward(c, out, address(TARGET)) == 1 and len(out) == 1
    ping = decode_swim(out[0].data, 1400, (Ping,))
    assert isinstance(ping, Ping) and ping.target == c.id(TARGET)
    ack = encode_payload(Ack(seq=ping.seq, sender=c.id(TARGET), gossip=()))
    relay.receive(ack, address(TARGET), 1.1, src_id=c.id(TARGET))
    (fwd,) = relay.datagrams_to_send()
    back = decode_swim(fwd.data, 1400, (Ack,))
    assert fwd.dst == address(1) and isinstance(back, Ack) and back.seq == 7


def test_ack_from_someone_else_does_not_answer_the_relay() -> None:
    c = Cluster(4)
    relay = c.nodes[RELAY]
    relay.receive(ping_req(c, 1, c.id(TARGET), address(TARGET)), address(1), 1.0, src_id=c.id(1))
    ping = decode_swim(relay.datagrams_to_send()[0].data, 1400, (Ping,))
    assert isinstance(ping, Ping)
    forged = encode_payload(Ack(seq=ping.seq, sender=c.id(3), gossip=()))
    relay.receive(forged, address(3), 1.1, src_id=c.id(3))
    assert relay.datagrams_to_send() == []


@pytest.mark.parametrize("case", ["non-member", "other address", "spelled differently"])
def test_target_not_held_as_named_is_dropped_and_counted(case: str) -> None:
    c = Cluster(4)
    relay = c.nodes[RELAY]
    target_id, addr = c.id(TARGET), address(TARGET)
    if case == "non-member":
        target_id = b"\x99" * 32
    elif case == "other address":
        addr = "192.0.2.1:7946"
    else:
        addr = "10.0.0.003:7946"  # not canonical: refused at decode
    relay.receive(ping_req(c, 1, target_id, addr), address(1), 1.0, src_id=c.id(1))
    assert relay.datagrams_to_send() == []
    if case == "spelled differently":
        assert relay.stats["malformed"] == 1
    else:
        assert relay.penalties(c.id(1)) == 1


def test_ping_req_flood_causes_at_most_one_datagram_per_probe() -> None:
    """31 requests (several requesters, repeats, odd spellings) for one target inside
    one probe window: one ping toward it; every distinct request answered."""
    c = Cluster(6)
    relay = c.nodes[RELAY]
    spellings = [address(TARGET), "10.0.0.3:07946", "010.0.0.3:7946", "10.0.0.3.:7946",
                 "0x0a000003:7946", "[::ffff:10.0.0.3]:7946", "LOCALHOST:7946"]
    sent = 0
    for i in range(31):
        requester = 1 + i % 4
        if requester == TARGET:
            requester = 5
        relay.receive(ping_req(c, requester, c.id(TARGET), spellings[i % len(spellings)],
                               seq=100 + i), address(requester), 1.0 + i * 0.01,
                      src_id=c.id(requester))
        sent += pings_toward(c, relay.datagrams_to_send(), address(TARGET))
    assert sent == 1
    assert relay.stats["relay.coalesced"] >= 1
    # after the window, a new request may probe again (once)
    relay.handle_timer(1.0 + c.config.probe_timeout + 0.5)
    relay.datagrams_to_send()
    relay.receive(ping_req(c, 1, c.id(TARGET), address(TARGET), seq=999), address(1), 2.0,
                  src_id=c.id(1))
    assert pings_toward(c, relay.datagrams_to_send(), address(TARGET)) == 1


def test_coalesced_requesters_all_get_the_ack_and_nacks() -> None:
    c = Cluster(5)
    relay = c.nodes[RELAY]
    for r in (1, 3):
        relay.receive(ping_req(c, r, c.id(TARGET), address(TARGET), seq=10 + r), address(r),
                      1.0, src_id=c.id(r))
    out = relay.datagrams_to_send()
    assert pings_toward(c, out, address(TARGET)) == 1
    relay.handle_timer(1.0 + 0.8 * c.config.probe_timeout)
    msgs = [(o.dst, decode_swim(o.data, 1400, (Nack, Ack, Ping, PingReq)))
            for o in relay.datagrams_to_send()]
    nacks = {(dst, m.seq) for dst, m in msgs if isinstance(m, Nack)}
    assert nacks == {(address(1), 11), (address(3), 13)}


def test_requester_arriving_after_the_nack_time_gets_its_own_probe_and_nack() -> None:
    """A relay joined after its nack went out would leave the newcomer without a nack
    (counted as missed: Lifeguard would slow a healthy prober)."""
    c = Cluster(5)
    relay = c.nodes[RELAY]
    t_nack = 1.0 + 0.8 * c.config.probe_timeout
    relay.receive(ping_req(c, 1, c.id(TARGET), address(TARGET), seq=11), address(1), 1.0,
                  src_id=c.id(1))
    relay.datagrams_to_send()
    relay.handle_timer(t_nack)
    relay.datagrams_to_send()
    relay.receive(ping_req(c, 3, c.id(TARGET), address(TARGET), seq=13), address(3),
                  t_nack + 0.01, src_id=c.id(3))
    assert pings_toward(c, relay.datagrams_to_send(), address(TARGET)) == 1
    relay.handle_timer(t_nack + 0.01 + 0.8 * c.config.probe_timeout)
    msgs = [(o.dst, decode_swim(o.data, 1400, (Nack, Ack, Ping, PingReq)))
            for o in relay.datagrams_to_send()]
    assert (address(3), 13) in {(dst, m.seq) for dst, m in msgs if isinstance(m, Nack)}


def test_join_dials_each_seed_once_by_canonical_form_and_skips_invalid_ones() -> None:
    c = Cluster(2)
    m = c.nodes[0]
    m.datagrams_to_send()
    m.join(["10.0.0.2:7946", "10.0.0.2:7946", "a" * 64 + ".x:1", "host:0", "LOCALHOST:9"],
           5.0)
    dsts = [o.dst for o in m.datagrams_to_send()]
    assert sorted(dsts) == ["10.0.0.2:7946", "localhost:9"]
    assert m.stats["seeds.invalid"] == 2
