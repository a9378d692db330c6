"""migrate.* wire records (specs/migration.md).

Every record addressed to a keep carries the keep's epoch (the fencing
token), so a receiver can refuse anything from or for a superseded copy
with one comparison. Bulk bytes (the sealed package, checkpoints) travel as
bounded chunks of one `migrate.transfer` record type, reassembled by
`transfer.Reassembler`; no single frame exceeds the wire's 1 MiB default.
"""

from __future__ import annotations

from typing import ClassVar

from ..errors import ProtocolError
from ..membership.signing import MAX_SIGNATURE, NODE_ID_LEN
from ..wire import Message, Spec, b, f, flag, message, s, seq, u

MAX_STANDBYS = 8
"""Upper bound on `[migration] standbys` (and on a record's standby list)."""
MAX_CHUNK = 768 * 1024
"""Largest chunk of a transfer; with headers a chunk frame stays under 1 MiB."""
MAX_TRANSFER = 64 * 1024 * 1024
"""Largest checkpoint or package a standby reassembles (bytes)."""
KEEP_ID_LEN = 32
"""A keep is named by its deployment id: 32 lowercase hex characters."""
MAX_DEPLOYMENT_BYTES = 96 * 1024
MAX_ADDRESS = 256
MAX_REASON = 200
TRANSFER_KINDS = ("package", "checkpoint")
LOCATION_STATES = ("running", "stopped", "lost")
"""running: served here; stopped: the owner stopped it (nobody restarts it);
lost: its host no longer runs it involuntarily (restart, failed start): standbys take over."""
HANDOVER_TRIGGERS = ("drain", "trust")

MAX_EPOCH = (1 << 63) - 1
"""The highest epoch the wire carries (u63). No move produces one above it: a take-over
needs `epoch + 1`, a hand-over `epoch + 2` (it may resume there), within MAX_EPOCH
(specs/migration.md §3)."""

_id = b(exact=NODE_ID_LEN)
_keep = s(KEEP_ID_LEN)
_epoch = u(63)
_HEX = frozenset("0123456789abcdef")


def check_keep_id(keep: str) -> None:
    """Keep ids are deployment ids; anything else is refused before it is used as a key."""
    if len(keep) != KEEP_ID_LEN or not set(keep) <= _HEX:
        raise ProtocolError("migrate: keep id must be 32 lowercase hex characters")


@message
class LocationStatement(Message):
    """What a host signs when it says "I run this keep at this epoch" (never sent alone)."""

    TYPE: ClassVar[str] = "migrate.location_statement"
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "keep": _keep, "owner": b(exact=32), "host": _id, "address": s(MAX_ADDRESS),
        "epoch": _epoch,
        "version": u(63), "standbys": seq(_id, MAX_STANDBYS), "checkpoint_seq": u(63),
        "checkpoint_at": f(0.0, 1e12), "state": s(16, choices=LOCATION_STATES),
    }
    keep: str
    owner: bytes
    host: bytes
    address: str
    epoch: int
    version: int
    standbys: tuple[bytes, ...]
    checkpoint_seq: int
    checkpoint_at: float
    state: str

    def validate(self) -> None:
        check_keep_id(self.keep)
        if self.host in self.standbys:
            raise ProtocolError("migrate.location: a host cannot be its own standby")
        if len(set(self.standbys)) != len(self.standbys):
            raise ProtocolError("migrate.location: duplicate standby")


@message
class Location(Message):
    """Gossiped keep -> host record, signed by the host (see `location`)."""

    TYPE: ClassVar[str] = "migrate.location"
    SCHEMA: ClassVar[dict[str, Spec]] = {
        **LocationStatement.SCHEMA, "signature": b(max_len=MAX_SIGNATURE)}
    keep: str
    owner: bytes
    host: bytes
    address: str
    epoch: int
    version: int
    standbys: tuple[bytes, ...]
    checkpoint_seq: int
    checkpoint_at: float
    state: str
    signature: bytes

    def validate(self) -> None:
        self.statement().validate()

    def statement(self) -> LocationStatement:
        return LocationStatement(
            keep=self.keep, owner=self.owner, host=self.host, address=self.address,
            epoch=self.epoch,
            version=self.version, standbys=self.standbys, checkpoint_seq=self.checkpoint_seq,
            checkpoint_at=self.checkpoint_at, state=self.state)


