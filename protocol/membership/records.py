"""Signed node records: the only statement about a member that carries weight.

A record says who a member is (its key), where it listens, which incarnation
of it this is, what its TEE claims (checked by attestation, not by us), what
capacity it offers and its labels. Its subject signs it; relays forward the
exact bytes, so a record is encoded once and verified once per version.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Any, ClassVar

from ..address import canonical_address
from ..errors import ProtocolError, VerificationError
from ..wire import (
    Message,
    Spec,
    b,
    encode_payload,
    mapping,
    message,
    rec,
    s,
    u,
)
from .signing import MAX_SIGNATURE, NODE_ID_LEN, NodeId, RecordSigner, RecordVerifier

MAX_RECORD_BYTES = 1024
TEE_KINDS = ("snp", "tdx", "sgx", "sim", "none")
MAX_LABELS = 16


@message
class Claims(Message):
    """What the member says about its TEE; attestation decides whether it is true."""

    SCHEMA: ClassVar[dict[str, Spec]] = {
        "tee": s(8, choices=TEE_KINDS),
        "measurement": s(128),
        "tcb": s(64),
    }
    tee: str
    measurement: str
    tcb: str

    def validate(self) -> None:
        if any(c not in "0123456789abcdef" for c in self.measurement):
            raise ProtocolError("claims: measurement must be lowercase hex")


@message
class Capacity(Message):
    """Resources offered for keeps (placement reads these; the owner's check is authoritative)."""

    SCHEMA: ClassVar[dict[str, Spec]] = {
        "memory_mb": u(32),
        "cpu_milli": u(32),
        "free_memory_mb": u(32),
        "free_cpu_milli": u(32),
    }
    memory_mb: int
    cpu_milli: int
    free_memory_mb: int
    free_cpu_milli: int

    def validate(self) -> None:
        if self.free_memory_mb > self.memory_mb or self.free_cpu_milli > self.cpu_milli:
            raise ProtocolError("capacity: free exceeds total")


NO_CLAIMS = Claims(tee="none", measurement="", tcb="")
NO_CAPACITY = Capacity(memory_mb=0, cpu_milli=0, free_memory_mb=0, free_cpu_milli=0)


@message
class NodeRecord(Message):
    """A member's self-description, signed by `node_id` over `signed_bytes`."""

    TYPE: ClassVar[str] = "swim.record"
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "node_id": b(exact=NODE_ID_LEN),
        "address": s(256),
        "incarnation": u(63),
        "claims": rec(Claims),
        "capacity": rec(Capacity),
        "labels": mapping(s(64), s(128), max_len=MAX_LABELS),
        "signature": b(max_len=MAX_SIGNATURE),
    }
    node_id: NodeId
    address: str
    incarnation: int
    claims: Claims
    capacity: Capacity
    labels: dict[str, str]
    signature: bytes

    def validate(self) -> None:
        # Parsed once, here at the edge: every address a member holds is dialable as is
        # and compares equal to every other spelling of the same host (protocol/address.py).
        if canonical_address(self.address) != self.address:
            raise ProtocolError("record: address is not in canonical HOST:PORT form")

    def __hash__(self) -> int:  # labels is a dict; identity is (node, incarnation, sig)
        return hash((self.node_id, self.incarnation, self.signature))

    @cached_property
    def signed_bytes(self) -> bytes:
        """Canonical bytes the subject signs: the record with an empty signature
        and labels sorted, so a relay's dict ordering can never matter."""
        tbs = dataclasses.replace(self, signature=b"",
                                  labels=dict(sorted(self.labels.items())))
        return encode_payload(tbs)

    @cached_property
    def encoded(self) -> bytes:
        """Wire bytes, computed once; relays forward these exact bytes."""
        return encode_payload(self)

    def verify(self, verifier: RecordVerifier) -> None:
        if not self.signature or not verifier.verify(self.node_id, self.signed_bytes,
                                                     self.signature):
            raise VerificationError(f"record of {self.node_id.hex()[:16]}: bad signature")

    def same_claims(self, other: NodeRecord) -> bool:
        return self.claims == other.claims


def make_record(signer: RecordSigner, address: str, incarnation: int,
                claims: Claims | None = None, capacity: Capacity | None = None,
                labels: dict[str, str] | None = None) -> NodeRecord:
    """Build and sign this node's record; refuses ones that could not travel.
    `address` is canonicalised (ProtocolError if it is not a valid HOST:PORT)."""
    fields: dict[str, Any] = {
        "node_id": signer.node_id, "address": canonical_address(address),
        "incarnation": incarnation,
        "claims": (claims or NO_CLAIMS).to_fields(),
        "capacity": (capacity or NO_CAPACITY).to_fields(),
        "labels": dict(sorted((labels or {}).items())), "signature": b"",
    }
    unsigned = NodeRecord.from_fields(fields)  # same validation as the wire
    signed = dataclasses.replace(unsigned, signature=signer.sign(unsigned.signed_bytes))
    if len(signed.encoded) > MAX_RECORD_BYTES:
        raise ProtocolError(f"node record of {len(signed.encoded)} bytes exceeds "
                            f"{MAX_RECORD_BYTES}")
    return signed


# Process-wide intern table: identical record bytes decode to one shared
# object, so 10,000 simulated members hold references, not copies. It is a
# pure cache of a pure function (deterministic, no I/O). Only records whose
# signature was verified are interned (intern_record): interning what anyone
# sends let 150k unsigned records pin +480 MB. Bounded in entries and bytes;
# when full it is cleared (members keep their own references).
_INTERN: dict[bytes, NodeRecord] = {}
_INTERN_MAX = 1 << 16
_INTERN_MAX_BYTES = 32 * 1024 * 1024
_intern_bytes = 0


def decode_record(data: bytes) -> NodeRecord:
    """Decode (not verify, not intern) record bytes; ProtocolError on anything malformed.
    Bytes of an already verified record return the shared interned object."""
    found = _INTERN.get(data)
    if found is not None:
        return found
    if len(data) > MAX_RECORD_BYTES:
        raise ProtocolError(f"node record of {len(data)} bytes exceeds {MAX_RECORD_BYTES}")
    from .messages import decode_swim

    msg = decode_swim(data, MAX_RECORD_BYTES, expect=(NodeRecord,))
    assert isinstance(msg, NodeRecord)
    labels = msg.labels
    if list(labels) != sorted(labels):
        msg.__dict__["labels"] = dict(sorted(labels.items()))  # not shared yet
    # One byte form per record version (specs/membership.md §2): the signature covers the
    # canonical re-encoding, and relays, the intern table, the push-pull digest and the
    # check on our own record go by `encoded`. So `encoded` is that canonical form, not
    # the spelling that arrived: another spelling (wider ints, other key or label order)
    # is accepted as what it signs and held, relayed and hashed like every other copy.
    canonical = encode_payload(msg)
    if canonical != data:
        found = _INTERN.get(canonical)
        if found is not None:
            return found
    msg.__dict__["encoded"] = canonical
    return msg


def intern_record(record: NodeRecord) -> NodeRecord:
    """The shared object for a record whose signature the caller has verified."""
    global _intern_bytes
    data = record.encoded
    found = _INTERN.get(data)
    if found is not None:
        return found
    if len(_INTERN) >= _INTERN_MAX or _intern_bytes + len(data) > _INTERN_MAX_BYTES:
        _INTERN.clear()
        _intern_bytes = 0
    _INTERN[data] = record
    _intern_bytes += len(data)
    return record


def interned_records() -> int:
    """How many record versions the process-wide table holds (for tests and stats)."""
    return len(_INTERN)
