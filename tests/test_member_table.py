"""Member tables (protocol/membership/table.py): a shared base view with per-member
copy-on-write, the incremental push-pull digest, swim.sync, and the probe order."""

from __future__ import annotations

import dataclasses
import heapq
import random

from keepmesh.protocol.membership import (
    Ed25519Signer,
    Ed25519Verifier,
    MemberBase,
    Membership,
    MemberState,
    PushPull,
    PushPullEntry,
    Trust,
    make_record,
)
from keepmesh.protocol.membership.messages import Sync, decode_swim
from keepmesh.protocol.membership.table import (
    DIGEST_BUCKETS,
    ProbeOrder,
    bucket_of,
    entry_hash,
    pack_digest,
)
from keepmesh.protocol.wire import encode_payload

from tests.membership_cluster import LAN, Cluster, address


def base_cluster(n: int, seed: int = 1) -> tuple[list[Membership], MemberBase]:
    """n members whose tables all adopt one MemberBase (the simulator's warm start)."""
    signers = [Ed25519Signer(bytes([i + 1]) * 32) for i in range(n)]
    verifier = Ed25519Verifier()
    nodes = [Membership(LAN, make_record(s, address(i), 1), s, verifier,
                        random.Random(seed * 1000 + i), 0.0) for i, s in enumerate(signers)]
    base = MemberBase.build([m.record for m in nodes], verifier, 0.0)
    for m in nodes:
        assert m.learn(base, 0.0, trusted=True) == n - 1
    return nodes, base


def scratch_digest(m: Membership) -> bytes:
    """The digest recomputed from nothing: the entries a full push-pull from m carries."""
    m._send_push_pull("203.0.113.9:1", join=False, reply=True)
    sums = [0] * DIGEST_BUCKETS
    for out in m.datagrams_to_send():
        msg = decode_swim(out.data, LAN.max_stream_message, (PushPull,))
        assert isinstance(msg, PushPull)
        for e in msg.entries():
            rec = decode_swim(e.record, 1024, None)  # type: ignore[arg-type]
            k = bucket_of(rec.node_id)  # type: ignore[attr-defined]
            sums[k] = (sums[k] + entry_hash(e.record, e.state)) % (1 << 64)
    return pack_digest(sums)


def test_base_is_shared_and_copy_on_write() -> None:
    nodes, base = base_cluster(6)
    a, b = nodes[0], nodes[1]
    assert a.num_known() == 6 and a.node_id not in a._members and len(a._members) == 5
    assert a._members.overlay_size() == 1          # only its own tombstone
    target = nodes[2].node_id
    assert a._members[target] is b._members[target]  # one shared entry
    a._suspect(target, nodes[2].record.incarnation, a.node_id, 1.0, None)
    assert a.state_of(target) is MemberState.SUSPECT
    assert b.state_of(target) is MemberState.ALIVE   # b's view and the base unchanged
    assert base.members[base.index[target]].state is MemberState.ALIVE
    assert a._members.overlay_size() == 2
    a.set_trust(nodes[3].node_id, False, 1.0)
    assert a.member(nodes[3].node_id).trust is Trust.FAILED  # type: ignore[union-attr]
    assert b.member(nodes[3].node_id).trust is Trust.TRUSTED  # type: ignore[union-attr]


def test_base_build_verifies_each_record() -> None:
    good = Ed25519Signer(b"\x01" * 32)
    bad = Ed25519Signer(b"\x02" * 32)
    forged = dataclasses.replace(make_record(bad, address(1), 1), incarnation=2)
    base = MemberBase.build([make_record(good, address(0), 1), forged], Ed25519Verifier(), 0.0)
    assert list(base.ids) == [good.node_id]


def test_learn_base_falls_back_when_it_cannot_adopt() -> None:
    nodes, base = base_cluster(4)
    s = Ed25519Signer(b"\x09" * 32)
    m = Membership(LAN, make_record(s, address(9), 1), s, Ed25519Verifier(), random.Random(9),
                   0.0)
    # attestation required and not trusted: every member is learned pending, with "attest"
    assert m.learn(base, 0.0, trusted=False) == 4
    kinds = [e.kind for e in iter(m.next_event, None)]
    assert kinds == ["attest"] * 4 and m._members.base is None
    # a table that is not empty learns the base record by record
    assert nodes[0].learn(base, 0.0, trusted=True) == 0


