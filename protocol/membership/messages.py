"""swim.* wire messages (specs/membership.md).

Datagrams carry one primary message (ping, ack, nack, ping_req) whose
`gossip` field piggybacks already-encoded dissemination messages (alive,
suspect, dead, leave). Gossip items stay as bytes so a broadcast is encoded
once and forwarded as is, and packing to max_packet is exact arithmetic on
lengths. Push-pull (anti-entropy) travels on a reliable stream.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from ..address import canonical_address
from ..errors import ProtocolError
from ..wire import (
    PROTOCOL_VERSION,
    Message,
    Spec,
    b,
    decode_payload,
    flag,
    message,
    pack,
    s,
    seq,
    u,
)
from .records import MAX_RECORD_BYTES
from .signing import MAX_SIGNATURE, NODE_ID_LEN

MAX_GOSSIP_ITEMS = 64
MAX_PUSH_PULL_ENTRIES = 65535
STATE_NAMES = ("alive", "suspect", "dead", "left")

_id = b(exact=NODE_ID_LEN)
_gossip = seq(b(max_len=MAX_RECORD_BYTES + 64), max_len=MAX_GOSSIP_ITEMS)


@message
class Ping(Message):
    """Direct probe; `target` lets a node ignore pings meant for a previous owner of its address.

    `stream` (memberlist's TCP fallback ping): the prober sent this one on a reliable
    stream and wants the ack on one too. Absent on ordinary pings, so their bytes are
    what they were before the field existed; it comes before `gossip` because a
    piggyback is appended to the encoding's last value (`with_gossip`).
    """

    TYPE: ClassVar[str] = "swim.ping"
    SCHEMA: ClassVar[dict[str, Spec]] = {"seq": u(32), "sender": _id, "target": _id,
                                         "stream": flag(optional=True), "gossip": _gossip}
    seq: int
    sender: bytes
    target: bytes
    gossip: tuple[bytes, ...]
    stream: bool | None = None


@message
class Ack(Message):
    TYPE: ClassVar[str] = "swim.ack"
    SCHEMA: ClassVar[dict[str, Spec]] = {"seq": u(32), "sender": _id, "gossip": _gossip}
    seq: int
    sender: bytes
    gossip: tuple[bytes, ...]


@message
class Nack(Message):
    """Lifeguard: an indirect prober saying "I tried and heard nothing", which
    tells the requester that *it* is healthy enough to get replies."""

    TYPE: ClassVar[str] = "swim.nack"
    SCHEMA: ClassVar[dict[str, Spec]] = {"seq": u(32), "sender": _id, "gossip": _gossip}
    seq: int
    sender: bytes
    gossip: tuple[bytes, ...]


@message
class Gossip(Message):
    """Carrier for piggybacked items when there is no probe traffic to ride on."""

    TYPE: ClassVar[str] = "swim.gossip"
    SCHEMA: ClassVar[dict[str, Spec]] = {"sender": _id, "gossip": _gossip}
    sender: bytes
    gossip: tuple[bytes, ...]


@message
class PingReq(Message):
    TYPE: ClassVar[str] = "swim.ping_req"
    SCHEMA: ClassVar[dict[str, Spec]] = {"seq": u(32), "sender": _id, "target": _id,
                                         "target_addr": s(256), "nack": flag(),
                                         "gossip": _gossip}
    seq: int
    sender: bytes
    target: bytes
    target_addr: str
    nack: bool
    gossip: tuple[bytes, ...]

    def validate(self) -> None:
        # Parsed at the edge: a relay compares it with the target's signed record and
        # never dials it (specs/membership.md "Relay dialling rule").
        if canonical_address(self.target_addr) != self.target_addr:
            raise ProtocolError("ping_req: target_addr is not in canonical HOST:PORT form")


@message
class Alive(Message):
    """The only way to say a member is alive: its own signed record."""

    TYPE: ClassVar[str] = "swim.alive"
    SCHEMA: ClassVar[dict[str, Spec]] = {"record": b(max_len=MAX_RECORD_BYTES)}
    record: bytes


@message
class Suspect(Message):
    """An accusation, signed by its accuser: it can only start (or confirm) a
    suspicion, which the subject refutes with a higher incarnation."""

    TYPE: ClassVar[str] = "swim.suspect"
    SCHEMA: ClassVar[dict[str, Spec]] = {"node": _id, "incarnation": u(63), "accuser": _id,
                                         "signature": b(max_len=MAX_SIGNATURE)}
    node: bytes
    incarnation: int
    accuser: bytes
    signature: bytes


@message
class Dead(Message):
    """The accuser's own suspicion expired. To everyone else it is one more signed
    accusation (a confirmation), never a verdict: see specs/membership.md §5."""

    TYPE: ClassVar[str] = "swim.dead"
    SCHEMA: ClassVar[dict[str, Spec]] = {"node": _id, "incarnation": u(63), "accuser": _id,
                                         "signature": b(max_len=MAX_SIGNATURE)}
    node: bytes
    incarnation: int
    accuser: bytes
    signature: bytes


def accusation_signed_bytes(msg: Suspect | Dead) -> bytes:
    """What an accuser signs: the message itself with an empty signature (like records).

    Built from the message's fields with the signature emptied in place: the same
    bytes as encoding a copy with signature=b"" (same keys, same order), without
    constructing that copy for every accusation checked."""
    fields = msg._wire_fields()
    fields["signature"] = b""
    return pack([PROTOCOL_VERSION, msg.TYPE, fields])


@message
class Leave(Message):
    """Graceful leave, signed by the subject so nobody can evict another member."""

    TYPE: ClassVar[str] = "swim.leave"
    SCHEMA: ClassVar[dict[str, Spec]] = {"node": _id, "incarnation": u(63),
                                         "signature": b(max_len=MAX_SIGNATURE)}
    node: bytes
    incarnation: int
    signature: bytes


@message
class LeaveStatement(Message):
    """The bytes a leaving node signs (never sent on its own)."""

    TYPE: ClassVar[str] = "swim.leave_statement"
    SCHEMA: ClassVar[dict[str, Spec]] = {"node": _id, "incarnation": u(63)}
    node: bytes
    incarnation: int


STATE_CODES = {name: i for i, name in enumerate(STATE_NAMES)}


@dataclass(frozen=True)
class PushPullEntry:
    """One member as carried in a push-pull (decoded view of the parallel lists)."""

    record: bytes
    state: str
    incarnation: int
    leave_sig: bytes | None


@message
class PushPull(Message):
    """Anti-entropy: the sender's full signed record set (possibly in chunks, `more`).

    Entries travel as parallel lists (records, one state byte each, incarnations,
    leave signatures with b"" for none) rather than nested records: validating
    10,000 nested records field by field was the simulator's hottest path.
    """

    TYPE: ClassVar[str] = "swim.push_pull"
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "sender": _id, "join": flag(), "reply": flag(), "more": flag(),
        "records": seq(b(max_len=MAX_RECORD_BYTES), max_len=MAX_PUSH_PULL_ENTRIES),
        "states": b(max_len=MAX_PUSH_PULL_ENTRIES),
        "incarnations": seq(u(63), max_len=MAX_PUSH_PULL_ENTRIES),
        "leave_sigs": seq(b(max_len=MAX_SIGNATURE), max_len=MAX_PUSH_PULL_ENTRIES),
        "buckets": u(64, optional=True),
    }
    sender: bytes
    join: bool
    reply: bool
    more: bool
    records: tuple[bytes, ...]
    states: bytes
    incarnations: tuple[int, ...]
    leave_sigs: tuple[bytes, ...]
    buckets: int | None = None  # digest buckets this (partial) state covers; None: all

    def validate(self) -> None:
        if self.buckets == 0:
            raise ProtocolError("push_pull: empty bucket mask")
        n = len(self.records)
        if not len(self.states) == len(self.incarnations) == len(self.leave_sigs) == n:
            raise ProtocolError("push_pull: entry lists differ in length")
        if any(code >= len(STATE_NAMES) for code in self.states):
            raise ProtocolError("push_pull: unknown member state code")
        left = STATE_CODES["left"]
        pairs = zip(self.states, self.leave_sigs, strict=True)
        if any(code == left and not sig for code, sig in pairs):
            raise ProtocolError("push_pull: left without a leave signature")

    @classmethod
    def build(cls, sender: bytes, join: bool, reply: bool, more: bool,
              entries: list[PushPullEntry], buckets: int | None = None) -> PushPull:
        return cls(sender=sender, join=join, reply=reply, more=more,
                   records=tuple(e.record for e in entries),
                   states=bytes(STATE_CODES[e.state] for e in entries),
                   incarnations=tuple(e.incarnation for e in entries),
                   leave_sigs=tuple(e.leave_sig or b"" for e in entries), buckets=buckets)

    def entries(self) -> list[PushPullEntry]:
        return [PushPullEntry(r, STATE_NAMES[c], inc, sig or None)
                for r, c, inc, sig in zip(self.records, self.states, self.incarnations,
                                          self.leave_sigs, strict=True)]


SYNC_BUCKETS = 64
SYNC_DIGEST_BYTES = 8 * SYNC_BUCKETS


@message
class Sync(Message):
    """Anti-entropy, first step: a digest of the sender's full state in 64 bucket sums.

    The receiver answers with a push_pull of only the buckets whose sums differ
    from its own (nothing when none do), and the sender replies with the same
    buckets: what the receiver provably already holds is never sent
    (specs/membership.md §3).
    """

    TYPE: ClassVar[str] = "swim.sync"
    SCHEMA: ClassVar[dict[str, Spec]] = {"sender": _id,
                                         "digest": b(exact=SYNC_DIGEST_BYTES)}
    sender: bytes
    digest: bytes


PRIMARY = (Ping, Ack, Nack, PingReq, Gossip)
GOSSIP = (Alive, Suspect, Dead, Leave)


def decode_swim(data: bytes, max_size: int, expect: tuple[type[Message], ...]) -> Message:
    """The shared decoder, restricted to the swim.* types a context expects."""
    return decode_payload(data, max_size, expect)


# Every primary message ends with its `gossip` field: `with_gossip` relies on it.
assert all(list(cls.SCHEMA)[-1] == "gossip" for cls in PRIMARY)

GOSSIP_MEMO_ITEMS = 4096
_EMPTY_ARRAY = b"\x90"


@functools.lru_cache(maxsize=GOSSIP_MEMO_ITEMS)
def decode_gossip_item(item: bytes, max_size: int) -> Message:
    """Decode one piggybacked gossip item (alive/suspect/dead/leave), memoized.

    Why: one broadcast is forwarded unchanged to every member, so a process that
    hosts many members (the simulator) decoded the same bytes once per member
    per copy. Decoding is a pure function of the bytes and the result is a
    frozen message of immutable fields, so sharing it is safe. Bounded to
    GOSSIP_MEMO_ITEMS entries; failures raise and are not cached.
    """
    return decode_payload(item, max_size, GOSSIP)


def with_gossip(encoded: bytes, items: Sequence[bytes]) -> bytes:
    """The exact bytes of `encoded` (a primary message sent with gossip=()) carrying `items`.

    Why: a sender needs the empty message's size to budget the piggyback, then
    the full message; encoding it twice cost a quarter of simulator time. The
    gossip array is the payload's last value (asserted above), so the result is
    byte-identical to encoding the message with `gossip=tuple(items)`.
    """
    if encoded[-1:] != _EMPTY_ARRAY:
        raise ValueError("with_gossip: message was not encoded with an empty gossip list")
    if not items:
        return encoded
    return encoded[:-1] + pack(items)


P = TypeVar("P", bound=Message)


def carrying(msg: P, items: Sequence[bytes]) -> P:
    """`msg` (a primary message built with gossip=()) carrying `items`: the object twin
    of `with_gossip`'s bytes (the simulator's object mode hands it to the receiver).

    Why not dataclasses.replace: it re-runs the constructor for fields already
    validated, once per datagram; a field-for-field copy is equal to it.
    """
    twin = object.__new__(type(msg))
    fields = twin.__dict__
    fields.update(msg.__dict__)
    fields["gossip"] = tuple(items)
    return twin
