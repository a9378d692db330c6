"""Standbys: what a restart needs, held by k other hosts before it is needed.

Host side (`Replication`, one per keep it runs), per standby link:

    ATTESTING --fresh evidence satisfies the signed policy--> SHIPPING
    SHIPPING  --replicate + package acked-->                  READY
    READY     --checkpoint n acked-->                         READY (acked_seq = n)
    any       --evidence fails, dead, silent past timeout-->  FAILED (dropped, replaced)

The package key is only ever re-sealed to a standby after its evidence,
bound to a nonce the host chose, satisfied the deployment's policy; only
READY standbys are listed in the keep's location record, so only they can
be chosen as successor. A checkpoint is taken every `checkpoint_s` and sent
to every READY standby; `last_checkpoint` is the newest one at least one
standby acknowledged (what a crash can fall back to).

Standby side (`Holdings`): what this member holds for others' keeps, with
the epoch rule: nothing older than the best known epoch is stored, and only
the host named by the best location record (or, before any record, the
sender of the replicate) may feed a keep.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..attestation.policy import Policy
from ..channel import evidence_report_data
from .effects import AttestStandby, Effect, Send, SendCheckpoint, SendReplicate, StoreStandby
from .location import LocationTable
from .messages import Ack, Replicate, Transfer
from .settings import MigrationSettings
from .successor import rank
from .transfer import Complete, Reassembler
from .triggers import Attested, MemberView, trust_failure

NodeId = bytes
FRESH_EVIDENCE_S = 60.0
"""A standby's evidence must have been issued this recently (and bound to our nonce)."""
ACK_TIMEOUT_S = 15.0
"""A standby silent this long on an outstanding step is dropped and replaced."""
MAX_HELD = 10_000
"""Bound on keeps one member holds as a standby."""


class LinkState(enum.Enum):
    ATTESTING = "attesting"
    SHIPPING = "shipping"
    READY = "ready"
    FAILED = "failed"


@dataclass
class StandbyLink:
    node: NodeId
    state: LinkState
    nonce: bytes
    since: float
    acked_seq: int = 0
    outstanding: set[str] = field(default_factory=set)  # "replicate", "package", "checkpoint"
    waiting_since: float | None = None
    failure: str = ""


# The highest held seq a standby may make a restarted host number on from: a checkpoint a
# second for 285 million years, and far below the wire's u63 (a standby claiming more is
# ignored rather than pushing the host's numbering off the wire).
MAX_RESUMED_SEQ = 1 << 53