@message
class Replicate(Message):
    """Host -> standby: the signed deployment; the sealed package follows.

    The `package` transfer that follows is an encoded `keeps.sealed_package`
    (module, inputs and secret updates under the deployment key, that key
    sealed to the standby's attested identity key). The host only builds it
    after the standby's fresh evidence, bound to the host's nonce, satisfied
    the deployment's signed policy. `package_digest` is SHA-256 of those bytes.
    """

    TYPE: ClassVar[str] = "migrate.replicate"
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "keep": _keep, "epoch": _epoch, "deployment": b(MAX_DEPLOYMENT_BYTES),
        "package_size": u(32),
        "package_digest": b(exact=32),
    }
    keep: str
    epoch: int
    deployment: bytes
    package_size: int
    package_digest: bytes

    def validate(self) -> None:
        check_keep_id(self.keep)
        if not 0 < self.package_size <= MAX_TRANSFER:
            raise ProtocolError("migrate.replicate: package_size out of range")


@message
class Transfer(Message):
    """One chunk of a package or checkpoint for a keep at an epoch.

    `seq` numbers checkpoints (0 for the package); `digest` is SHA-256 of
    the whole object, checked after reassembly. Checkpoint bytes are
    ciphertext under the deployment key: a standby stores them unread.
    """

    TYPE: ClassVar[str] = "migrate.transfer"
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "keep": _keep, "epoch": _epoch, "kind": s(16, choices=TRANSFER_KINDS),
        "seq": u(63), "taken_at": f(0.0, 1e12), "total": u(32), "offset": u(32),
        "digest": b(exact=32), "chunk": b(MAX_CHUNK),
    }
    keep: str
    epoch: int
    kind: str
    seq: int
    taken_at: float
    total: int
    offset: int
    digest: bytes
    chunk: bytes

    def validate(self) -> None:
        check_keep_id(self.keep)
        if self.total > MAX_TRANSFER:
            raise ProtocolError(f"migrate.transfer: total {self.total} exceeds {MAX_TRANSFER}")
        if self.offset + len(self.chunk) > self.total:
            raise ProtocolError("migrate.transfer: chunk runs past the declared total")
        if not self.chunk and self.total:
            raise ProtocolError("migrate.transfer: empty chunk")


@message
class Ack(Message):
    """Standby -> host: a replicate or transfer was stored (ok) or refused (reason)."""

    TYPE: ClassVar[str] = "migrate.ack"
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "keep": _keep, "epoch": _epoch, "kind": s(16, choices=("replicate", *TRANSFER_KINDS)),
        "seq": u(63), "ok": flag(), "reason": s(MAX_REASON),
    }
    keep: str
    epoch: int
    kind: str
    seq: int
    ok: bool
    reason: str

    def validate(self) -> None:
        check_keep_id(self.keep)


@message
class Handover(Message):
    """Drain: the old host's final word. Restore checkpoint `seq` as `epoch` and start.

    Sent only after the final checkpoint's transfer was acked by the successor
    and the old copy stopped taking calls. `epoch` is the old epoch + 1.
    """

    TYPE: ClassVar[str] = "migrate.handover"
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "keep": _keep, "epoch": _epoch, "from_epoch": _epoch, "seq": u(63),
        "trigger": s(16, choices=HANDOVER_TRIGGERS)}
    keep: str
    epoch: int
    from_epoch: int
    seq: int
    trigger: str

    def validate(self) -> None:
        check_keep_id(self.keep)
        if self.epoch != self.from_epoch + 1:
            raise ProtocolError("migrate.handover: epoch must be from_epoch + 1")


@message
class HandoverDone(Message):
    """Successor -> old host: the keep runs here at `epoch` (ok) or could not start."""

    TYPE: ClassVar[str] = "migrate.handover_done"
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "keep": _keep, "epoch": _epoch, "ok": flag(), "reason": s(MAX_REASON)}
    keep: str
    epoch: int
    ok: bool
    reason: str

    def validate(self) -> None:
        check_keep_id(self.keep)


@message
class Fenced(Message):
    """Reply to anything addressed to a keep at a superseded epoch: where it runs now."""

    TYPE: ClassVar[str] = "migrate.fenced"
    SCHEMA: ClassVar[dict[str, Spec]] = {"location": b(max_len=4096)}
    location: bytes


MIGRATE_MESSAGES = (Location, Replicate, Transfer, Ack, Handover, HandoverDone, Fenced)
