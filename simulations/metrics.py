"""Measurements taken from the membership events the real protocol emits.

Why from events: a metric must describe what agents actually learned, not what
the simulator did to them. Each crash, update and false declaration is matched
against the events observers emit (``MemberEvent(kind, node_id, incarnation,
at)``), so a bug in the protocol shows up as a bad number, not a hidden one.

Memory stays O(agents) per tracked crash/update (a set of observer indices),
and O(agents + small sets) for the membership view counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

VIEW_DOWN_KINDS = frozenset({"dead", "left", "untrusted"})
VIEW_UP_KINDS = frozenset({"alive", "update"})


@dataclass
class CrashTrack:
    subject: int
    at: float
    first_suspect: float | None = None
    first_dead: float | None = None
    dead_everywhere: float | None = None
    observers: set[int] = field(default_factory=set)
    closed: bool = False


@dataclass
class UpdateTrack:
    subject: int
    at: float
    incarnation: int
    target: int
    eligible: bytearray = field(default_factory=bytearray)
    learned: set[int] = field(default_factory=set)
    times: list[float] = field(default_factory=list)
    kind: str = "update"
    lost: int = 0

    @property
    def effective_target(self) -> int:
        """Agents up at injection that did not crash or leave before learning it."""
        return self.target - self.lost


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]); None for no data rather than an invented 0."""
    if not values:
        return None
    xs = sorted(values)
    k = max(0, min(len(xs) - 1, math.ceil(q / 100.0 * len(xs)) - 1))
    return xs[k]


def serf_model(n: int, fanout: int, rounds: float) -> float:
    """Serf's analytic dissemination model: agents informed after `rounds` gossip intervals.

    n(x) = N / (1 + (N+1) e^(-c N x)) with c = fanout / N * 0.5.
    """
    c = fanout / n * 0.5
    return n / (1.0 + (n + 1) * math.exp(-c * n * rounds))


def serf_rounds_to(n: int, fanout: int, fraction: float) -> float:
    """Inverse of serf_model: gossip intervals until `fraction` of N is informed."""
    k = fanout * 0.5
    return math.log((n + 1) / (1.0 / fraction - 1.0)) / k


SWIM_FIRST_DETECTION_PERIODS = math.e / (math.e - 1.0)


