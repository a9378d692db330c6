"""Lifeguard dynamic suspicion timeout (memberlist suspicion.go).

Why dynamic: a long timeout gives a slow-but-alive member time to refute, but
delays detecting real failures. Starting at `max` and shrinking toward `min`
as *independent* members confirm the suspicion gets both: lone accusations
(often from an unhealthy accuser) wait long; corroborated ones end fast.
"""

from __future__ import annotations

import math

from .signing import NodeId


def remaining_suspicion_time(n: int, k: int, elapsed: float, lo: float, hi: float) -> float:
    """memberlist remainingSuspicionTime: log-scaled between hi (n=0) and lo (n=k)."""
    frac = math.log(n + 1.0) / math.log(k + 1.0) if k > 0 else 1.0
    raw = hi - frac * (hi - lo)
    timeout = math.floor(1000.0 * raw) / 1000.0
    timeout = max(timeout, lo)
    return timeout - elapsed


class Suspicion:
    """One open suspicion of one member; the owner keeps it in its timer heap."""

    __slots__ = ("start", "k", "lo", "hi", "confirmers", "deadline", "verifying", "answered",
                 "deferred", "dead_heard")

    def __init__(self, accuser: NodeId, k: int, lo: float, hi: float, now: float) -> None:
        self.start = now
        self.k = k
        self.lo = lo
        self.hi = hi
        self.confirmers: set[NodeId] = {accuser}
        self.deadline = now + (lo if k < 1 else hi)
        # keepmesh: an observer that never failed to reach the suspect itself probes it
        # once before declaring it dead (see specs/membership.md, "verification probe").
        self.verifying = False
        self.answered = False
        # Our own timers ran late when it expired: decided one period later, once.
        self.deferred = False
        # Another accuser's own suspicion expired (its signed "dead" reached us): we
        # need no verification probe of our own (specs/membership.md §6).
        self.dead_heard = False

    def full(self) -> bool:
        """k confirmations counted: no further accuser can shorten the timeout."""
        return len(self.confirmers) - 1 >= self.k

    def confirm(self, accuser: NodeId) -> bool:
        """Count an independent accuser; True if new (then the deadline moved earlier)."""
        if len(self.confirmers) - 1 >= self.k or accuser in self.confirmers:
            return False
        self.confirmers.add(accuser)
        n = len(self.confirmers) - 1
        self.deadline = self.start + remaining_suspicion_time(n, self.k, 0.0, self.lo, self.hi)
        return True
