"""swim.* wire messages (specs/membership.md).

Datagrams carry one primary message (ping, ack, nack, ping_req) whose
`gossip` field piggybacks already-encoded dissemination messages (alive,
suspect, dead, leave). Gossip items stay as bytes so a broadcast is encoded
once and forwarded as is, and packing to max_packet is exact arithmetic on
lengths. Push-pull (anti-entropy) travels on a reliable stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import ProtocolError
from ..wire import (
    Message,
    Spec,
    b,
    decode_payload,
    flag,
    message,
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
    """Direct probe; `target` lets a node ignore pings meant for a previous owner of its address."""

    TYPE: ClassVar[str] = "swim.ping"
    SCHEMA: ClassVar[dict[str, Spec]] = {"seq": u(32), "sender": _id, "target": _id,
                                         "gossip": _gossip}
    seq: int
    sender: bytes
    target: bytes
    gossip: tuple[bytes, ...]


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


@message
class Alive(Message):
    """The only way to say a member is alive: its own signed record."""

    TYPE: ClassVar[str] = "swim.alive"
    SCHEMA: ClassVar[dict[str, Spec]] = {"record": b(max_len=MAX_RECORD_BYTES)}
    record: bytes


@message
class Suspect(Message):
    """An accusation, unsigned: it can only start a timer the subject may refute."""

    TYPE: ClassVar[str] = "swim.suspect"
    SCHEMA: ClassVar[dict[str, Spec]] = {"node": _id, "incarnation": u(63), "accuser": _id}
    node: bytes
    incarnation: int
    accuser: bytes


@message
class Dead(Message):
    TYPE: ClassVar[str] = "swim.dead"
    SCHEMA: ClassVar[dict[str, Spec]] = {"node": _id, "incarnation": u(63), "accuser": _id}
    node: bytes
    incarnation: int
    accuser: bytes


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
    }
    sender: bytes
    join: bool
    reply: bool
    more: bool
    records: tuple[bytes, ...]
    states: bytes
    incarnations: tuple[int, ...]
    leave_sigs: tuple[bytes, ...]

    def validate(self) -> None:
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
              entries: list[PushPullEntry]) -> PushPull:
        return cls(sender=sender, join=join, reply=reply, more=more,
                   records=tuple(e.record for e in entries),
                   states=bytes(STATE_CODES[e.state] for e in entries),
                   incarnations=tuple(e.incarnation for e in entries),
                   leave_sigs=tuple(e.leave_sig or b"" for e in entries))

    def entries(self) -> list[PushPullEntry]:
        return [PushPullEntry(r, STATE_NAMES[c], inc, sig or None)
                for r, c, inc, sig in zip(self.records, self.states, self.incarnations,
                                          self.leave_sigs, strict=True)]


PRIMARY = (Ping, Ack, Nack, PingReq, Gossip)
GOSSIP = (Alive, Suspect, Dead, Leave)


def decode_swim(data: bytes, max_size: int, expect: tuple[type[Message], ...]) -> Message:
    """The shared decoder, restricted to the swim.* types a context expects."""
    return decode_payload(data, max_size, expect)
