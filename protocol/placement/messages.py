"""Placement wire messages (specs/placement.md). All travel reliably (a stream in the
agent), are small, and carry the entry's random `req` so replies match requests."""

from __future__ import annotations

from typing import ClassVar

from ..wire import Message, Spec, b, decode_payload, flag, message, rec, s, seq, u

MAX_PLACE_MESSAGE = 16 * 1024
MAX_WHERE_ENTRIES = 32
KEEP_ID = s(64)
REASON = s(200)


@message
class PlaceProbe(Message):
    """Entry -> candidate: how much room do you have for a keep of `memory_mb`?"""

    TYPE: ClassVar[str] = "place.probe"
    SCHEMA: ClassVar[dict[str, Spec]] = {"req": u(63), "keep": KEEP_ID, "memory_mb": u(32)}
    req: int
    keep: str
    memory_mb: int


@message
class PlaceBid(Message):
    """Candidate -> entry: its lease table's answer now (no promise)."""

    TYPE: ClassVar[str] = "place.bid"
    SCHEMA: ClassVar[dict[str, Spec]] = {"req": u(63), "free_mb": u(32), "free_slots": u(32),
                                         "ok": flag()}
    req: int
    free_mb: int
    free_slots: int
    ok: bool


@message
class PlaceReserve(Message):
    """Entry -> chosen host: hold `memory_mb` for `keep` for `ttl_ms` (a lease)."""

    TYPE: ClassVar[str] = "place.reserve"
    SCHEMA: ClassVar[dict[str, Spec]] = {"req": u(63), "keep": KEEP_ID, "memory_mb": u(32),
                                         "ttl_ms": u(32)}
    req: int
    keep: str
    memory_mb: int
    ttl_ms: int


@message
class PlaceReserved(Message):
    TYPE: ClassVar[str] = "place.reserved"
    SCHEMA: ClassVar[dict[str, Spec]] = {"req": u(63), "lease": u(63), "ttl_ms": u(32)}
    req: int
    lease: int
    ttl_ms: int


@message
class PlaceRefused(Message):
    TYPE: ClassVar[str] = "place.refused"
    SCHEMA: ClassVar[dict[str, Spec]] = {"req": u(63), "reason": REASON}
    req: int
    reason: str


@message
class PlaceCommit(Message):
    """Entry -> host (when the entry itself ships, as in the simulator): run it."""

    TYPE: ClassVar[str] = "place.commit"
    SCHEMA: ClassVar[dict[str, Spec]] = {"req": u(63), "lease": u(63), "keep": KEEP_ID,
                                         "epoch": u(63)}
    req: int
    lease: int
    keep: str
    epoch: int


@message
class PlaceCommitted(Message):
    TYPE: ClassVar[str] = "place.committed"
    SCHEMA: ClassVar[dict[str, Spec]] = {"req": u(63), "lease": u(63)}
    req: int
    lease: int


@message
class PlaceRelease(Message):
    """Entry -> host: drop this reservation (all-or-nothing failed, or gave up)."""

    TYPE: ClassVar[str] = "place.release"
    SCHEMA: ClassVar[dict[str, Spec]] = {"lease": u(63), "keep": KEEP_ID}
    lease: int
    keep: str


@message
class Location(Message):
    """Where one keep runs, as the host (or a relay of its statement) says."""

    TYPE: ClassVar[str] = ""
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "keep": KEEP_ID, "host_id": b(exact=32), "host": s(256), "epoch": u(63),
        "state": s(16, choices=("running", "stopped")), "owner": b(max_len=32),
    }
    keep: str
    host_id: bytes
    host: str
    epoch: int
    state: str
    owner: bytes


@message
class PlaceWhere(Message):
    """Gossip of keep locations (piggy-backed epidemic, like memberlist broadcasts)."""

    TYPE: ClassVar[str] = "place.where"
    SCHEMA: ClassVar[dict[str, Spec]] = {"entries": seq(rec(Location), MAX_WHERE_ENTRIES)}
    entries: tuple[Location, ...]


PLACE_MESSAGES: tuple[type[Message], ...] = (
    PlaceProbe, PlaceBid, PlaceReserve, PlaceReserved, PlaceRefused, PlaceCommit,
    PlaceCommitted, PlaceRelease, PlaceWhere)


def decode_place(data: bytes) -> Message:
    """Decode one placement message; ProtocolError on anything else."""
    return decode_payload(data, MAX_PLACE_MESSAGE, PLACE_MESSAGES)
