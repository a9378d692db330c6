"""The signed encoding of node records and accusations, re-encoded from the text of
specs/membership.md §2 by a tiny independent msgpack writer (not the msgpack library,
not keepmesh.protocol.wire), so a client written from the spec reproduces signatures."""

from __future__ import annotations

import struct
from typing import Any

from keepmesh.protocol.membership import (
    Capacity,
    Claims,
    Ed25519Signer,
    Ed25519Verifier,
    Suspect,
    make_record,
)
from keepmesh.protocol.membership.messages import accusation_signed_bytes
from nacl.signing import VerifyKey


def pack(v: Any) -> bytes:
    """Shortest-form msgpack for the types the spec names."""
    if isinstance(v, bool):
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        assert v >= 0
        if v < 0x80:
            return bytes([v])
        for tag, fmt, top in ((0xCC, ">B", 0xFF), (0xCD, ">H", 0xFFFF),
                              (0xCE, ">I", 0xFFFFFFFF), (0xCF, ">Q", 2**64 - 1)):
            if v <= top:
                return bytes([tag]) + struct.pack(fmt, v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32:
            return bytes([0xA0 | len(b)]) + b
        if len(b) < 256:
            return b"\xd9" + bytes([len(b)]) + b
        return b"\xda" + struct.pack(">H", len(b)) + b
    if isinstance(v, bytes):
        if len(v) < 256:
            return b"\xc4" + bytes([len(v)]) + v
        return b"\xc5" + struct.pack(">H", len(v)) + v
    if isinstance(v, list):
        assert len(v) < 16
        return bytes([0x90 | len(v)]) + b"".join(pack(x) for x in v)
    if isinstance(v, dict):
        assert len(v) < 16
        return bytes([0x80 | len(v)]) + b"".join(pack(k) + pack(x) for k, x in v.items())
    raise TypeError(type(v))


def test_record_signed_bytes_follow_the_spec() -> None:
    signer = Ed25519Signer(b"\x01" * 32)
    rec = make_record(signer, "10.0.0.1:7946", 3, Claims("sim", "ab", "t"),
                      Capacity(1, 1, 1, 1), {"b": "2", "a": "1"})
    expected = pack([1, "swim.record", {
        "node_id": signer.node_id, "address": "10.0.0.1:7946", "incarnation": 3,
        "claims": {"tee": "sim", "measurement": "ab", "tcb": "t"},
        "capacity": {"memory_mb": 1, "cpu_milli": 1, "free_memory_mb": 1, "free_cpu_milli": 1},
        "labels": {"a": "1", "b": "2"},
        "signature": b"",
    }])
    assert rec.signed_bytes == expected
    VerifyKey(signer.node_id).verify(expected, rec.signature)  # raises if it does not match
    assert Ed25519Verifier().verify(signer.node_id, expected, rec.signature)
    # a bigger incarnation and no labels: uint forms and the empty map
    rec2 = make_record(signer, "node-1.example:7946", 70_000)
    assert rec2.signed_bytes == pack([1, "swim.record", {
        "node_id": signer.node_id, "address": "node-1.example:7946", "incarnation": 70_000,
        "claims": {"tee": "none", "measurement": "", "tcb": ""},
        "capacity": {"memory_mb": 0, "cpu_milli": 0, "free_memory_mb": 0, "free_cpu_milli": 0},
        "labels": {}, "signature": b""}])


def test_accusation_signed_bytes_follow_the_spec() -> None:
    accuser = Ed25519Signer(b"\x02" * 32)
    node = b"\x09" * 32
    msg = Suspect(node=node, incarnation=5, accuser=accuser.node_id, signature=b"")
    expected = pack([1, "swim.suspect", {"node": node, "incarnation": 5,
                                         "accuser": accuser.node_id, "signature": b""}])
    assert accusation_signed_bytes(msg) == expected
    signed = Suspect(node=node, incarnation=5, accuser=accuser.node_id,
                     signature=accuser.sign(expected))
    assert accusation_signed_bytes(signed) == expected  # signature excluded
