"""Typed effects and events of the migration engine.

Why data, not callbacks: the engine decides, the agent's trio driver and the
simulator's driver only carry out (send bytes, run a checkpoint, start or
stop a keep) and report results back with `now`. Each effect names exactly
what to do; each event is something an operator or owner sees (`status`
events, the agent log).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..wire import Message

NodeId = bytes


# ----------------------------------------------------------------- effects


@dataclass(frozen=True)
class Send:
    """Send `message` reliably to member `to` (a stream on an attested session)."""

    to: NodeId
    message: Message


@dataclass(frozen=True)
class Gossip:
    """Disseminate an encoded, signed `migrate.location` (piggyback on membership)."""

    record: bytes


@dataclass(frozen=True)
class AttestStandby:
    """Get fresh evidence from `node` bound to `nonce`; answer with `standby_attested`."""

    keep: str
    node: NodeId
    nonce: bytes


@dataclass(frozen=True)
class SendReplicate:
    """Send `migrate.replicate`, then the keep's package re-sealed to `node`'s attested
    identity key (`KeepManager.sealed_for`) as a `package` transfer."""

    keep: str
    node: NodeId
    epoch: int


@dataclass(frozen=True)
class TakeCheckpoint:
    """Serialise the keep's durable state (encrypted under the deployment key);
    answer with `checkpoint_taken(keep, seq, ...)`. `final` comes after PauseKeep (a
    hand-over): nothing may change the state between it and the stop."""

    keep: str
    seq: int
    final: bool


@dataclass(frozen=True)
class SendCheckpoint:
    """Send checkpoint `seq` of `keep` to `node` as a `checkpoint` transfer."""

    keep: str
    node: NodeId
    epoch: int
    seq: int


@dataclass(frozen=True)
class StoreStandby:
    """Persist what a standby received (deployment/key, package or checkpoint).

    For `kind == "deployment"` (a replicate) `seq` is the checkpoint the standby keeps
    from before: a host that restarted re-replicates at the same epoch and numbers on
    above it (specs/migration.md §4), so the driver keeps that checkpoint; 0: drop
    every package and checkpoint held for the keep."""

    keep: str
    epoch: int
    kind: str
    seq: int
    taken_at: float
    data: bytes


@dataclass(frozen=True)
class DropStandby:
    """This member no longer holds anything for `keep` as a standby (the keep moved on,
    stopped, took over here, or the hold was refused): delete what StoreStandby stored
    for it. Why: the engine forgot the holding, but its deployment, sealed package and
    checkpoint stayed on disk for every keep this member ever stood by for."""

    keep: str


@dataclass(frozen=True)
class StartFromCheckpoint:
    """Restore the latest held checkpoint (`seq`; 0: none, start empty) of `keep` and run
    it at `epoch`; answer with `keep_started`. The driver keeps those bytes as the
    keep's checkpoint `seq` (they may be sent to its new standbys)."""

    keep: str
    epoch: int
    seq: int


@dataclass(frozen=True)
class PauseKeep:
    """Stop serving calls (they wait in the driver) ahead of a final checkpoint."""

    keep: str


@dataclass(frozen=True)
class ResumeKeep:
    """A hand-over failed before the successor took over: serve again."""

    keep: str


@dataclass(frozen=True)
class StopKeep:
    """Stop the local copy. `reason` is "moved" (drain/trust, state handed over) or
    "fenced" (a higher epoch runs elsewhere; keep the local state aside, unmerged).
    Waiting calls are answered with the new location so clients retry there."""

    keep: str
    epoch: int
    reason: str
    successor: NodeId | None


Effect = (Send | Gossip | AttestStandby | SendReplicate | TakeCheckpoint | SendCheckpoint
          | StoreStandby | DropStandby | StartFromCheckpoint | PauseKeep | ResumeKeep
          | StopKeep)


# ------------------------------------------------------------------ events


@dataclass(frozen=True)
class KeepMoved:
    """A keep now runs on `to` at `epoch` (seen by its new host or the old one)."""

    keep: str
    from_host: NodeId | None
    to: NodeId
    epoch: int
    trigger: str  # "dead" | "drain" | "trust" | "fenced"


@dataclass(frozen=True)
class KeepFenced:
    """This member's copy of `keep` lost to a superseding record; its state since the
    fork is kept aside (not merged) and reported to the owner."""

    keep: str
    epoch: int
    winner: NodeId
    winner_epoch: int
    checkpoint_seq: int


@dataclass(frozen=True)
class KeepOrphaned:
    """`keep`'s host is gone and no eligible standby holds it: it cannot run until
    its host or a standby returns."""

    keep: str
    host: NodeId
    reason: str


@dataclass(frozen=True)
class StandbyChanged:
    keep: str
    standbys: tuple[NodeId, ...]


@dataclass(frozen=True)
class DrainFinished:
    """Every keep hosted here at the drain's start moved (`failed` lists those that did not)."""

    moved: tuple[KeepMoved, ...]
    failed: tuple[tuple[str, str], ...]


Event = KeepMoved | KeepFenced | KeepOrphaned | StandbyChanged | DrainFinished


# ------------------------------------------------------------- completions
# Results the driver reports back (Migration's methods of the same names take them
# one by one; MeshNode's `complete` passes these typed records).


@dataclass(frozen=True)
class StandbyAttested:
    """Fresh evidence of a standby candidate, verified by the driver (None: it failed)."""

    keep: str
    node: NodeId
    nonce: bytes
    evidence: object | None  # triggers.Attested (kept untyped here to avoid a cycle)


@dataclass(frozen=True)
class CheckpointTaken:
    keep: str
    seq: int
    taken_at: float
    final: bool


@dataclass(frozen=True)
class CheckpointFailed:
    keep: str
    reason: str


@dataclass(frozen=True)
class KeepRestored:
    """Result of StartFromCheckpoint: the deployment (decoded) when it runs."""

    keep: str
    epoch: int
    deployment: object | None  # protocol.deployment.Deployment
    ok: bool
    reason: str


@dataclass(frozen=True)
class MemberEvidence:
    """The driver verified `node`'s evidence (None: failed, expired or revoked)."""

    node: NodeId
    evidence: object | None  # triggers.Attested


@dataclass(frozen=True)
class OwnEvidence:
    """This agent re-verified its own evidence (a TCB change shows up here)."""

    evidence: object | None  # triggers.Attested


@dataclass(frozen=True)
class KeepHosted:
    """A keep runs here now that migration did not start (placement, owner deploy,
    restart): replicate it. `deployment` is the decoded signed deployment."""

    deployment: object
    epoch: int


@dataclass(frozen=True)
class KeepEnded:
    """A keep stopped here outside migration: by its owner (lost=False) or not."""

    keep: str
    lost: bool


@dataclass(frozen=True)
class DrainAll:
    """Command: hand every keep over (placement separately stops taking keeps)."""


@dataclass(frozen=True)
class MoveKeep:
    """Command: hand one keep over (`trigger` "drain" or "trust")."""

    keep: str
    trigger: str


Completion = (StandbyAttested | CheckpointTaken | CheckpointFailed | KeepRestored
              | MemberEvidence | OwnEvidence | KeepHosted | KeepEnded)
