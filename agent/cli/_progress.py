"""Progress lines on stderr for long commands (`simulate`, `sweep`).

Why only on a terminal: a progress line is for a person watching; when stderr
is piped or `--json` asks for a machine-readable document, carriage-return
redraws would corrupt logs, so `enabled()` is false there and nothing is drawn.
"""

from __future__ import annotations

import sys
import time
from typing import Any

_REDRAW_S = 0.25


def enabled(json_output: bool) -> bool:
    return not json_output and sys.stderr.isatty()


def _clock(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class SimProgress:
    """`t=… / total s  pct  events/s  ETA` for one simulation.

    The engine calls it with the simulated time and, through attach(), lets it
    read its event counter; the ETA assumes the remaining simulated time costs
    what the elapsed part did.
    """

    def __init__(self, total_s: float) -> None:
        self.total = total_s
        self.engine: Any = None
        self.t0 = time.perf_counter()
        self.last_draw = 0.0

    def attach(self, engine: Any) -> None:
        self.engine = engine
        self.t0 = time.perf_counter()

    def __call__(self, now: float) -> None:
        wall = time.perf_counter()
        if wall - self.last_draw < _REDRAW_S:
            return
        self.last_draw = wall
        elapsed = wall - self.t0
        frac = min(1.0, now / self.total) if self.total > 0 else 1.0
        events = int(getattr(self.engine, "steps", 0))
        rate = events / elapsed if elapsed > 0 else 0.0
        eta = elapsed * (1.0 - frac) / frac if frac > 0 else None
        sys.stderr.write(f"\rsimulating t={now:9.1f}/{self.total:g}s {100 * frac:5.1f}%  "
                         f"{rate:9,.0f} events/s  ETA {_clock(eta)} ")
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


class SweepProgress:
    """`runs done/total  events/s  ETA` for a sweep (ETA from the mean run so far)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.last_draw = 0.0

    def __call__(self, done: int, total: int, events: int) -> None:
        wall = time.perf_counter()
        if wall - self.last_draw < _REDRAW_S and done < total:
            return
        self.last_draw = wall
        elapsed = wall - self.t0
        rate = events / elapsed if elapsed > 0 else 0.0
        eta = elapsed * (total - done) / done if done else None
        sys.stderr.write(f"\rsweep {done}/{total} runs  {rate:9,.0f} events/s  "
                         f"ETA {_clock(eta)} ")
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()