def test_digest_is_incremental_and_equals_a_recomputation() -> None:
    nodes, _ = base_cluster(8)
    c = Cluster(8)  # the same identities, learned record by record (no base)
    for i in (0, 5):
        assert nodes[i].digest() == scratch_digest(nodes[i])
    # identical knowledge, different table layouts: identical digests
    assert nodes[0].digest() == c.nodes[0].digest()
    # churn: suspicion, a newer record, trust failure, leave, forget
    m = nodes[0]
    m._suspect(nodes[1].node_id, 1, m.node_id, 1.0, None)
    assert m.digest() == scratch_digest(m)
    nodes[2].update_local(1.0, labels={"x": "1"})
    nodes[2].datagrams_to_send()
    m._alive(nodes[2].record, 2.0, "x")
    m.set_trust(nodes[3].node_id, False, 2.0)
    nodes[4].leave(2.0)
    m.receive(encode_payload(PushPull.build(
        nodes[4].node_id, False, True, False,
        [PushPullEntry(nodes[4].record.encoded, "left", 1, nodes[4]._leave_sig)])),
        address(4), 2.0, src_id=nodes[4].node_id)
    assert m.state_of(nodes[4].node_id) is MemberState.LEFT
    assert m.digest() == scratch_digest(m)
    m._forget(nodes[4].node_id, m._members[nodes[4].node_id])
    m.leave(3.0)
    assert m.digest() == scratch_digest(m)


def test_sync_in_sync_sends_nothing() -> None:
    nodes, _ = base_cluster(5)
    a, b = nodes[0], nodes[1]
    b.receive(encode_payload(Sync(sender=a.node_id, digest=a.digest())), address(0), 1.0,
              src_id=a.node_id)
    assert b.datagrams_to_send() == [] and b.stats["sync.in_sync"] == 1


def test_sync_exchanges_only_differing_buckets_and_converges() -> None:
    n = 40
    nodes, _ = base_cluster(n)
    a, b = nodes[0], nodes[1]
    # b has a newer record of member 7 that a lacks
    nodes[7].update_local(1.0, labels={"v": "2"})
    nodes[7].datagrams_to_send()
    b._alive(nodes[7].record, 1.0, "x")
    b.datagrams_to_send()
    b.receive(encode_payload(Sync(sender=a.node_id, digest=a.digest())), address(0), 2.0,
              src_id=a.node_id)
    out = b.datagrams_to_send()
    assert len(out) == 1 and out[0].reliable and out[0].dst == address(0)
    msg = decode_swim(out[0].data, LAN.max_stream_message, (PushPull,))
    assert isinstance(msg, PushPull) and msg.buckets == 1 << bucket_of(nodes[7].node_id)
    assert 0 < len(msg.records) < n // 4       # one bucket, not the whole table
    a.receive(out[0].data, address(1), 2.0, src_id=b.node_id)
    assert a.member(nodes[7].node_id).incarnation == 2  # type: ignore[union-attr]
    reply = a.datagrams_to_send()
    replies = [o for o in reply if o.reliable]
    assert len(replies) == 1
    r = decode_swim(replies[0].data, LAN.max_stream_message, (PushPull,))
    assert isinstance(r, PushPull) and r.reply and r.buckets == msg.buckets
    b.receive(replies[0].data, address(0), 2.0, src_id=a.node_id)
    assert a.digest() == b.digest()


def test_hostile_sync_and_partial_push_pull_are_refused() -> None:
    nodes, _ = base_cluster(4)
    a, b = nodes[0], nodes[1]
    bad = encode_payload(Sync(sender=a.node_id, digest=a.digest()))[:-1] + b"\x00\x00"
    b.receive(bad, address(0), 1.0, src_id=a.node_id)
    assert b.stats["malformed"] == 1 and b.datagrams_to_send() == []
    entries = [PushPullEntry(nodes[2].record.encoded, "dead", 1, None)]
    zero = PushPull.build(a.node_id, False, True, False, entries, buckets=1)
    b.receive(encode_payload(dataclasses.replace(zero, buckets=0)), address(0), 1.0,
              src_id=a.node_id)
    assert b.stats["malformed"] == 2
    # an entry outside the buckets the message covers is ignored, not applied
    other = ((1 << 64) - 1) ^ (1 << bucket_of(nodes[2].node_id))
    b.receive(encode_payload(PushPull.build(a.node_id, False, True, False, entries, other)),
              address(0), 1.0, src_id=a.node_id)
    assert b.stats["rejected.bucket"] == 1
    assert b.state_of(nodes[2].node_id) is MemberState.ALIVE
    # the same entry inside its bucket is applied (a's own accusation: a suspicion)
    b.receive(encode_payload(PushPull.build(a.node_id, False, True, False, entries,
                                            1 << bucket_of(nodes[2].node_id))),
              address(0), 1.0, src_id=a.node_id)
    assert b.state_of(nodes[2].node_id) is MemberState.SUSPECT


