"""Planned hand-over of one keep (drain, trust loss): nothing lost, never two answers.

Old host, per keep:

    WAIT_STANDBY --a READY, eligible standby exists--> CHECKPOINT (keep paused: calls wait)
    CHECKPOINT   --final checkpoint taken-->           SHIP (sent to the successor)
    SHIP         --successor acked that seq-->         HANDOVER (migrate.handover, epoch+1)
    HANDOVER     --handover_done ok, or a location at a higher epoch--> DONE (stop, "moved")
    HANDOVER     --handover_done refused-->            SHIP to the next successor
    WAIT_STANDBY/CHECKPOINT/SHIP --deadline-->         FAILED (resume: the old copy serves)
    HANDOVER     --successor declared dead-->          FAILED (resume at epoch+2, see below)

The keep is paused before the final checkpoint and never resumed once a
hand-over was sent unless the successor refused it or died: a successor
that may have started owns epoch+1, so the old host resumes at epoch+2,
which fences any copy the dead successor may have left. Calls that waited
are answered with the new location (the client retries there).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .effects import Effect, PauseKeep, Send, SendCheckpoint, TakeCheckpoint
from .messages import Handover
from .successor import choose_successor

NodeId = bytes
HANDOVER_DEADLINE_S = 30.0
"""How long a hand-over may take before it is abandoned (the old copy resumes)."""
RESEND_S = 2.0
"""A `migrate.handover` without an answer is resent this often (idempotent)."""


class Step(enum.Enum):
    WAIT_STANDBY = "wait_standby"
    CHECKPOINT = "checkpoint"
    SHIP = "ship"
    HANDOVER = "handover"
    DONE = "done"
    FAILED = "failed"


@dataclass
class Outgoing:
    keep: str
    epoch: int
    trigger: str
    started: float
    step: Step = Step.WAIT_STANDBY
    successor: NodeId | None = None
    seq: int = -1
    tried: set[NodeId] = field(default_factory=set)
    sent_at: float = 0.0
    reason: str = ""
    paused: bool = False
    resume_epoch: int | None = None
    final_seq: int = 0

    @property
    def deadline(self) -> float:
        return self.started + HANDOVER_DEADLINE_S

    def finished(self) -> bool:
        return self.step in (Step.DONE, Step.FAILED)

    def advance(self, ready: list[NodeId], now: float, next_seq: int = 0) -> list[Effect]:
        """Move forward from WAIT_STANDBY (and re-pick after a refusal)."""
        if self.step is not Step.WAIT_STANDBY:
            return []
        nxt = choose_successor(self.keep, [n for n in ready if n not in self.tried])
        if nxt is None:
            return []
        self.successor = nxt
        self.tried.add(nxt)
        if self.seq < 0:
            self.final_seq = next_seq
            self.step = Step.CHECKPOINT
            self.paused = True
            return [PauseKeep(self.keep), TakeCheckpoint(self.keep, next_seq, final=True)]
        self.step = Step.SHIP
        return [SendCheckpoint(self.keep, nxt, self.epoch, self.seq)]

    def checkpoint_taken(self, seq: int) -> None:
        if self.step is Step.CHECKPOINT and seq == self.final_seq:
            self.seq = seq
            self.step = Step.SHIP  # Replication ships it to every READY standby

    def acked(self, node: NodeId, seq: int, now: float) -> list[Effect]:
        if self.step is not Step.SHIP or node != self.successor or seq < self.seq:
            return []
        self.step = Step.HANDOVER
        return [self._handover(now)]

    def _handover(self, now: float) -> Send:
        assert self.successor is not None
        self.sent_at = now
        return Send(self.successor, Handover(keep=self.keep, epoch=self.epoch + 1,
                                             from_epoch=self.epoch, seq=self.seq,
                                             trigger=self.trigger))

    def answered(self, node: NodeId, epoch: int, ok: bool, reason: str,
                 ready: list[NodeId], now: float) -> list[Effect]:
        if self.step is not Step.HANDOVER or node != self.successor or epoch != self.epoch + 1:
            return []
        if ok:
            self.step = Step.DONE
            return []
        self.reason = f"successor refused: {reason}"
        self.step = Step.WAIT_STANDBY
        return self.advance(ready, now)

    def located(self, host: NodeId, epoch: int) -> bool:
        """A location at a higher epoch means someone took over; True when that ends us.
        It is our hand-over (DONE) only once the hand-over was sent: before, even the
        chosen successor started on its own, from a checkpoint older than our final
        one, and this copy's later writes are fenced aside, not silently dropped."""
        if self.finished() or epoch <= self.epoch:
            return False
        ours = host == self.successor and self.step is Step.HANDOVER
        self.step = Step.DONE if ours else Step.FAILED
        if self.step is Step.FAILED:
            self.reason = "superseded by another host"
        return True

    def successor_died(self) -> None:
        if self.step in (Step.SHIP, Step.CHECKPOINT):
            self.step = Step.WAIT_STANDBY
        elif self.step is Step.HANDOVER:
            self.step = Step.FAILED
            self.reason = "successor died during the hand-over"
            self.resume_epoch = self.epoch + 2

    def tick(self, now: float) -> list[Effect]:
        if self.finished():
            return []
        if self.step is Step.HANDOVER:
            if now >= self.started + HANDOVER_DEADLINE_S * 4:
                # Unknown outcome for a very long time: fence whatever the successor
                # may run and serve again here (the successor never answered).
                self.step = Step.FAILED
                self.reason = "successor never answered the hand-over"
                self.resume_epoch = self.epoch + 2
                return []
            if now >= self.sent_at + RESEND_S:
                return [self._handover(now)]
            return []
        if now >= self.deadline:
            self.step = Step.FAILED
            self.reason = self.reason or (
                "no eligible standby" if self.successor is None else "hand-over timed out")
        return []

    def next_deadline(self) -> float | None:
        if self.finished():
            return None
        if self.step is Step.HANDOVER:
            return min(self.sent_at + RESEND_S, self.started + HANDOVER_DEADLINE_S * 4)
        return self.deadline
