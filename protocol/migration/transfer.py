"""Bulk bytes between hosts: split into `migrate.transfer` chunks, reassemble bounded.

Why chunks: a checkpoint of a 10 MB keep must not need a 10 MB frame (the
wire's default limit is 1 MiB, and one huge frame would stall the stream
for every other message). Chunks arrive in order on one reliable stream,
so a receiver only accepts the next expected offset and verifies SHA-256
of the whole object before anything is stored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..errors import ProtocolError
from .messages import MAX_CHUNK, MAX_TRANSFER, Transfer

MAX_INFLIGHT_BYTES = 256 * 1024 * 1024
"""Bound on bytes held across all partial objects of one receiver."""


def split(keep: str, epoch: int, kind: str, seq: int, taken_at: float, data: bytes,
          chunk_size: int = MAX_CHUNK) -> list[Transfer]:
    """The chunks of one object, in order (one empty chunk for an empty object)."""
    if len(data) > MAX_TRANSFER:
        raise ProtocolError(f"migrate: {kind} of {len(data)} bytes exceeds {MAX_TRANSFER}")
    if not 0 < chunk_size <= MAX_CHUNK:
        raise ValueError("chunk_size out of range")
    digest = hashlib.sha256(data).digest()
    offsets = range(0, len(data), chunk_size) if data else range(1)
    return [Transfer(keep=keep, epoch=epoch, kind=kind, seq=seq, taken_at=taken_at,
                     total=len(data), offset=o, digest=digest, chunk=data[o:o + chunk_size])
            for o in offsets]


@dataclass(frozen=True)
class Complete:
    """One reassembled, digest-checked object."""

    keep: str
    epoch: int
    kind: str
    seq: int
    taken_at: float
    data: bytes


@dataclass
class _Partial:
    """An object being reassembled: its chunks as they came (joined once at the end,
    never regrown: a growing buffer re-copies what it holds) and their running digest."""

    head: Transfer
    chunks: list[bytes]
    digest: hashlib._Hash
    received: int = 0
    checked: int = -1  # `received` at the last `expire_stalled` (-1: not seen by one yet)
    idle: int = 0      # consecutive `expire_stalled` calls that found no new chunk


class Reassembler:
    """Per (sender, keep, kind) at most one object in flight; a newer one replaces it."""

    def __init__(self, max_inflight: int = MAX_INFLIGHT_BYTES) -> None:
        self.max_inflight = max_inflight
        self._partial: dict[tuple[bytes, str, str], _Partial] = {}
        self._held = 0

    def feed(self, sender: bytes, t: Transfer) -> Complete | None:
        """Take one chunk; return the object when complete. ProtocolError on anything off."""
        key = (sender, t.keep, t.kind)
        p = self._partial.get(key)
        if t.offset == 0:
            if p is not None:
                self._drop(key)
            p = _Partial(t, [], hashlib.sha256())
            if self._held + t.total > self.max_inflight:
                raise ProtocolError("migrate.transfer: too many bytes in flight")
            self._partial[key] = p
            self._held += t.total
        elif p is None:
            raise ProtocolError("migrate.transfer: chunk without a start")
        else:
            h = p.head
            if (t.epoch, t.seq, t.total, t.digest) != (h.epoch, h.seq, h.total, h.digest):
                self._drop(key)
                raise ProtocolError("migrate.transfer: chunk of another object interleaved")
        if t.offset != p.received:
            self._drop(key)
            raise ProtocolError(f"migrate.transfer: offset {t.offset}, expected {p.received}")
        if p.received + len(t.chunk) > p.head.total:
            self._drop(key)
            raise ProtocolError("migrate.transfer: chunk runs past the object's total")
        p.chunks.append(t.chunk)
        p.digest.update(t.chunk)
        p.received += len(t.chunk)
        if p.received < p.head.total:
            return None
        self._drop(key)
        if p.digest.digest() != p.head.digest:
            raise ProtocolError("migrate.transfer: digest mismatch")
        h = p.head
        return Complete(h.keep, h.epoch, h.kind, h.seq, h.taken_at, b"".join(p.chunks))

    def _drop(self, key: tuple[bytes, str, str]) -> None:
        p = self._partial.pop(key, None)
        if p is not None:
            self._held -= p.head.total

    def expire_stalled(self) -> int:
        """Drop every object that received nothing during the last two calls (called
        every 10 s: 20-30 s without a chunk, past the host's 15 s ack timeout, after
        which it has given the transfer up anyway). Why: an object whose sender stopped
        (the keep moved or stopped, this standby was replaced) kept its declared total in
        the in-flight budget while the sender lived; a few of them and every new
        transfer was refused. Returns how many were dropped."""
        for p in self._partial.values():
            p.idle = p.idle + 1 if p.received == p.checked else 0
            p.checked = p.received
        stalled = [k for k, p in self._partial.items() if p.idle >= 2]
        for key in stalled:
            self._drop(key)
        return len(stalled)

    def forget(self, sender: bytes, keep: str, kind: str) -> None:
        self._drop((sender, keep, kind))

    def forget_sender(self, sender: bytes) -> None:
        for key in [k for k in self._partial if k[0] == sender]:
            self._drop(key)

    @property
    def held(self) -> int:
        return self._held
