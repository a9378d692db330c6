"""One process's share of a parallel simulation: which agents it runs, and its metric calls.

Why metric calls are recorded rather than made: a metric is a function of the
order of events in the whole mesh (the first suspicion of a crash, the moment
every live member has declared it dead), but each process sees only its own
agents' events. So every process stamps each call with the place it would have
in a one-process run and worker 0 replays them all, window by window, in stamp
order, into the one real `Metrics` (simulations/parallel.py).

The stamp is ``(time, key, world_call, observer + 1, hook_call)``:

- `time` and `key` are the engine entry being run (engine.py: unique, and the
  same entry in every process);
- world code (a scheduled action: a crash, an update, a sample) runs in every
  process, so its calls are counted in every process, `world_call` numbering
  them within the entry; only the process responsible records each (worker 0 for
  the world's own bookkeeping, the owner of the agent for an update, whose new
  incarnation only its owner knows);
- an agent's event hook runs only in the process that owns the agent; its calls
  carry the world calls made so far in the entry, the agent, and their own count,
  which sorts them after the world call they followed, as one process would.

World questions a metric asks (who is up, is it excused) are answered by worker 0
when it replays a window. A window holds either one world entry or agent entries
only (parallel.py), so the world it answers from is the one those events saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .metrics import Metrics

Stamp = tuple[float, int, int, int, int]
Call = tuple[Stamp, str, tuple[Any, ...]]


class _Clock(Protocol):
    now: float
    key: int


@dataclass(frozen=True)
class Shard:
    """Process `index` of `count` runs the agents whose index is `index` mod `count`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count}")

    def owns(self, idx: int) -> bool:
        return idx % self.count == self.index


class MetricsRecorder:
    """Stands in for `Metrics` in a sharded Simulation: records stamped calls."""

    def __init__(self, shard: Shard, engine: _Clock, real: Metrics | None) -> None:
        self.shard = shard
        self.engine = engine
        self.real = real            # worker 0's Metrics (None elsewhere): replay target
        self.calls: list[Call] = []
        self._key = -1
        self._world = 0
        self._hook = 0

    # ----------------------------------------------------------- stamping

    def _enter(self) -> None:
        if self.engine.key != self._key:
            self._key = self.engine.key
            self._world = 0
            self._hook = 0

    def _world_call(self, record: bool, name: str, args: tuple[Any, ...]) -> None:
        self._enter()
        self._world += 1
        if record:
            self.calls.append(((self.engine.now, self._key, self._world, 0, 0), name, args))

    def _hook_call(self, observer: int, name: str, args: tuple[Any, ...]) -> None:
        self._enter()
        self._hook += 1
        self.calls.append(((self.engine.now, self._key, self._world, observer + 1, self._hook),
                           name, args))

    def take(self) -> list[Call]:
        calls, self.calls = self.calls, []
        return calls

    # ------------------------------------------------- Metrics' input face

    def ensure(self, n: int) -> None:
        if self.real is not None:
            self.real.ensure(n)

    def crash(self, subject: int, now: float) -> None:
        self._world_call(self.shard.index == 0, "crash", (subject, now))

    def revived(self, subject: int) -> None:
        self._world_call(self.shard.index == 0, "revived", (subject,))

    def departed(self, idx: int, now: float, live: Any) -> None:
        self._world_call(self.shard.index == 0, "departed", (idx, now))

    def mark(self, now: float, label: str) -> None:
        self._world_call(self.shard.index == 0, "mark", (now, label))

    def sample_view(self, now: float, up_indices: list[int]) -> None:
        self._world_call(self.shard.index == 0, "sample_view", (now, up_indices))

    def update(self, subject: int, incarnation: int, now: float, eligible: bytearray,
               kind: str = "update") -> None:
        self._world_call(self.shard.owns(subject), "update",
                         (subject, incarnation, now, eligible, kind))

    def attested(self, observer: int, trusted: bool) -> None:
        self._hook_call(observer, "attested", (observer, trusted))

    def on_event(self, observer: int, subject: int, kind: str, incarnation: int, now: float,
                 live: Any) -> None:
        self._hook_call(observer, "on_event", (observer, subject, kind, incarnation, now))


def replay(metrics: Metrics, live: Any, batches: list[list[Call]]) -> None:
    """Apply every process's calls of one window to `metrics`, in one-process order."""
    calls = [c for batch in batches for c in batch]
    calls.sort(key=lambda c: c[0])
    for _stamp, name, args in calls:
        if name == "on_event" or name == "departed":  # they ask the world (who is up)
            args = (*args, live)
        getattr(metrics, name)(*args)
