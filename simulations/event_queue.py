"""The engine's pending events: a calendar queue that pops in exactly heapq's order.

Why not one heap: at 10,000 agents the heap holds ~16,000 entries (a timer per
agent plus messages in flight) and every pop sifts through ~14 levels of tuples
scattered in memory; py-spy put that one line at an eighth of a 10k run. Almost
every event is due within a few seconds (links are milliseconds, probes one
second), so entries go into a ring of short time slots, a list per slot,
appended in O(1). Only the slot being drained is a heap, and it holds the few
dozen events of one millisecond. Entries further away than the ring (push-pull,
suspicion and reap timers) wait in an overflow heap until their slot comes up.

Order: entries are tuples whose first two fields are (time, unique seq), and
they leave in ascending tuple order, the same as heapq would give, so trace
hashes do not depend on this structure. A slot is `floor(time * SLOTS_PER_S)`,
monotone in time, so everything in an earlier slot precedes everything in a
later one; within the current slot the heap orders by (time, seq). An entry
pushed for a slot the queue has already reached (an event due now, or a peek
past the caller's horizon that advanced the slot) joins the current heap, which
is still correct: that heap orders whatever it holds.
"""

from __future__ import annotations

import heapq
from typing import Any

SLOTS_PER_S = 1024.0   # ~1 ms slots: a few dozen events each at N = 10,000
RING = 4096            # 4 s of slots; further entries wait in the overflow heap
_MASK = RING - 1

Entry = tuple[Any, ...]  # (time, seq, ...): seq unique, so ties never compare payloads


class EventQueue:
    """Pending (time, seq, ...) entries; `current` is the heap of the slot being drained."""

    __slots__ = ("current", "_slot", "_ring", "_in_ring", "_far")

    def __init__(self) -> None:
        self.current: list[Entry] = []        # heap: every entry of slots <= _slot
        self._slot = 0                        # the slot `current` belongs to
        self._ring: list[list[Entry]] = [[] for _ in range(RING)]
        self._in_ring = 0
        self._far: list[Entry] = []           # heap: entries beyond the ring when pushed

    def __len__(self) -> int:
        return len(self.current) + self._in_ring + len(self._far)

    def push(self, entry: Entry) -> None:
        slot = int(entry[0] * SLOTS_PER_S)
        ahead = slot - self._slot
        if ahead <= 0:
            heapq.heappush(self.current, entry)
        elif ahead < RING:
            self._ring[slot & _MASK].append(entry)
            self._in_ring += 1
        else:
            heapq.heappush(self._far, entry)

    def refill(self) -> bool:
        """Move the next non-empty slot into `current` (which must be empty).
        False: the queue is empty."""
        current = self.current
        far = self._far
        ring = self._ring
        slot = self._slot
        while True:
            if self._in_ring:
                slot += 1
                bucket = ring[slot & _MASK]
                if bucket:
                    current.extend(bucket)
                    self._in_ring -= len(bucket)
                    ring[slot & _MASK] = []
            elif far:
                # nothing in the ring: jump straight to the overflow's first slot
                slot = max(slot + 1, int(far[0][0] * SLOTS_PER_S))
            else:
                self._slot = slot
                return False
            while far and int(far[0][0] * SLOTS_PER_S) <= slot:
                current.append(heapq.heappop(far))
            if current:
                self._slot = slot
                heapq.heapify(current)
                return True

    def peek_time(self) -> float | None:
        """Time of the next entry, or None."""
        if not self.current and not self.refill():
            return None
        t: float = self.current[0][0]
        return t

    def pop(self) -> Entry:
        """The next entry; IndexError when empty."""
        if not self.current and not self.refill():
            raise IndexError("pop from an empty EventQueue")
        return heapq.heappop(self.current)