class Replication:
    """Host side: keep `keep` (at `epoch`) replicated to `settings.standbys` standbys."""

    def __init__(self, keep: str, epoch: int, own_id: NodeId, policy: Policy,
                 settings: MigrationSettings, now: float, *, seq: int = 0,
                 ack_timeout_s: float = ACK_TIMEOUT_S) -> None:
        self.keep = keep
        self.epoch = epoch
        self.own_id = own_id
        self.policy = policy
        self.settings = settings
        self.ack_timeout_s = ack_timeout_s
        self.links: dict[NodeId, StandbyLink] = {}
        self.seq = seq  # newest checkpoint taken here or restored (0: none; they start at 1)
        self.taken_at: dict[int, float] = {}
        self.next_checkpoint = now + settings.checkpoint_s
        self.checkpoint_pending = False
        self.requested = seq  # highest seq asked of the driver
        # newest checkpoint of this keep at this epoch a standby holds from an earlier run
        # of this host (it restarted without its numbering): what its state descends from
        self.resumed_seq = 0
        self.failed: dict[NodeId, str] = {}  # recently failed standbys, not retried at once

    # ------------------------------------------------------------ standbys

    def ready(self) -> tuple[NodeId, ...]:
        """READY standbys, best-ranked first (what the location record lists)."""
        nodes = [n for n, lk in self.links.items() if lk.state is LinkState.READY]
        return tuple(rank(self.keep, nodes))

    def last_checkpoint(self) -> tuple[int, float]:
        """Newest checkpoint held by at least one READY standby: (seq, taken_at)."""
        best = max((lk.acked_seq for lk in self.links.values()
                    if lk.state is LinkState.READY), default=0)
        return best, self.taken_at.get(best, 0.0)

    def reconcile(self, view: MemberView, candidates: Iterable[NodeId], now: float,
                  rng: random.Random) -> list[Effect]:
        """Drop standbys that died or lost trust; start attesting replacements."""
        for n, lk in list(self.links.items()):
            why = None if view.is_live(n) else "declared dead or left"
            why = why or trust_failure(self.policy, view, n, now)
            if why is not None:
                self._fail(lk, why)
        for n, lk in list(self.links.items()):
            if lk.state is LinkState.FAILED:
                del self.links[n]
        want = self.settings.standbys - len(self.links)
        if want <= 0:
            return []
        pool = [n for n in candidates if n != self.own_id and n not in self.links
                and n not in self.failed and view.is_live(n)
                and trust_failure(self.policy, view, n, now) is None]
        out: list[Effect] = []
        for n in rank(self.keep, pool)[:want]:
            nonce = rng.randbytes(32)
            self.links[n] = StandbyLink(n, LinkState.ATTESTING, nonce, now, waiting_since=now)
            out.append(AttestStandby(self.keep, n, nonce))
        return out

    def attested(self, node: NodeId, nonce: bytes, att: Attested | None,
                 now: float) -> list[Effect]:
        """Fresh evidence for a candidate arrived (None: it could not be verified)."""
        lk = self.links.get(node)
        if lk is None or lk.state is not LinkState.ATTESTING or lk.nonce != nonce:
            return []
        why = self._fresh_failure(node, nonce, att, now)
        if why is not None:
            self._fail(lk, why)
            return []
        lk.state = LinkState.SHIPPING
        lk.outstanding = {"replicate", "package"}
        lk.waiting_since = now
        return [SendReplicate(self.keep, node, self.epoch)]

    def _fresh_failure(self, node: NodeId, nonce: bytes, att: Attested | None,
                       now: float) -> str | None:
        if att is None:
            return "fresh evidence did not verify"
        if not now - FRESH_EVIDENCE_S <= att.issued_at <= now + FRESH_EVIDENCE_S:
            return "evidence is not fresh"
        if att.evidence.report_data != evidence_report_data(node, int(att.issued_at), nonce):
            return "evidence is not bound to this member and our nonce"

        class _One:
            def is_live(self, n: NodeId) -> bool:
                return True

            def attested(self, n: NodeId) -> Attested | None:
                return att

        return trust_failure(self.policy, _One(), node, now)

    def acked(self, node: NodeId, ack: Ack, now: float) -> list[Effect]:
        lk = self.links.get(node)
        if lk is None or ack.keep != self.keep or ack.epoch != self.epoch:
            return []
        if not ack.ok:
            self._fail(lk, f"standby refused {ack.kind}: {ack.reason}")
            return []
        if ack.kind == "checkpoint":
            if lk.state is LinkState.READY and ack.seq > lk.acked_seq:
                lk.acked_seq = ack.seq
                lk.outstanding.discard("checkpoint")
                lk.waiting_since = None
            return []
        if lk.state is not LinkState.SHIPPING:
            return []
        if ack.kind == "replicate" and self.requested < ack.seq <= MAX_RESUMED_SEQ:
            # The standby holds checkpoint `ack.seq` of this keep at this epoch from an
            # earlier run of this host (it restarted): number the next ones above it.
            self.requested = ack.seq
            self.resumed_seq = max(self.resumed_seq, ack.seq)
        lk.outstanding.discard(ack.kind)
        if lk.outstanding:
            return []
        lk.state = LinkState.READY
        lk.waiting_since = None
        if self.seq > 0:  # catch the new standby up with the newest checkpoint
            lk.outstanding.add("checkpoint")
            lk.waiting_since = now
            return [SendCheckpoint(self.keep, node, self.epoch, self.seq)]
        return []

    def _fail(self, lk: StandbyLink, why: str) -> None:
        lk.state = LinkState.FAILED
        lk.failure = why
        self.failed[lk.node] = why

    # ---------------------------------------------------------- checkpoints

    def newest_seq(self) -> int:
        """The newest checkpoint this copy's state is known to descend from."""
        return max(self.seq, self.resumed_seq)

    def request_seq(self) -> int:
        """The seq for the next TakeCheckpoint (strictly increasing per keep)."""
        self.requested = max(self.requested, self.seq) + 1
        return self.requested

    def checkpoint_due(self, now: float) -> bool:
        """Time for the next periodic checkpoint, and none still in flight: each one is
        a whole snapshot, so a slow standby gets the newest, never a growing queue."""
        in_flight = any("checkpoint" in lk.outstanding for lk in self.links.values()
                        if lk.state is LinkState.READY)
        return (not self.checkpoint_pending and not in_flight and now >= self.next_checkpoint
                and bool(self.ready()))

    def checkpoint_taken(self, seq: int, taken_at: float, now: float) -> list[Effect]:
        """The driver serialised checkpoint `seq`; ship it to every READY standby."""
        self.checkpoint_pending = False
        if seq <= self.seq:
            return []  # an older checkpoint finishing after a newer one: superseded
        self.seq = seq
        self.taken_at[seq] = taken_at
        for old in [s for s in self.taken_at if s < seq - 8]:
            del self.taken_at[old]
        self.next_checkpoint = now + self.settings.checkpoint_s
        out: list[Effect] = []
        for n in self.ready():
            lk = self.links[n]
            lk.outstanding.add("checkpoint")
            if lk.waiting_since is None:
                lk.waiting_since = now
            out.append(SendCheckpoint(self.keep, n, self.epoch, seq))
        return out

    def expire(self, now: float) -> bool:
        """Fail links silent past the timeout; True when any failed (reconcile next)."""
        changed = False
        for lk in self.links.values():
            if (lk.state is not LinkState.FAILED and lk.waiting_since is not None
                    and now >= lk.waiting_since + self.ack_timeout_s):
                self._fail(lk, f"no answer for {self.ack_timeout_s:g} s")
                changed = True
        return changed

    def forget_failures(self) -> None:
        """Failed candidates become eligible again (called once per checkpoint period)."""
        self.failed.clear()

    def deadline(self, *, hold: bool = False) -> float:
        """The next time this replication needs `handle_timer`. A checkpoint that waits
        for an event (one still in flight or being taken, or `hold`: a hand-over is
        under way) is not a deadline: reporting a past time would make drivers spin."""
        waits = [lk.waiting_since + self.ack_timeout_s for lk in self.links.values()
                 if lk.waiting_since is not None and lk.state is not LinkState.FAILED]
        in_flight = any("checkpoint" in lk.outstanding for lk in self.links.values()
                        if lk.state is LinkState.READY)
        if not (hold or self.checkpoint_pending or in_flight):
            waits.append(self.next_checkpoint)
        return min(waits, default=math.inf)


