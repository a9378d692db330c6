"""Hostile input to membership: nothing is kept before it is verified, every table keyed
by peer input is bounded, offenders are banned and bans expire (specs/membership.md §5)."""

from __future__ import annotations

import dataclasses
import tracemalloc

from keepmesh.protocol.membership import (
    Alive,
    CachingVerifier,
    Ed25519Signer,
    Ed25519Verifier,
    Gossip,
    MemberState,
    NodeRecord,
    PushPull,
    PushPullEntry,
    Trust,
    make_record,
)
from keepmesh.protocol.membership.records import decode_record, interned_records
from keepmesh.protocol.wire import encode_payload

from tests.membership_cluster import LAN, Cluster, address


def unsigned_records(n: int, salt: int = 0) -> list[bytes]:
    base = make_record(Ed25519Signer(b"\x05" * 32), "10.9.0.1:7946", 1)
    out = []
    for i in range(n):
        nid = (salt * 1_000_000 + i).to_bytes(32, "big")
        out.append(dataclasses.replace(base, node_id=nid, signature=b"\x00" * 64).encoded)
    return out


def push_pull(sender: bytes, records: list[bytes]) -> bytes:
    entries = [PushPullEntry(r, "alive", 1, None) for r in records]
    return encode_payload(PushPull.build(sender, False, True, False, entries))


def test_unsigned_records_are_not_interned_and_the_sender_is_banned() -> None:
    c = Cluster(3)
    m = c.nodes[0]
    interned = interned_records()
    m.receive(push_pull(c.id(1), unsigned_records(500)), address(1), 1.0, src_id=c.id(1))
    assert interned_records() == interned
    assert m.num_known() == 3
    assert m.is_banned(c.id(1))
    banned = [e for e in iter(m.next_event, None) if e.kind == "banned"]
    assert len(banned) == 1 and banned[0].node_id == c.id(1) and "forged" in banned[0].reason
    assert m.member(c.id(1)).trust is Trust.FAILED  # type: ignore[union-attr]
    assert m.stats["rejected.signature"] == LAN.penalty_threshold  # stopped once banned
    # while banned, even valid messages are dropped
    ok = encode_payload(Gossip(sender=c.id(1), gossip=()))
    m.receive(ok, address(1), 2.0, src_id=c.id(1))
    assert m.stats["dropped.banned"] >= 2
    # the ban expires; the member must be attested again before it counts
    until = m.banned_until(c.id(1))
    assert until is not None and until == 1.0 + LAN.ban_s
    m.handle_timer(until)
    assert not m.is_banned(c.id(1), until)
    kinds = [(e.kind, e.node_id) for e in iter(m.next_event, None)]
    assert ("attest", c.id(1)) in kinds
    m.set_trust(c.id(1), True, until + 1)
    before = m.stats.get("dropped.banned", 0)
    m.receive(ok, address(1), until + 2, src_id=c.id(1))
    assert m.stats.get("dropped.banned", 0) == before


def test_a_valid_record_from_an_honest_sender_is_interned() -> None:
    c = Cluster(3)
    m = c.nodes[0]
    newer = make_record(c.signers[2], address(2), 5)
    m.receive(encode_payload(Gossip(sender=c.id(1), gossip=(
        encode_payload(Alive(record=newer.encoded)),))), address(1), 1.0, src_id=c.id(1))
    held = m.member(c.id(2))
    assert held is not None and held.incarnation == 5
    # verified, so interned: decoding the same bytes again gives the shared object
    assert decode_record(newer.encoded) is held.record
    assert m.penalties(c.id(1)) == 0


def test_unsigned_record_flood_retains_nothing() -> None:
    """150k unsigned records pinned +480 MB before. Here bans are disabled (a huge
    threshold) so every one of 5,000 records is decoded, checked and dropped."""
    c = Cluster(2, config=LAN.replace(penalty_threshold=1_000_000))
    m = c.nodes[0]
    m.receive(push_pull(c.id(1), unsigned_records(10, salt=99)), "192.0.2.1:1", 0.5)
    batches = [push_pull(c.id(1), unsigned_records(1000, salt=k)) for k in range(5)]
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for k, data in enumerate(batches):
            m.receive(data, "192.0.2.2:1", 1.0 + k)
        grown, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert m.stats["rejected.signature"] == 5010
    assert grown - base < 256 * 1024, f"retained {grown - base} bytes"
    assert m.num_known() == 2


