"""Lifeguard local health awareness (memberlist awareness.go).

Why: a node whose own CPU or network is starved misses acks and would accuse
healthy peers. Instead, every missed ack/nack raises its own score, and a
higher score stretches its probe interval and timeout, so it accuses less and
gives replies more time. Successful probes lower the score again.
"""

from __future__ import annotations


class Awareness:
    __slots__ = ("max", "score")

    def __init__(self, max_multiplier: int) -> None:
        self.max = max_multiplier
        self.score = 0

    def apply_delta(self, delta: int) -> None:
        self.score = min(max(self.score + delta, 0), self.max - 1)

    def scale(self, timeout: float) -> float:
        return timeout * (self.score + 1)