# ------------------------------------------------------------------ standby side


@dataclass
class Held:
    """What this member holds as a standby for one keep."""

    keep: str
    host: NodeId
    epoch: int
    deployment: bytes
    package_size: int
    package_digest: bytes
    package_ok: bool = False
    seq: int = 0  # newest checkpoint held (0: none yet, a restart begins empty)
    taken_at: float = 0.0


class Holdings:
    """Standby side: accepts replicate/transfer from a keep's current host only."""

    def __init__(self, own_id: NodeId, max_held: int = MAX_HELD) -> None:
        self.own_id = own_id
        self.max_held = max_held
        self.held: dict[str, Held] = {}
        self.reassembler = Reassembler()

    def _refusal(self, sender: NodeId, keep: str, epoch: int,
                 locations: LocationTable) -> str | None:
        best = locations.get(keep)
        if best is not None and (epoch < best.epoch or
                                 (epoch == best.epoch and sender != best.host)):
            return f"stale: keep runs at epoch {best.epoch}"
        if best is not None and epoch > best.epoch:
            # A newer epoch is proven by its host's signed record, which a host sends
            # ahead of its replicate on the same lane; an unproven number would let any
            # member replace the replica of the keep's real host (a crash then finds none).
            return f"no record of epoch {epoch}: keep runs at epoch {best.epoch}"
        h = self.held.get(keep)
        if h is not None and epoch < h.epoch:
            return f"stale: holding epoch {h.epoch}"
        if sender == self.own_id:
            return "a host is not its own standby"
        return None

    def on_replicate(self, sender: NodeId, msg: Replicate,
                     locations: LocationTable) -> list[Effect]:
        why = self._refusal(sender, msg.keep, msg.epoch, locations)
        if why is None and msg.keep not in self.held and len(self.held) >= self.max_held:
            why = "standby full"
        if why is None:
            why = _not_this_keeps(msg)
        if why is not None:
            return [Send(sender, Ack(keep=msg.keep, epoch=msg.epoch, kind="replicate", seq=0,
                                     ok=False, reason=why))]
        old = self.held.get(msg.keep)
        keep_ckpt = old is not None and old.host == sender and old.epoch == msg.epoch
        held_seq = old.seq if keep_ckpt and old else 0
        self.held[msg.keep] = Held(msg.keep, sender, msg.epoch, msg.deployment,
                                   msg.package_size, msg.package_digest, seq=held_seq,
                                   taken_at=old.taken_at if keep_ckpt and old else 0.0)
        # The seq of the checkpoint still held from this host at this epoch: a host that
        # restarted numbers from 1 again, and would see every checkpoint refused as not
        # newer than this one; told it, it numbers on above it.
        # StoreStandby("deployment").seq: the checkpoint kept with it (0: none, the driver
        # drops what it stored for this keep before; else it keeps that checkpoint).
        held = self.held[msg.keep]
        return [StoreStandby(msg.keep, msg.epoch, "deployment", held_seq, held.taken_at,
                             msg.deployment),
                Send(sender, Ack(keep=msg.keep, epoch=msg.epoch, kind="replicate",
                                 seq=held_seq, ok=True, reason=""))]

    def on_transfer(self, sender: NodeId, t: Transfer,
                    locations: LocationTable) -> list[Effect]:
        h = self.held.get(t.keep)
        why = self._refusal(sender, t.keep, t.epoch, locations)
        if why is None and (h is None or h.host != sender or h.epoch != t.epoch):
            why = "no replicate from this host at this epoch"
        if why is None and h is not None and t.kind == "checkpoint" and t.seq <= h.seq:
            why = f"checkpoint {t.seq} not newer than {h.seq}"
        if why is None and h is not None and t.kind == "package" and \
                (t.total != h.package_size or t.digest != h.package_digest):
            why = "package does not match the replicate"
        if why is not None:
            self.reassembler.forget(sender, t.keep, t.kind)  # nothing of it is stored
            if t.offset != 0:
                return []  # refuse once per object, at its first chunk
            return [Send(sender, Ack(keep=t.keep, epoch=t.epoch, kind=t.kind, seq=t.seq,
                                     ok=False, reason=why))]
        done = self.reassembler.feed(sender, t)
        if done is None:
            return []
        return self._complete(sender, done)

    def _complete(self, sender: NodeId, c: Complete) -> list[Effect]:
        h = self.held[c.keep]
        if c.kind == "package":
            h.package_ok = True
        else:
            h.seq, h.taken_at = c.seq, c.taken_at
        return [StoreStandby(c.keep, c.epoch, c.kind, c.seq, c.taken_at, c.data),
                Send(sender, Ack(keep=c.keep, epoch=c.epoch, kind=c.kind, seq=c.seq,
                                 ok=True, reason=""))]

    def restorable(self, keep: str) -> Held | None:
        """Held state a restart can use: deployment and package (and the newest checkpoint,
        if any arrived: seq 0 restarts with empty state)."""
        h = self.held.get(keep)
        if h is None or not h.package_ok:
            return None
        return h

    def drop(self, keep: str) -> None:
        self.held.pop(keep, None)


def _not_this_keeps(msg: Replicate) -> str | None:
    """Why `msg.deployment` cannot be the deployment of `msg.keep` (None: it is). Why here
    and not only at restore: until a takeover, the held deployment's policy and memory
    are what this standby reserves and appraises for the keep; a replicate pairing one
    keep's name with another's deployment must not sit in its place."""
    from ..deployment import Deployment, deployment_id
    from ..errors import ProtocolError
    from ..wire import decode_payload

    try:
        dep = decode_payload(msg.deployment, len(msg.deployment), (Deployment,))
    except ProtocolError:
        return "deployment undecodable"
    if not isinstance(dep, Deployment) or deployment_id(dep) != msg.keep:
        return "deployment is not this keep's"
    return None