def test_periodic_anti_entropy_uses_sync() -> None:
    c = Cluster(3)
    c.run(LAN.push_pull_interval * 2 + 1)
    sent = sum(m.stats.get("sent.swim.sync", 0) for m in c.nodes)
    assert sent >= 3
    assert sum(m.stats.get("sync.in_sync", 0) for m in c.nodes) == sent  # nothing differed


def test_probe_order_visits_each_candidate_once_per_round() -> None:
    rng = random.Random(3)
    order = ProbeOrder()
    ids = [bytes([i]) * 32 for i in range(7)]
    order.set_base(ids, rng)
    for _ in range(5):
        seen = []
        while (nid := order.next()) is not None:
            seen.append(nid)
        assert sorted(seen) == sorted(ids)
        order.new_round(rng, lambda _nid: True)
    # a member added mid-round is probed in that round, and is a candidate afterwards
    order.next()
    order.insert(b"\xee" * 32, rng)
    rest = []
    while (nid := order.next()) is not None:
        rest.append(nid)
    assert b"\xee" * 32 in rest and len(rest) == 7
    order.new_round(rng, lambda nid: nid != ids[0])  # base entries are never pruned
    assert len(order) == 8


def test_probe_order_rounds_are_uniform_permutations_drawn_lazily() -> None:
    """Each of the 4! orders of 4 candidates comes up about equally often (a lazy
    Fisher-Yates is still uniform), and a round remembers at most one swapped position
    per step taken (no O(M) array per member per round)."""
    rng = random.Random(11)
    order = ProbeOrder()
    ids = [bytes([i]) * 32 for i in range(4)]
    order.set_base(ids, rng)
    counts: dict[tuple[bytes, ...], int] = {}
    rounds = 4800
    for _ in range(rounds):
        seen = []
        while (nid := order.next()) is not None:
            seen.append(nid)
            assert len(order._moved) <= len(seen)
        counts[tuple(seen)] = counts.get(tuple(seen), 0) + 1
        order.new_round(rng, lambda _nid: True)
    assert len(counts) == 24
    expected = rounds / 24
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 60.0  # 23 degrees of freedom: p < 1e-5 for a fair draw to exceed this
    big = ProbeOrder()
    big.set_base([i.to_bytes(32, "big") for i in range(10_000)], rng)
    for _ in range(50):
        big.next()
    assert len(big._moved) <= 50


def test_small_cluster_probes_everyone() -> None:
    c = Cluster(3)
    c.run(10.0)
    assert all(m.stats.get("probes", 0) >= 8 for m in c.nodes)
    assert all(m.num_alive() == 3 for m in c.nodes)


def test_reconnect_reaches_members_declared_dead() -> None:
    c = Cluster(4)
    c.run(60.0, down={3})
    assert c.nodes[0].state_of(c.id(3)) is MemberState.DEAD
    assert list(c.nodes[0]._dead_ids) == [c.id(3)]
    c.run(60.0 + 8 * LAN.push_pull_interval, down={3}, start=60.0)
    # each of the 3 tries with probability 1/3 per interval (Serf): about once in all
    assert sum(m.stats.get("reconnect", 0) for m in c.nodes[:3]) >= 1
    c.nodes[0].datagrams_to_send()
    (target,) = c.nodes[0]._reconnect_candidates()
    c.nodes[0]._reconnect_to(target)  # only the buckets holding the target and us travel
    (out,) = c.nodes[0].datagrams_to_send()
    msg = decode_swim(out.data, LAN.max_stream_message, (PushPull,))
    assert isinstance(msg, PushPull) and out.dst == address(3) and not msg.reply
    assert msg.buckets == 1 << bucket_of(c.id(0)) | 1 << bucket_of(c.id(3))
    assert msg.states[msg.records.index(c.record(3).encoded)] == 2  # "dead": it will refute
    # the member comes back: it is no longer a reconnect candidate
    c.nodes[0]._alive(make_record(c.signers[3], address(3), 5), 200.0, "x")
    assert c.nodes[0]._reconnect_candidates() == []
    assert not c.nodes[0]._dead_ids


