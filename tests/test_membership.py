"""SWIM/Lifeguard membership: sans-IO behaviour in a tiny virtual-time network."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
from keepmesh.protocol.errors import ProtocolError
from keepmesh.protocol.membership import (
    Alive,
    Capacity,
    Claims,
    Ed25519Signer,
    Ed25519Verifier,
    Gossip,
    Leave,
    Membership,
    MembershipConfig,
    MemberState,
    Ping,
    Suspect,
    Trust,
    decode_record,
    make_record,
    remaining_suspicion_time,
)
from keepmesh.protocol.membership.messages import accusation_signed_bytes
from keepmesh.protocol.wire import encode_payload
from keepmesh.simulations.keyring import SimulationKeyring
from keepmesh.simulations.testnet import TestNet, sim_node_id

LAN = MembershipConfig.profile("lan")


def build(n: int, seed: int = 1, **kw: object) -> TestNet:
    net = TestNet(LAN, seed=seed, **kw)  # type: ignore[arg-type]
    net.add(0)
    for i in range(1, n):
        net.add(i, seeds=["n0"])
    return net


def run_until_converged(net: TestNet, expected: set[bytes], limit: float) -> float:
    t = net.now
    while t < limit:
        t += 0.5
        net.run_until(t)
        if net.converged(expected):
            return t
    raise AssertionError(f"not converged by {limit}s: "
                         f"{sorted(len(n.alive_ids()) for n in net.up())}")


def ids(n: int, skip: set[int] = frozenset()) -> set[bytes]:  # type: ignore[assignment]
    return {sim_node_id(i) for i in range(n) if i not in skip}


# ------------------------------------------------------------------ config


def test_profiles_and_derived_values() -> None:
    lan, wan, local = (MembershipConfig.profile(p) for p in ("lan", "wan", "local"))
    assert (lan.probe_interval, lan.probe_timeout, lan.suspicion_mult) == (1.0, 0.5, 4)
    assert (lan.gossip_interval, lan.gossip_nodes, lan.push_pull_interval) == (0.2, 3, 30.0)
    assert wan.probe_interval == 5.0 and local.probe_timeout == 0.2
    with pytest.raises(ProtocolError):
        MembershipConfig.profile("moon")
    with pytest.raises(ProtocolError):
        MembershipConfig(probe_timeout=2.0, probe_interval=1.0)
    assert lan.retransmit_limit(9) == 4 and lan.retransmit_limit(10) == 8
    assert lan.suspicion_min(1000) == pytest.approx(12.0)
    assert lan.suspicion_min(5) == pytest.approx(4.0)
    assert lan.push_pull_scaled(32) == 30.0 and lan.push_pull_scaled(1000) > 30.0


def test_suspicion_timeout_matches_memberlist() -> None:
    # memberlist suspicion_test.go TestSuspicion_remainingSuspicionTime: k=3, min=2s, max=30s
    expect = [(0, 0.0, 30.0), (1, 2.0, 14.0), (2, 3.0, 4.81), (3, 4.0, -2.0), (4, 5.0, -3.0),
              (5, 10.0, -8.0)]
    for n, elapsed, want in expect:
        got = remaining_suspicion_time(n, 3, elapsed, 2.0, 30.0)
        assert got == pytest.approx(want, abs=0.001)
    assert remaining_suspicion_time(0, 0, 0.0, 2.0, 30.0) == 2.0


# ----------------------------------------------------------------- records


def test_ed25519_records_pass_and_fail() -> None:
    signer = Ed25519Signer(b"\x01" * 32)
    other = Ed25519Signer(b"\x02" * 32)
    verifier = Ed25519Verifier()
    rec = make_record(signer, "10.0.0.1:7000", 4, Claims("snp", "ab" * 48, "7"),
                      Capacity(2048, 2000, 1024, 1000), {"zone": "eu-1"})
    decoded = decode_record(rec.encoded)
    decoded.verify(verifier)
    # wrong key: record claiming signer's id but signed by another key
    forged = dataclasses.replace(rec, signature=other.sign(rec.signed_bytes))
    with pytest.raises(ProtocolError):
        forged.verify(verifier)
    # tampered byte: change the address, keep the signature
    tampered = rec.encoded.replace(b"10.0.0.1", b"10.6.6.6")
    with pytest.raises(ProtocolError):
        decode_record(tampered).verify(verifier)
    # empty signature
    with pytest.raises(ProtocolError):
        dataclasses.replace(rec, signature=b"").verify(verifier)


def test_record_validation_bounds() -> None:
    keyring = SimulationKeyring()
    signer = keyring.signer(b"\x07" * 32)
    with pytest.raises(ProtocolError):
        make_record(signer, "a:1", 0, capacity=Capacity(1, 1, 2, 1))  # free > total
    with pytest.raises(ProtocolError):
        make_record(signer, "a:1", 0, labels={f"k{i}": "v" * 100 for i in range(16)})
    with pytest.raises(ProtocolError):
        make_record(signer, "a:1", 0, claims=Claims("snp", "NOTHEX", "1"))


# -------------------------------------------------------------- convergence


@pytest.mark.parametrize("n", [5, 20, 50])
def test_converges_to_same_alive_set(n: int) -> None:
    net = build(n, seed=n)
    t = run_until_converged(net, ids(n), limit=30.0)
    assert t <= 15.0
    for node in net.up():
        views = {v.node_id: v for v in node.members()}
        assert len(views) == n
        assert all(v.state is MemberState.ALIVE for v in views.values())
        assert views[sim_node_id(1)].labels == {"zone": "z1"}


def test_packets_bounded_by_max_packet() -> None:
    cfg = LAN.replace(max_packet=600)
    net = TestNet(cfg, seed=9)
    seen: list[int] = []
    net.add(0)
    for i in range(1, 40):
        net.add(i, seeds=["n0"])
    for node in net.nodes.values():  # observe sizes by wrapping the drain
        orig = node.datagrams_to_send

        def spy(orig=orig):  # type: ignore[no-untyped-def]
            out = orig()
            seen.extend(len(o.data) for o in out if not o.reliable)
            return out

        node.datagrams_to_send = spy  # type: ignore[method-assign]
    run_until_converged(net, ids(40), limit=40.0)
    assert seen and max(seen) <= 600
    assert sum(n.stats.get("sent.gossip_items", 0) for n in net.up()) > 0


def test_determinism_with_seeded_rng() -> None:
    def trace(seed: int) -> list[tuple[str, str, bytes, float]]:
        net = build(12, seed=seed)
        net.run_until(5.0)
        net.crash("n4")
        net.run_until(30.0)
        return [(a, e.kind, e.node_id, e.at) for a, e in net.stats.events]

    assert trace(5) == trace(5)
    assert trace(5) != trace(6)


# ------------------------------------------------------------ failure detection


def test_crash_suspect_then_dead_within_expected_time() -> None:
    n = 20
    net = build(n, seed=2)
    run_until_converged(net, ids(n), limit=20.0)
    victim = sim_node_id(7)
    net.crash("n7")
    crashed_at = net.now
    first: dict[str, float] = {}

    def watch(addr: str, ev: object) -> None:
        kind = getattr(ev, "kind", "")
        if getattr(ev, "node_id", b"") == victim and kind not in first:
            first[kind] = getattr(ev, "at", 0.0)

    net.on_event = watch
    suspicion_max = LAN.suspicion_max_timeout_mult * LAN.suspicion_min(n)
    net.run_until(crashed_at + suspicion_max + 5 * LAN.probe_interval)
    assert "suspect" in first and "dead" in first
    # someone probes the victim within a few periods (expected ~1.58)
    assert first["suspect"] - crashed_at <= 6 * LAN.probe_interval
    assert first["dead"] >= first["suspect"] + LAN.suspicion_min(n) - 1e-9
    for node in net.up():
        assert node.state_of(victim) is MemberState.DEAD
        assert victim not in node.alive_ids()


def test_restart_comes_back_with_higher_incarnation() -> None:
    n = 10
    net = build(n, seed=3)
    run_until_converged(net, ids(n), limit=20.0)
    victim = sim_node_id(3)
    old_inc = net.nodes["n3"].record.incarnation
    net.crash("n3")
    net.run_until(net.now + 60.0)
    assert all(node.state_of(victim) is MemberState.DEAD for node in net.up())
    fresh = net.restart(3, seeds=["n0"])  # fresh state, incarnation 0 again
    run_until_converged(net, ids(n), limit=net.now + 30.0)
    assert fresh.record.incarnation > old_inc
    assert fresh.stats.get("refutations", 0) >= 1
    for node in net.up():
        view = node.member(victim)
        assert view is not None and view.state is MemberState.ALIVE
        assert view.incarnation == fresh.record.incarnation


def test_false_suspicion_is_refuted() -> None:
    n = 8
    net = build(n, seed=4)
    run_until_converged(net, ids(n), limit=20.0)
    target = net.nodes["n2"]
    inc = target.record.incarnation
    liar = net.keyring.signer(sim_node_id(5))
    # n1 hears (from n5, signed by n5) that n2 is suspect
    unsigned = Suspect(node=target.node_id, incarnation=inc, accuser=liar.node_id, signature=b"")
    item = encode_payload(dataclasses.replace(
        unsigned, signature=liar.sign(accusation_signed_bytes(unsigned))))
    net.inject("n1", encode_payload(Gossip(sender=liar.node_id, gossip=(item,))), "n5")
    net.run_until(net.now + 0.05)
    assert net.nodes["n1"].state_of(target.node_id) is MemberState.SUSPECT
    net.run_until(net.now + 30.0)
    assert target.record.incarnation == inc + 1
    assert target.stats.get("refutations", 0) == 1
    assert target.awareness.score >= 0
    for node in net.up():
        assert node.state_of(target.node_id) is MemberState.ALIVE
    assert not any(e.kind == "dead" for _, e in net.stats.events)


def test_no_false_positives_with_loss_and_slow_members() -> None:
    n = 30
    slow = {f"n{i}" for i in (3, 17)}  # ~5% (rounded up) of members answer slowly
    net = build(n, seed=11, loss=0.10, slow=slow, slow_extra=0.4)
    run_until_converged(net, ids(n), limit=40.0)
    net.run_until(net.now + 90.0)
    dead = [(a, e) for a, e in net.stats.events if e.kind == "dead"]
    assert dead == []
    for node in net.up():  # transient suspicions are allowed, declarations are not
        assert {v.node_id for v in node.members()
                if v.state in (MemberState.ALIVE, MemberState.SUSPECT)} == ids(n)


def test_local_health_awareness_slows_an_unhealthy_prober() -> None:
    n = 6
    net = build(n, seed=12)
    run_until_converged(net, ids(n), limit=20.0)
    sick = net.nodes["n1"]
    # n1 can send but every packet to it is lost: it misses acks and nacks alike
    real = net._after

    def deaf_after(addr: str) -> None:
        real(addr)
        net._heap[:] = [h for h in net._heap if not (h[2] == "msg" and h[3] == "n1")]
        import heapq
        heapq.heapify(net._heap)

    net._after = deaf_after  # type: ignore[method-assign]
    net.run_until(net.now + 6.0)
    assert sick.awareness.score >= 2
    assert sick.awareness.scale(LAN.probe_interval) >= 3 * LAN.probe_interval


# ----------------------------------------------------------------- security


def test_forged_record_rejected_and_sender_penalised() -> None:
    n = 4
    net = build(n, seed=5)
    run_until_converged(net, ids(n), limit=20.0)
    node = net.nodes["n0"]
    victim = net.nodes["n2"]
    attacker = "evil:1"
    # a "newer" record of n2 with a different address, signed by the wrong key
    wrong = net.keyring.signer(sim_node_id(99))
    good = victim.record
    forged = dataclasses.replace(good, incarnation=good.incarnation + 5, address="evil:1",
                                 signature=b"")
    forged = dataclasses.replace(forged, signature=wrong.sign(forged.signed_bytes))
    pkt = encode_payload(Gossip(sender=sim_node_id(50),
                                gossip=(encode_payload(Alive(record=forged.encoded)),)))
    node.receive(pkt, attacker, net.now)
    assert node.stats.get("rejected.signature") == 1
    assert node.penalties(attacker) == 1
    assert node.member(victim.node_id).address == "n2:7946"  # type: ignore[union-attr]
    # a tampered byte in an otherwise valid newer record
    real_next = make_record(net.keyring.signer(victim.node_id), "n2:7946", good.incarnation + 1)
    tampered = real_next.encoded.replace(b"n2", b"n9")
    pkt2 = encode_payload(Gossip(sender=sim_node_id(50),
                                 gossip=(encode_payload(Alive(record=tampered)),)))
    node.receive(pkt2, attacker, net.now)
    assert node.penalties(attacker) == 2
    assert not node.is_banned(attacker)
    node.receive(pkt, attacker, net.now)
    assert node.is_banned(attacker)  # threshold 3
    before = node.stats.get("dropped.banned", 0)
    # even a valid message from the banned sender is now dropped
    ok = encode_payload(Gossip(sender=sim_node_id(50),
                               gossip=(encode_payload(Alive(record=real_next.encoded)),)))
    node.receive(ok, attacker, net.now)
    assert node.stats["dropped.banned"] == before + 1
    assert node.member(victim.node_id).incarnation == good.incarnation  # type: ignore[union-attr]
    # the same valid record from an honest sender is accepted
    node.receive(ok, "n3", net.now)
    assert node.member(victim.node_id).incarnation == good.incarnation + 1  # type: ignore[union-attr]


def test_sender_mismatch_with_authenticated_channel_is_rejected() -> None:
    net = build(3, seed=6)
    run_until_converged(net, ids(3), limit=20.0)
    node = net.nodes["n0"]
    claimed, actual = sim_node_id(1), sim_node_id(2)
    pkt = encode_payload(Ping(seq=1, sender=claimed, target=node.node_id, gossip=()))
    node.datagrams_to_send()
    for _ in range(LAN.penalty_threshold):
        node.receive(pkt, "n2", net.now, src_id=actual)
    assert node.stats["rejected.sender"] == LAN.penalty_threshold
    assert node.datagrams_to_send() == []  # no ack for a spoofed ping
    assert node.member(actual).state is MemberState.UNTRUSTED  # type: ignore[union-attr]
    assert any(e.kind == "untrusted" and e.node_id == actual
               for e in iter(node.next_event, None))
    # the matching identity is accepted
    node.receive(pkt, "n1", net.now, src_id=claimed)
    assert len(node.datagrams_to_send()) == 1


def test_replayed_old_record_does_not_resurrect_dead_member() -> None:
    n = 6
    net = build(n, seed=7)
    run_until_converged(net, ids(n), limit=20.0)
    old = net.nodes["n4"].record
    net.crash("n4")
    net.run_until(net.now + 60.0)
    node = net.nodes["n0"]
    assert node.state_of(old.node_id) is MemberState.DEAD
    replay = encode_payload(Gossip(sender=sim_node_id(1),
                                   gossip=(encode_payload(Alive(record=old.encoded)),)))
    node.receive(replay, "n1", net.now)
    assert node.state_of(old.node_id) is MemberState.DEAD


def test_forged_leave_rejected_and_real_leave_spreads() -> None:
    n = 8
    net = build(n, seed=8)
    run_until_converged(net, ids(n), limit=20.0)
    node = net.nodes["n0"]
    target = net.nodes["n6"]
    bad = Leave(node=target.node_id, incarnation=target.record.incarnation,
                signature=b"\x00" * 32)
    node.receive(encode_payload(Gossip(sender=sim_node_id(1),
                                       gossip=(encode_payload(bad),))), "n1", net.now)
    assert node.state_of(target.node_id) is MemberState.ALIVE
    assert node.stats.get("rejected.signature") == 1
    target.leave(net.now)
    net.kick("n6")
    net.run_until(net.now + 10.0)
    for other in net.up():
        if other is not target:
            assert other.state_of(target.node_id) is MemberState.LEFT
            assert target.node_id not in other.alive_ids()
    assert target.member(target.node_id).state is MemberState.LEFT  # type: ignore[union-attr]
    assert not any(e.kind == "dead" and e.node_id == target.node_id
                   for _, e in net.stats.events)


def test_untrusted_evidence_never_alive() -> None:
    n = 8
    bad = sim_node_id(5)
    net = build(n, seed=9, policy=lambda ev: ev.node_id != bad)
    net.run_until(30.0)
    # the untrusted node is shunned (its messages dropped); everyone else agrees
    assert all(node.alive_ids() == ids(n, skip={5})
               for addr, node in net.nodes.items() if addr != "n5")
    for addr, node in net.nodes.items():
        if addr == "n5":
            continue
        assert bad not in node.alive_ids()
        view = node.member(bad)
        assert view is not None and view.state is MemberState.UNTRUSTED
        assert view.trust is Trust.FAILED
    kinds = {e.kind for _, e in net.stats.events if e.node_id == bad}
    assert "attest" in kinds and "untrusted" in kinds and "join" not in kinds


def test_pending_member_not_alive_until_attested_and_trust_expires() -> None:
    keyring = SimulationKeyring(b"t")
    sa, sb = keyring.signer(b"\x0a" * 32), keyring.signer(b"\x0b" * 32)
    ver = keyring.verifier()
    a = Membership(LAN, make_record(sa, "a:1", 0), sa, ver, random.Random(1), 0.0)
    b = Membership(LAN, make_record(sb, "b:1", 0), sb, ver, random.Random(2), 0.0)
    b.join(["a:1"], 0.0)
    for out in b.datagrams_to_send():
        a.receive(out.data, "b", 0.1)
    ev = a.next_event()
    assert ev is not None and ev.kind == "attest" and ev.node_id == sb.node_id
    assert a.alive_ids() == {sa.node_id}
    assert a.member(sb.node_id).state is MemberState.UNTRUSTED  # type: ignore[union-attr]
    a.set_trust(sb.node_id, True, 0.2, until=10.0)
    assert a.next_event().kind == "join"  # type: ignore[union-attr]
    assert a.alive_ids() == {sa.node_id, sb.node_id}
    a.handle_timer(10.0)
    kinds = [e.kind for e in iter(a.next_event, None)]
    assert "untrusted" in kinds and "attest" in kinds
    assert a.alive_ids() == {sa.node_id}
    a.set_trust(sb.node_id, True, 10.5)
    assert a.alive_ids() == {sa.node_id, sb.node_id}


def test_changed_claims_require_new_attestation() -> None:
    net = build(4, seed=10)
    run_until_converged(net, ids(4), limit=20.0)
    net.policy = lambda ev: False  # new evidence will fail
    net.nodes["n2"].update_local(net.now, claims=Claims("sim", "cd" * 8, "2"))
    net.kick("n2")
    net.run_until(net.now + 10.0)
    for addr, node in net.nodes.items():
        if addr != "n2":
            assert sim_node_id(2) not in node.alive_ids()
            assert node.member(sim_node_id(2)).state is MemberState.UNTRUSTED  # type: ignore[union-attr]


def test_update_local_spreads_new_capacity() -> None:
    net = build(6, seed=13)
    run_until_converged(net, ids(6), limit=20.0)
    net.nodes["n3"].update_local(net.now, capacity=Capacity(1024, 1000, 10, 20))
    net.kick("n3")
    net.run_until(net.now + 5.0)
    for node in net.up():
        view = node.member(sim_node_id(3))
        assert view is not None and view.capacity.free_memory_mb == 10
        assert view.state is MemberState.ALIVE


def test_require_attestation_false_joins_directly() -> None:
    net = build(5, seed=14, require_attestation=False)
    run_until_converged(net, ids(5), limit=20.0)
    assert not any(e.kind == "attest" for _, e in net.stats.events)
    assert math.isfinite(net.nodes["n0"].get_timer() or 0.0)


def test_broadcast_queue_limits_and_invalidation() -> None:
    from keepmesh.protocol.membership import BroadcastQueue

    q = BroadcastQueue(max_items=3)
    q.queue(b"a", b"A1")
    q.queue(b"a", b"A2")  # replaces A1
    q.queue(b"b", b"B" * 50)
    assert len(q) == 2
    first = q.take(budget=1000, overhead=3, limit=2)
    assert set(first) == {b"A2", b"B" * 50}
    assert q.take(budget=10, overhead=3, limit=2) == [b"A2"]  # only what fits
    assert q.take(budget=1000, overhead=3, limit=2) == [b"B" * 50]
    assert len(q) == 0  # both reached the retransmit limit
    for key in (b"x", b"y", b"z", b"w"):
        q.queue(key, key)
    assert len(q) == 3  # bounded


def test_awareness_bounds() -> None:
    from keepmesh.protocol.membership import Awareness

    a = Awareness(8)
    a.apply_delta(-5)
    assert a.score == 0 and a.scale(1.0) == 1.0
    a.apply_delta(100)
    assert a.score == 7 and a.scale(0.5) == 4.0


def test_ack_to_a_stale_accuser_carries_the_current_record() -> None:
    from keepmesh.protocol.membership import Ack, decode_swim

    keyring = SimulationKeyring(b"s")
    sb, sa = keyring.signer(b"\x0b" * 32), keyring.signer(b"\x0a" * 32)
    b = Membership(LAN, make_record(sb, "b:1", 5), sb, keyring.verifier(), random.Random(1), 0.0,
                   require_attestation=False)
    plain = encode_payload(Ping(seq=9, sender=sa.node_id, target=sb.node_id, gossip=()))
    b.receive(plain, "a", 1.0)
    (ack,) = b.datagrams_to_send()
    decoded = decode_swim(ack.data, 1400, (Ack,))
    assert isinstance(decoded, Ack) and decoded.gossip == ()
    unsigned = Suspect(node=sb.node_id, incarnation=3, accuser=sa.node_id, signature=b"")
    stale = encode_payload(dataclasses.replace(
        unsigned, signature=sa.sign(accusation_signed_bytes(unsigned))))
    b.receive(encode_payload(Ping(seq=10, sender=sa.node_id, target=sb.node_id,
                                  gossip=(stale,))), "a", 2.0)
    (ack,) = b.datagrams_to_send()
    decoded = decode_swim(ack.data, 1400, (Ack,))
    assert isinstance(decoded, Ack) and decoded.seq == 10
    carried = decode_swim(decoded.gossip[0], 2000, (Alive,))
    assert isinstance(carried, Alive) and decode_record(carried.record).incarnation == 5
    assert b.record.incarnation == 5  # stale accusation: no refutation needed
