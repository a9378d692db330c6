"""Signed location records and the fencing order (epoch, then HRW, then version)."""

from __future__ import annotations

import hashlib

import pytest
from keepmesh.protocol.errors import ProtocolError, VerificationError
from keepmesh.protocol.membership.signing import Ed25519Signer, Ed25519Verifier
from keepmesh.protocol.migration.location import (
    LocationTable,
    decode_location,
    sign_location,
    supersedes,
    verify_location,
)
from keepmesh.protocol.migration.messages import Location, LocationStatement
from keepmesh.protocol.migration.successor import hrw_score
from keepmesh.protocol.wire import encode_payload

KEEP = "ab" * 16


def _signer(i: int) -> Ed25519Signer:
    return Ed25519Signer(hashlib.sha256(bytes([i])).digest())


def _loc(signer: Ed25519Signer, epoch: int, version: int = 0, keep: str = KEEP,
         standbys: tuple[bytes, ...] = ()) -> Location:
    st = LocationStatement(keep=keep, owner=bytes(32), host=signer.node_id, address="h:1",
                           epoch=epoch,
                           version=version, standbys=standbys, checkpoint_seq=0,
                           checkpoint_at=0.0, state="running")
    return sign_location(signer, st)


def test_signature_passes_and_fails() -> None:
    a, b = _signer(1), _signer(2)
    loc = _loc(a, 1)
    verify_location(Ed25519Verifier(), loc)
    assert decode_location(encode_payload(loc), Ed25519Verifier()) == loc
    forged = Location(**{**loc.__dict__, "host": b.node_id})  # claims b runs it
    with pytest.raises(VerificationError):
        verify_location(Ed25519Verifier(), forged)
    bumped = Location(**{**loc.__dict__, "epoch": 9})  # raised epoch without re-signing
    with pytest.raises(VerificationError):
        verify_location(Ed25519Verifier(), bumped)
    with pytest.raises(ProtocolError):
        sign_location(a, _loc(b, 1).statement())  # nobody signs for another host


def test_hostile_records_are_refused() -> None:
    a = _signer(1)
    with pytest.raises(ProtocolError):
        _loc(a, 1, keep="not-a-keep-id")
    with pytest.raises(ProtocolError):
        _loc(a, 1, standbys=(a.node_id,))       # host as its own standby
    b = _signer(2).node_id
    with pytest.raises(ProtocolError):
        _loc(a, 1, standbys=(b, b))             # duplicate standby
    with pytest.raises(ProtocolError):
        decode_location(b"\x93\x01\xa3bad" + b"x" * 5000, Ed25519Verifier())


def test_order_epoch_then_hrw_then_version() -> None:
    a, b = _signer(1), _signer(2)
    assert supersedes(_loc(a, 2), _loc(b, 1)) and supersedes(_loc(b, 2), _loc(a, 1))
    hi, lo = (a, b) if hrw_score(KEEP, a.node_id) > hrw_score(KEEP, b.node_id) else (b, a)
    assert supersedes(_loc(hi, 3), _loc(lo, 3, version=99))   # tie on epoch: HRW wins
    assert not supersedes(_loc(lo, 3, version=99), _loc(hi, 3))
    assert supersedes(_loc(a, 3, version=2), _loc(a, 3, version=1))


def test_table_keeps_best_and_reports_moves() -> None:
    a, b = _signer(1), _signer(2)
    t = LocationTable(max_keeps=2)
    first = t.learn(_loc(a, 1))
    assert first.changed and first.moved
    assert not t.learn(_loc(b, 0)).changed                    # older epoch ignored
    refresh = t.learn(_loc(a, 1, version=1))
    assert refresh.changed and not refresh.moved
    moved = t.learn(_loc(b, 2))
    assert moved.moved and t.get(KEEP) is not None and t.get(KEEP).host == b.node_id  # type: ignore[union-attr]
    assert not t.is_current(KEEP, 1) and t.is_current(KEEP, 2) and t.is_current("cd" * 16, 0)
    t.learn(_loc(a, 1, keep="cd" * 16))
    with pytest.raises(ProtocolError):
        t.learn(_loc(a, 1, keep="ef" * 16))                   # bounded table


def test_host_index_stays_in_step_with_the_table() -> None:
    a, b, c = _signer(1), _signer(2), _signer(3)
    t = LocationTable()
    keeps = [f"{i:02x}" * 16 for i in range(4)]
    for k in keeps:
        t.learn(_loc(a, 1, keep=k))

    def scan(host: bytes) -> list[str]:  # what the index replaces: a scan of the table
        return [loc.keep for loc in t if loc.host == host]

    t.learn(_loc(b, 2, keep=keeps[1]))          # moved a -> b
    t.learn(_loc(a, 1, version=1, keep=keeps[0]))  # a refresh stays a's
    t.forget(keeps[2])
    t.learn(_loc(a, 1, keep=keeps[2]))          # back, at the end of the table's order
    for host in (a.node_id, b.node_id, c.node_id):
        assert [loc.keep for loc in t.hosted_by(host)] == scan(host)
    assert [loc.keep for loc in t.hosted_by(a.node_id)] == [keeps[0], keeps[3], keeps[2]]
    assert t.address_of(b.node_id) == "h:1" and t.address_of(c.node_id) is None
    t.learn(_loc(c, 3, keep=keeps[1]))          # b's only record moves on: b is gone
    assert t.address_of(b.node_id) is None and list(t.hosted_by(b.node_id)) == []
    for k in keeps:
        t.forget(k)
    assert all(list(t.hosted_by(h.node_id)) == [] for h in (a, b, c))
    assert t._by_host == {} and t._order == {}