class Metrics:
    """Collects per-event measurements; `summary()` turns them into the report's numbers."""

    def __init__(self, n_hint: int) -> None:
        self.crashes: dict[int, CrashTrack] = {}
        self.closed_crashes: list[CrashTrack] = []
        self.updates: dict[int, UpdateTrack] = {}
        self.closed_updates: list[UpdateTrack] = []
        self.false_positive_ids: set[int] = set()
        self.false_positive_events = 0
        self.partition_dead = 0
        self.paused_dead = 0
        self.restart_dead = 0
        self.untrusted_dead = 0
        self.event_counts: dict[str, int] = {}
        self.view_known: list[int] = [0] * n_hint
        self.view_down: list[set[int] | None] = [None] * n_hint
        self.view_samples: list[tuple[float, float, float, int]] = []
        self.marks: list[tuple[float, str]] = []
        self.attest_requests = 0
        self.attest_failures = 0

    def ensure(self, n: int) -> None:
        while len(self.view_known) < n:
            self.view_known.append(0)
            self.view_down.append(None)

    # ----------------------------------------------------------- inputs

    def crash(self, subject: int, now: float) -> None:
        old = self.crashes.pop(subject, None)
        if old is not None:
            old.closed = True
            self.closed_crashes.append(old)
        self.crashes[subject] = CrashTrack(subject, now)

    def revived(self, subject: int) -> None:
        """A crashed agent restarted: stop waiting for everyone to mark it dead."""
        track = self.crashes.pop(subject, None)
        if track is not None:
            track.closed = True
            self.closed_crashes.append(track)

    def update(self, subject: int, incarnation: int, now: float, eligible: bytearray,
               kind: str = "update") -> None:
        """Track an update; `eligible[i]` marks the observers expected to learn it (up now)."""
        old = self.updates.pop(subject, None)
        if old is not None:
            self.closed_updates.append(old)
        if subject < len(eligible):
            eligible[subject] = 0
        self.updates[subject] = UpdateTrack(subject, now, incarnation, sum(eligible),
                                            eligible=eligible, kind=kind)

    def departed(self, idx: int, now: float, live: Any) -> None:
        """An agent crashed, left or was cut off (its TEE failed): it no longer counts
        towards updates it had not learned, nor among the agents a crash waits on to be
        dead everywhere (which it may have been the last of)."""
        for track in self.updates.values():
            el = track.eligible
            if idx < len(el) and el[idx] and idx not in track.learned:
                el[idx] = 0
                track.lost += 1
        for crash in self.crashes.values():
            if crash.dead_everywhere is None and crash.observers:
                self._check_dead_everywhere(crash, now, live)

    @staticmethod
    def _check_dead_everywhere(track: CrashTrack, now: float, live: Any) -> None:
        """Dead everywhere: every agent expected to observe (up, trusted) has said `dead`."""
        if len(track.observers) >= live.n_expected_observers() and all(
                i in track.observers for i in live.expected_observers() if i != track.subject):
            track.dead_everywhere = now

    def attested(self, observer: int, trusted: bool) -> None:
        """`observer` asked the simulated verifier about a member (`trusted`: its verdict)."""
        self.attest_requests += 1
        if not trusted:
            self.attest_failures += 1

    def mark(self, now: float, label: str) -> None:
        self.marks.append((now, label))

    def on_event(self, observer: int, subject: int, kind: str, incarnation: int, now: float,
                 live: Any) -> None:
        """`live` answers world questions: up(i), excuse(obs, subj, now),
        expected_observers(), n_expected_observers()."""
        self.event_counts[kind] = self.event_counts.get(kind, 0) + 1
        if subject < 0 or subject == observer:
            return
        # membership view bookkeeping
        down = self.view_down[observer]
        if kind == "join":
            if down is not None and subject in down:
                down.discard(subject)
            else:
                self.view_known[observer] += 1
        elif kind in VIEW_UP_KINDS:
            if down is not None:
                down.discard(subject)
        elif kind in VIEW_DOWN_KINDS:
            if down is None:
                down = self.view_down[observer] = set()
            down.add(subject)

        track = self.crashes.get(subject)
        if track is not None:
            if kind == "suspect" and track.first_suspect is None:
                track.first_suspect = now
            elif kind == "dead":
                if track.first_dead is None:
                    track.first_dead = now
                if track.first_suspect is None:
                    track.first_suspect = now
                track.observers.add(observer)
                if track.dead_everywhere is None:
                    self._check_dead_everywhere(track, now, live)
        elif kind == "dead" and live.up(subject):
            excuse = live.excuse(observer, subject, now)
            if excuse == "partition":
                self.partition_dead += 1
            elif excuse == "pause":
                self.paused_dead += 1
            elif excuse == "restart":
                self.restart_dead += 1
            elif excuse == "untrusted":
                self.untrusted_dead += 1
            else:
                self.false_positive_ids.add(subject)
                self.false_positive_events += 1

        up = self.updates.get(subject)
        if up is not None and incarnation >= up.incarnation and kind not in VIEW_DOWN_KINDS \
                and observer < len(up.eligible) and up.eligible[observer] \
                and observer not in up.learned:
            up.learned.add(observer)
            up.times.append(now - up.at)

    def sample_view(self, now: float, up_indices: list[int]) -> None:
        if not up_indices:
            self.view_samples.append((now, 0.0, 0.0, 0))
            return
        sizes = []
        known = self.view_known
        downs = self.view_down
        for i in up_indices:
            d = downs[i]
            sizes.append(known[i] - (len(d) if d is not None else 0))
        self.view_samples.append((now, sum(sizes) / len(sizes), float(min(sizes)),
                                  len(up_indices)))

    # ---------------------------------------------------------- outputs

    def all_crashes(self) -> list[CrashTrack]:
        return self.closed_crashes + list(self.crashes.values())

    def all_updates(self) -> list[UpdateTrack]:
        return self.closed_updates + list(self.updates.values())

    @staticmethod
    def dissemination_time(track: UpdateTrack, fraction: float) -> float | None:
        target = track.effective_target
        need = math.ceil(fraction * target)
        if target <= 0:
            return None
        if len(track.times) < need:
            return None
        return sorted(track.times)[need - 1]

    def summary(self) -> dict[str, Any]:
        crashes = self.all_crashes()
        det = [c.first_suspect - c.at for c in crashes if c.first_suspect is not None]
        dead_all = [c.dead_everywhere - c.at for c in crashes if c.dead_everywhere is not None]
        ups = self.all_updates()
        diss = [self.dissemination_time(u, 0.999) for u in ups]
        diss_ok = [d for d in diss if d is not None]
        out: dict[str, Any] = {
            "dissemination_999_s": (max(diss_ok) if diss_ok and len(diss_ok) == len(diss)
                                    else None),
            "dissemination_999_per_update_s": diss,
            "dissemination_50_s": percentile(
                [d for u in ups if (d := self.dissemination_time(u, 0.5)) is not None], 50),
            "updates_tracked": len(ups),
            "updates_reached_999": len(diss_ok),
            "detection_s": None if not crashes else {
                "p50": percentile(det, 50), "p99": percentile(det, 99),
                "max": max(det) if det else None, "detected": len(det),
                "crashes": len(crashes)},
            "dead_everywhere_s": None if not crashes else {
                "p50": percentile(dead_all, 50), "max": max(dead_all) if dead_all else None,
                "complete": len(dead_all), "crashes": len(crashes)},
            "false_positives": len(self.false_positive_ids),
            "false_positive_declarations": self.false_positive_events,
            "dead_declared_across_partition": self.partition_dead,
            "dead_declared_while_paused": self.paused_dead,
            "dead_declared_after_restart": self.restart_dead,
            "dead_declared_untrusted": self.untrusted_dead,
            "event_counts": dict(sorted(self.event_counts.items())),
            "attest_requests": self.attest_requests,
            "attest_failures": self.attest_failures,
        }
        return out