def test_caching_verifier_keeps_only_good_verdicts_and_is_bounded() -> None:
    signer = Ed25519Signer(b"\x03" * 32)
    v = CachingVerifier(Ed25519Verifier(), max_entries=4)
    for i in range(10):
        data = b"x%d" % i
        assert v.verify(signer.node_id, data, signer.sign(data))
        assert not v.verify(signer.node_id, data, b"\x00" * 64)
    assert len(v) == 4
    data = b"x9"
    assert v.verify(signer.node_id, data, signer.sign(data)) and v.hits == 1


def test_caching_verifier_item_memo_holds_only_remembered_bytes_and_is_bounded() -> None:
    v = CachingVerifier(Ed25519Verifier(), max_entries=3)
    items = [b"item-%d" % i for i in range(5)]
    assert not v.verified_item(items[0]) and v.hits == 0
    for item in items:
        v.remember_item(item)
    assert v.verified_item(items[4]) and v.hits == 1
    assert not v.verified_item(items[0])  # the oldest went first
    assert not v.verified_item(items[4] + b"x")  # exact bytes only


def test_unattested_members_are_bounded_and_forgotten() -> None:
    c = Cluster(2, config=LAN.replace(max_pending=5, attest_timeout=10.0))
    import random

    from keepmesh.protocol.membership import Membership
    m = Membership(c.config, make_record(c.signers[0], address(0), 1), c.signers[0],
                   c.verifier, random.Random(1), 0.0)  # requires attestation
    fresh = [make_record(Ed25519Signer(bytes([50 + i]) * 32), f"10.8.0.{i + 1}:7946", 1)
             for i in range(8)]
    m.receive(push_pull(c.id(1), [r.encoded for r in fresh]), address(1), 1.0, src_id=c.id(1))
    attest = [e for e in iter(m.next_event, None) if e.kind == "attest"]
    # the sender itself (its own record is in no entry here) plus 5 of the 8 fresh keys
    assert len(attest) == 5 and m.stats["dropped.pending_full"] == 3
    m.set_trust(fresh[0].node_id, True, 2.0)
    assert m.member(fresh[0].node_id).state is MemberState.ALIVE  # type: ignore[union-attr]
    t = 1.0 + 10.0
    while (nxt := m.get_timer()) is not None and nxt <= t:
        m.handle_timer(nxt)
    assert m.stats["pending.expired"] == 4
    assert m.member(fresh[1].node_id) is None and m.member(fresh[0].node_id) is not None
    # room again: a new unattested member is accepted
    late = make_record(Ed25519Signer(b"\x70" * 32), "10.8.1.1:7946", 1)
    m.receive(push_pull(c.id(1), [late.encoded]), address(1), t + 1, src_id=c.id(1))
    assert m.member(late.node_id) is not None


def test_record_with_an_undialable_address_is_refused_before_anything_dials_it() -> None:
    """The issue's mesh killer: a validly signed record whose address has a 64-char label."""
    c = Cluster(3)
    m = c.nodes[0]
    evil = Ed25519Signer(b"\x66" * 32)
    good = make_record(evil, "10.7.0.1:7946", 1)
    bad = dataclasses.replace(good, address="a" * 64 + ".example:7946", signature=b"")
    bad = dataclasses.replace(bad, signature=evil.sign(bad.signed_bytes))
    assert isinstance(bad, NodeRecord)
    item = encode_payload(Alive(record=bad.encoded))
    m.receive(encode_payload(Gossip(sender=c.id(1), gossip=(item,))), address(1), 1.0,
              src_id=c.id(1))
    assert m.member(evil.node_id) is None
    assert m.stats["rejected.record"] == 1 and m.penalties(c.id(1)) == 1
    assert all("example" not in o.dst for o in m.datagrams_to_send())
    # the same member with a valid address is accepted
    item = encode_payload(Alive(record=good.encoded))
    m.receive(encode_payload(Gossip(sender=c.id(1), gossip=(item,))), address(1), 1.1,
              src_id=c.id(1))
    assert m.member(evil.node_id) is not None