def test_reconnect_rate_follows_serf() -> None:
    """Serf tries with probability dead / alive per member and interval: the mesh
    tries each dead member about once per interval, and after a partition (as many
    dead as alive here) every member tries every time."""
    c = Cluster(3)
    m = c.nodes[0]
    dead = c.nodes[0]._members.get(c.id(2))
    assert dead is not None
    m._n_live = 19  # as if 19 others were alive and one dead: p = 1/20
    m._dead_ids[c.id(2)] = None
    dead.state = MemberState.DEAD
    for _ in range(2000):
        m._reconnect(100.0)
    assert 60 <= m.stats.get("reconnect", 0) <= 140  # 100 expected
    m.stats.clear()
    m._n_live = 0  # only we are alive: always
    for _ in range(20):
        m._reconnect(100.0)
    assert m.stats.get("reconnect", 0) == 20
    m.stats.clear()
    dead.state = MemberState.ALIVE  # nobody dead: nothing, and no random draw
    state = m.rng.getstate()
    m._reconnect(100.0)
    assert not m.stats.get("reconnect") and m.rng.getstate() == state


def test_cancelled_one_shot_timers_are_not_deadlines() -> None:
    c = Cluster(3)
    m = c.nodes[0]
    m._next_probe = m._next_gossip = 1e9
    m._next_push_pull = None
    m._heap.clear()
    m._push_timer(5.0, "relay", 424242)            # relay already answered (not held)
    m._push_timer(6.0, "suspect", c.id(1))         # member is not suspected
    m._push_timer(7.0, "trust", c.id(2))           # other kinds are kept as they are
    assert m.get_timer() == 7.0 and len(m._heap) == 1
    m._suspect(c.id(1), 1, m.node_id, 8.0, None)
    deadline = m._members[c.id(1)].suspicion.deadline  # type: ignore[union-attr]
    m._push_timer(deadline - 1.0, "suspect", c.id(1))  # stale: the suspicion ends later
    assert m.get_timer() == 7.0
    m._heap = [e for e in m._heap if e[2] != "trust"]
    heapq.heapify(m._heap)
    assert m.get_timer() == deadline


def test_pending_digest_changes_stay_bounded() -> None:
    from keepmesh.protocol.membership import table

    nodes, _ = base_cluster(3)
    m = nodes[0]
    before = m.digest()
    others = [Ed25519Signer(bytes([0x40 + i]) * 32) for i in range(12)]
    old, table._MAX_DIRTY = table._MAX_DIRTY, 4
    try:
        for i, s in enumerate(others):  # churn without any digest being asked for
            m._alive(make_record(s, f"10.1.0.{i + 1}:7946", 1), 1.0, "x")
            assert len(m._members._dirty) <= 4
        for s in others:
            m._forget(s.node_id, m._members[s.node_id])
    finally:
        table._MAX_DIRTY = old
    assert m.digest() == before == scratch_digest(m)


def test_sync_claiming_another_sender_is_refused_and_penalised() -> None:
    nodes, _ = base_cluster(4)
    a, b, c = nodes[0], nodes[1], nodes[2]
    # a speaks for c on its own authenticated channel: refused, a penalised, no answer
    b.receive(encode_payload(Sync(sender=c.node_id, digest=bytes(512))), address(0), 1.0,
              src_id=a.node_id)
    assert b.stats["rejected.sender"] == 1 and b.penalties(a.node_id) == 1
    assert b.datagrams_to_send() == []
    # the same digest from c itself is answered (every bucket differs from zeros)
    b.receive(encode_payload(Sync(sender=c.node_id, digest=bytes(512))), address(2), 1.0,
              src_id=c.node_id)
    (out,) = b.datagrams_to_send()
    assert out.dst == address(2) and out.reliable


def test_member_copy_keeps_every_field() -> None:
    """_Member.copy lists its fields by hand (the compiled build has no __slots__ on the
    class): a field added to __slots__ and not to copy() fails here."""
    from keepmesh.protocol.membership.suspicion import Suspicion
    from keepmesh.protocol.membership.table import _Member

    nodes, _base = base_cluster(2)
    m = _Member(nodes[1].record, Trust.EXPIRED, 3.0)
    values = {"state": MemberState.SUSPECT, "trust_until": 9.5,
              "suspicion": Suspicion(b"\x07" * 32, 2, 1.0, 6.0, 3.0), "leave_sig": b"sig",
              "joined": True, "in_probe": True, "penalised": True}
    assert set(values) | {"record", "trust", "since"} == set(_Member.__slots__)
    for name, value in values.items():
        setattr(m, name, value)
    c = m.copy()
    assert c is not m
    for name in _Member.__slots__:
        assert getattr(c, name) is getattr(m, name), name
