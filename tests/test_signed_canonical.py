"""Signed structures have one byte form (found by the signed-structure mutation sweep).

A record is verified over its canonical signed bytes, and relayed, interned and hashed
into the push-pull digest by `encoded`. Were `encoded` the bytes it arrived as, another
byte string with the same signed content (a wider integer, reordered or duplicate keys,
labels in another order) would verify as the same record under different bytes: digests
split, and our own record relayed so would force a refutation. So `encoded` is always the
canonical form (specs/membership.md §2); a float protocol version is refused outright."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest

from keepmesh.protocol.errors import ProtocolError, VerificationError
from keepmesh.protocol.membership import (
    Alive,
    Capacity,
    Claims,
    Ed25519Signer,
    Ed25519Verifier,
    Gossip,
    make_record,
)
from keepmesh.protocol.membership.records import decode_record
from keepmesh.protocol.wire import encode_payload

from tests.membership_cluster import Cluster, address


def _record_bytes() -> bytes:
    rec = make_record(Ed25519Signer(b"\x0a" * 32), "10.0.0.1:7946", 5,
                      Claims(tee="sim", measurement="ab12", tcb="x=1"),
                      Capacity(100, 1000, 50, 500), {"zone": "a", "rack": "r1"})
    return rec.encoded


def _pack_with(obj: Any, patch: dict[str, bytes]) -> bytes:
    """obj packed as msgpack does, except fields named in `patch` (raw value bytes)."""
    version, name, fields = obj
    body = msgpack.Packer().pack_map_header(len(fields)) + b"".join(
        msgpack.packb(k) + (patch[k] if k in patch else msgpack.packb(v, use_bin_type=True))
        for k, v in fields.items())
    return b"\x93" + msgpack.packb(version) + msgpack.packb(name) + body


def _variants() -> dict[str, bytes]:
    data = _record_bytes()
    obj = msgpack.unpackb(data, raw=False)
    version, name, fields = obj
    out: dict[str, bytes] = {}
    out["incarnation as uint64"] = _pack_with(obj, {"incarnation": b"\xcf" + struct.pack(
        ">Q", fields["incarnation"])})
    out["fields reordered"] = msgpack.packb(
        [version, name, dict(reversed(list(fields.items())))], use_bin_type=True)
    out["labels unsorted"] = _pack_with(obj, {"labels": msgpack.packb(
        dict(sorted(fields["labels"].items(), reverse=True)))})
    head = 1 + len(msgpack.packb(version)) + len(msgpack.packb(name))
    assert data[head] == 0x87
    out["duplicate key"] = (data[:head] + b"\x88" + msgpack.packb("incarnation")
                            + msgpack.packb(0) + data[head + 1:])
    out["version as float"] = b"\x93" + msgpack.packb(1.0) + data[2:]
    out["map16 header"] = data[:head] + b"\xde\x00\x07" + data[head + 1:]
    return out


def test_the_genuine_record_decodes_and_verifies() -> None:
    data = _record_bytes()
    assert list(msgpack.unpackb(data)[2]["labels"]) == ["rack", "zone"]  # sorted on the wire
    decode_record(data).verify(Ed25519Verifier())


@pytest.mark.parametrize("variant", sorted(_variants()))
def test_a_record_in_another_byte_form_is_held_in_the_one_canonical_form(variant: str) -> None:
    """Accepted as what it signs (an implementation writing labels in its own order still
    interoperates), but what is held, relayed and hashed is the canonical form."""
    data = _variants()[variant]
    genuine = _record_bytes()
    assert data != genuine
    if variant == "version as float":  # not a record at all: specs/wire.md
        with pytest.raises(ProtocolError, match="unsupported protocol version"):
            decode_record(data)
        return
    rec = decode_record(data)
    rec.verify(Ed25519Verifier())
    assert rec.encoded == genuine and list(rec.labels) == sorted(rec.labels)


def test_a_respelled_record_whose_signature_does_not_hold_is_refused() -> None:
    data = _variants()["incarnation as uint64"]
    forged = data[:-1] + bytes([data[-1] ^ 1])  # last signature byte
    with pytest.raises(VerificationError):
        decode_record(forged).verify(Ed25519Verifier())


def test_own_record_relayed_in_another_byte_form_forces_no_refutation() -> None:
    c = Cluster(3)
    me = c.nodes[0]
    before = me.record.incarnation
    obj = msgpack.unpackb(me.record.encoded, raw=False)
    wide = _pack_with(obj, {"incarnation": b"\xcf" + struct.pack(">Q", before)})
    item = encode_payload(Alive(record=wide))
    me.receive(encode_payload(Gossip(sender=c.id(1), gossip=(item,))), address(1), 1.0,
               src_id=c.id(1))
    assert me.record.incarnation == before
    assert me.stats.get("refutations", 0) == 0


@pytest.mark.parametrize("version", [1.0, True], ids=["float", "bool"])
def test_a_version_that_only_compares_equal_to_1_is_refused(version: object) -> None:
    """specs/wire.md: PROTOCOL_VERSION is 1, any other version is rejected. 1.0 and true
    compared equal to 1 in Python, so every message type decoded with them."""
    from keepmesh.protocol.membership import Ping
    from keepmesh.protocol.wire import decode_payload

    ping = Ping(seq=1, sender=b"\x01" * 32, target=b"\x02" * 32, gossip=())
    fields = msgpack.unpackb(encode_payload(ping), raw=False)[2]
    data = msgpack.packb([version, "swim.ping", fields], use_bin_type=True)
    with pytest.raises(ProtocolError, match="unsupported protocol version"):
        decode_payload(data)
