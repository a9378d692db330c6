"""Member table: per-node state that costs only what differs from a shared base view.

Why: a simulator hosts N members that each hold N-1 entries. Kept as one
object, one dict slot and one probe-order slot per entry, that was ~185
bytes x N^2 (18 GB at N = 10,000) and an O(N) warm start per member. Records
are signed by their subject and identical everywhere, and in a running mesh
almost every member holds the same (record, alive, trusted) entry for almost
every other. So a `MemberBase` holds that common entry once per identity for
the whole process; each `MemberTable` keeps only an overlay of entries that
differ (copy-on-write, `own`), plus tombstones for base entries it dropped.
A real agent has no base: its table is just the overlay, as light as a dict.

The table also keeps the push-pull digest (specs/membership.md §3 "Sync")
incrementally: 64 bucket sums over the entries a full push-pull would carry,
updated lazily from the entries touched since the last read.

The probe order (`ProbeOrder`) is a per-round uniform permutation of candidate
positions drawn lazily (Fisher-Yates one step per probe, remembering only the
positions swapped so far), with a short list only for members that are not in
the base. An up-front shuffle per round made a warm start O(N^2). An affine map
(two integers per round, O(1) memory) was tried and measurably slowed
detection: at 300 agents with 10% crashed in waves, the worst first suspicion
rose from 6.5-11.4 s to 11.8-19.6 s over three seeds (a shuffle: 7.7-13.0 s).
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Iterable, Iterator
from enum import Enum

from ..errors import ProtocolError
from .messages import STATE_CODES
from .messages import SYNC_BUCKETS as DIGEST_BUCKETS
from .messages import SYNC_DIGEST_BYTES as DIGEST_BYTES
from .records import NodeRecord, intern_record
from .signing import NodeId, RecordVerifier
from .suspicion import Suspicion

_MASK64 = (1 << 64) - 1


class MemberState(Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"
    UNTRUSTED = "untrusted"


class Trust(Enum):
    PENDING = "pending"   # learned, "attest" emitted, no verdict yet
    TRUSTED = "trusted"
    FAILED = "failed"     # set_trust(False) or penalised: its messages are dropped
    EXPIRED = "expired"   # `until` passed: excluded until attested again


def bucket_of(node_id: bytes) -> int:
    """Digest bucket of an identity: low 6 bits of BLAKE2b-8bit(node_id). Hashed, so
    structured identities (the test harness's, or ground keys) still spread evenly."""
    return hashlib.blake2b(node_id, digest_size=1).digest()[0] & (DIGEST_BUCKETS - 1)


def entry_hash(record_bytes: bytes, state: str) -> int:
    """u64 of one push-pull entry: BLAKE2b-64(record bytes || state code), little-endian."""
    h = hashlib.blake2b(record_bytes, digest_size=8)
    h.update(bytes((STATE_CODES[state],)))
    return int.from_bytes(h.digest(), "little")


def pack_digest(sums: list[int]) -> bytes:
    return b"".join(s.to_bytes(8, "little") for s in sums)


def unpack_digest(data: bytes) -> list[int]:
    if len(data) != DIGEST_BYTES:
        raise ProtocolError(f"sync: digest of {len(data)} bytes, expected {DIGEST_BYTES}")
    return [int.from_bytes(data[i:i + 8], "little") for i in range(0, DIGEST_BYTES, 8)]


def differing_buckets(a: list[int], b: list[int]) -> int:
    """Bit mask of the buckets whose sums differ."""
    mask = 0
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y:
            mask |= 1 << i
    return mask


class _Member:
    """One member's state here. The record is shared (interned); the rest are scalars."""

    __slots__ = ("record", "state", "since", "trust", "trust_until", "suspicion",
                 "leave_sig", "joined", "in_probe", "penalised")

    def __init__(self, record: NodeRecord, trust: Trust, now: float) -> None:
        self.record = record
        self.state = MemberState.ALIVE
        self.since = now
        self.trust = trust
        self.trust_until: float | None = None
        self.suspicion: Suspicion | None = None
        self.leave_sig: bytes | None = None
        self.joined = False
        self.in_probe = False
        self.penalised = False  # FAILED because it was banned (restored to EXPIRED at expiry)

    def copy(self) -> _Member:
        # Field by field, not a loop over __slots__: the compiled simulator build
        # (simulations/compiled.py, mypyc) has no __slots__ on the class object.
        m = _Member(self.record, self.trust, self.since)
        m.state = self.state
        m.trust_until = self.trust_until
        m.suspicion = self.suspicion
        m.leave_sig = self.leave_sig
        m.joined = self.joined
        m.in_probe = self.in_probe
        m.penalised = self.penalised
        return m

    def entry_hash(self) -> int:
        """Hash of what a full push-pull carries for this member (0: it carries nothing)."""
        if self.trust is Trust.FAILED:
            return 0
        return entry_hash(self.record.encoded, self.state.value)


class MemberBase:
    """The entry every member holds for every other in a warm mesh: built once, shared.

    Every record's signature is verified (once, here) before it is interned and
    shared; a record that fails is left out. Members adopt the base as their
    starting table (`Membership.learn(base, ...)`) without copying it. Its
    default members must never be mutated: tables copy one before changing it.
    """

    __slots__ = ("ids", "index", "by_id", "members", "since", "sums", "buckets")

    def __init__(self) -> None:
        self.ids: list[NodeId] = []
        self.index: dict[NodeId, int] = {}
        self.by_id: dict[NodeId, _Member] = {}
        self.members: list[_Member] = []
        self.since = 0.0
        self.sums = [0] * DIGEST_BUCKETS
        self.buckets: list[list[int]] = [[] for _ in range(DIGEST_BUCKETS)]

    @classmethod
    def build(cls, records: Iterable[NodeRecord], verifier: RecordVerifier,
              now: float) -> MemberBase:
        base = cls()
        base.since = now
        for record in records:
            nid = record.node_id
            if nid in base.index:
                continue
            if not record.signature or not verifier.verify(nid, record.signed_bytes,
                                                           record.signature):
                continue
            record = intern_record(record)
            m = _Member(record, Trust.TRUSTED, now)
            m.joined = True
            m.in_probe = True
            i = len(base.ids)
            base.index[nid] = i
            base.by_id[nid] = m
            base.ids.append(nid)
            base.members.append(m)
            k = bucket_of(nid)
            base.buckets[k].append(i)
            base.sums[k] = (base.sums[k] + m.entry_hash()) & _MASK64
        return base

    def __len__(self) -> int:
        return len(self.ids)


_MISSING = object()
_MAX_DIRTY = 4096  # entries changed since the last digest, before they are folded in


class MemberTable:
    """NodeId -> _Member, as an optional shared base plus this node's overlay.

    Reads (`get`, `[]`, `in`, iteration) see the merged view. Every change goes
    through `own` (a private copy of the entry, safe to mutate), `add` or
    `remove`, which also mark the entry for the digest update.
    """

    __slots__ = ("_base", "_by_id", "_over", "_len", "_dirty", "_sums")

    def __init__(self) -> None:
        self._base: MemberBase | None = None
        self._by_id: dict[NodeId, _Member] = {}  # the base's entries by identity (shared)
        self._over: dict[NodeId, _Member | None] = {}   # None: a base entry dropped here
        self._len = 0
        self._dirty: dict[NodeId, int] = {}  # entry -> its hash at the last digest
        self._sums = [0] * DIGEST_BUCKETS

    @property
    def base(self) -> MemberBase | None:
        return self._base

    def adopt(self, base: MemberBase, exclude: NodeId) -> None:
        """Start from `base` (the table must be empty); `exclude` (ourselves) is dropped."""
        assert self._len == 0 and not self._over
        self._base = base
        self._by_id = base.by_id
        self._len = len(base)
        self._sums = list(base.sums)
        if exclude in base.index:
            self.remove(exclude)

    def __len__(self) -> int:
        return self._len

    def get(self, nid: NodeId) -> _Member | None:
        m = self._over.get(nid, _MISSING)
        if m is not _MISSING:
            return m  # type: ignore[return-value]
        return self._by_id.get(nid)

    def __getitem__(self, nid: NodeId) -> _Member:
        m = self.get(nid)
        if m is None:
            raise KeyError(nid)
        return m

    def __contains__(self, nid: object) -> bool:
        return isinstance(nid, bytes) and self.get(nid) is not None

    def in_base(self, nid: NodeId) -> bool:
        return self._base is not None and nid in self._base.index

    def own(self, nid: NodeId) -> _Member | None:
        """The entry, private to this table (copied from the base on first change)."""
        over = self._over
        m = over.get(nid, _MISSING)
        if m is None:
            return None
        if m is _MISSING:
            base = self._base
            i = None if base is None else base.index.get(nid)
            if i is None:
                return None
            assert base is not None
            shared = base.members[i]
            if nid not in self._dirty:
                self._mark(nid, shared.entry_hash())
            m = over[nid] = shared.copy()
            return m
        assert isinstance(m, _Member)
        if nid not in self._dirty:
            self._mark(nid, m.entry_hash())
        return m

    def _mark(self, nid: NodeId, old_hash: int) -> None:
        """Remember an entry's hash before its first change since the last digest.
        Bounded: past _MAX_DIRTY the pending changes are folded in first (else a
        member that never syncs would keep one per member ever touched)."""
        if len(self._dirty) >= _MAX_DIRTY:
            self.digest_sums()
        self._dirty[nid] = old_hash

    def add(self, nid: NodeId, m: _Member) -> None:
        if nid not in self._dirty:
            self._mark(nid, 0)
        self._over[nid] = m
        self._len += 1

    def remove(self, nid: NodeId) -> None:
        m = self.get(nid)
        if m is None:
            return
        if nid not in self._dirty:
            self._mark(nid, m.entry_hash())
        if self.in_base(nid):
            self._over[nid] = None
        else:
            del self._over[nid]
        self._len -= 1

    def items(self) -> Iterator[tuple[NodeId, _Member]]:
        """Base entries (in base order) then this table's own additions."""
        over = self._over
        base = self._base
        if base is not None:
            for nid, shared in zip(base.ids, base.members, strict=True):
                m = over.get(nid, _MISSING)
                if m is _MISSING:
                    yield nid, shared
                elif m is not None:
                    yield nid, m  # type: ignore[misc]
            index = base.index
            for nid, m in over.items():
                if m is not None and nid not in index:
                    yield nid, m
        else:
            for nid, m in over.items():
                if m is not None:
                    yield nid, m

    def values(self) -> Iterator[_Member]:
        for _, m in self.items():
            yield m

    def bucket_items(self, mask: int) -> Iterator[tuple[NodeId, _Member]]:
        """Entries whose digest bucket is in `mask`: O(entries there + overlay)."""
        over = self._over
        base = self._base
        index: dict[NodeId, int] = {}
        if base is not None:
            index = base.index
            for k in range(DIGEST_BUCKETS):
                if not mask >> k & 1:
                    continue
                for i in base.buckets[k]:
                    nid = base.ids[i]
                    m = over.get(nid, _MISSING)
                    if m is _MISSING:
                        yield nid, base.members[i]
                    elif m is not None:
                        yield nid, m  # type: ignore[misc]
        for nid, m in over.items():
            if m is not None and nid not in index and mask >> bucket_of(nid) & 1:
                yield nid, m

    def digest_sums(self) -> list[int]:
        """The 64 bucket sums over the table's entries (self not included)."""
        sums = self._sums
        for nid, old in self._dirty.items():
            m = self.get(nid)
            new = 0 if m is None else m.entry_hash()
            if new != old:
                k = bucket_of(nid)
                sums[k] = (sums[k] - old + new) & _MASK64
        self._dirty.clear()
        return list(sums)

    def overlay_size(self) -> int:
        """Entries held privately (copies, additions, tombstones): the per-node cost."""
        return len(self._over)


class ProbeOrder:
    """Round-robin probe order: each round a fresh pseudo-random permutation.

    Candidates are the base identities (positions 0..B-1, always present; ones
    not worth probing are skipped when drawn) followed by `extra`, members not
    in the base. A round is a uniform permutation of the M candidate positions
    at its start (memberlist's shuffleNodes), drawn lazily: step p swaps a
    uniformly chosen position of p..M-1 into p (Fisher-Yates, one draw per
    step). Why lazy: shuffling up front cost O(M) per member per round, which
    at a warm start of N members is O(N^2) (70 CPU-s at 10,000); a lazy draw
    costs O(1) per probe and remembers only the positions swapped so far this
    round (`_moved`), so memory follows the probes done, not M. A member added
    during a round is inserted at a random point of what is left of it
    (memberlist inserts new members at a random position, so they are probed
    soon), and joins the candidates of the next.
    """

    __slots__ = ("_base", "_extra", "_m", "_moved", "_pos", "_fresh", "_fresh_n", "_rng")

    def __init__(self) -> None:
        self._base: list[NodeId] = []
        self._extra: list[NodeId] = []
        self._m = 0
        self._moved: dict[int, int] = {}   # position -> candidate swapped there this round
        self._pos = 0
        self._fresh: list[tuple[int, int, NodeId]] = []   # (yield at pos, order, id)
        self._fresh_n = 0
        self._rng: random.Random | None = None

    def set_base(self, ids: list[NodeId], rng: random.Random) -> None:
        self._base = ids
        self.new_round(rng, lambda _nid: True)

    def __len__(self) -> int:
        """Candidates (base + extra); a member may appear once here and once fresh."""
        return len(self._base) + len(self._extra)

    def insert(self, nid: NodeId, rng: random.Random) -> None:
        """A member not in the base became worth probing."""
        self._extra.append(nid)
        left = max(self._m - self._pos, 0) + len(self._fresh)
        self._fresh_n += 1
        heapq.heappush(self._fresh, (self._pos + rng.randint(0, left), self._fresh_n, nid))

    def at(self, i: int) -> NodeId:
        """Candidate i, 0 <= i < len(self)."""
        nb = len(self._base)
        return self._base[i] if i < nb else self._extra[i - nb]

    def next(self) -> NodeId | None:
        """The next member of this round, or None when the round is over."""
        fresh = self._fresh
        if fresh and (fresh[0][0] <= self._pos or self._pos >= self._m):
            return heapq.heappop(fresh)[2]
        p, m = self._pos, self._m
        if p >= m:
            return None
        assert self._rng is not None
        self._pos = p + 1
        moved = self._moved
        here = moved.pop(p, p)            # the candidate now at position p
        j = p + self._rng.randrange(m - p)
        if j == p:
            return self.at(here)
        chosen = moved.get(j, j)
        moved[j] = here
        return self.at(chosen)

    def new_round(self, rng: random.Random, keep: object) -> None:
        """Prune `extra` to the members `keep(nid)` accepts, and start the next permutation."""
        assert callable(keep)
        seen: set[NodeId] = set()
        kept: list[NodeId] = []
        for nid in self._extra:
            if nid not in seen and keep(nid):
                kept.append(nid)
                seen.add(nid)
        self._extra = kept
        self._fresh.clear()
        self._m = len(self._base) + len(kept)
        self._pos = 0
        self._moved = {}
        self._rng = rng
