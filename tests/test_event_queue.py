"""The calendar queue pops exactly what heapq would, in the same order (trace hashes
depend on it), whatever mix of near, far, past and tied times is pushed, including
pushes made while it is being drained and after a peek ran past the caller's horizon."""

from __future__ import annotations

import heapq
import random

import pytest
from keepmesh.simulations.event_queue import RING, SLOTS_PER_S, EventQueue


def _drain_both(rng: random.Random, steps: int) -> None:
    q = EventQueue()
    ref: list[tuple[float, int, str]] = []
    seq = 0
    now = 0.0

    def push(t: float) -> None:
        nonlocal seq
        seq += 1
        entry = (t, seq, "x")
        q.push(entry)
        heapq.heappush(ref, entry)

    for _ in range(steps):
        r = rng.random()
        if r < 0.55:
            # near (a link), far (beyond the ring), now, or tied with an existing time
            kind = rng.random()
            if kind < 0.6:
                push(now + rng.uniform(0.0, 0.004))
            elif kind < 0.8:
                push(now + rng.uniform(0.5, 2.0))
            elif kind < 0.9:
                push(now + rng.uniform(RING / SLOTS_PER_S, 3 * RING / SLOTS_PER_S))
            elif kind < 0.95 or not ref:
                push(now)
            else:
                push(rng.choice(ref)[0])  # an exact tie: seq decides
        elif r < 0.6:
            # a peek past the caller's horizon, then pushes before that time
            horizon = now + rng.uniform(0.0, 0.01)
            t = q.peek_time()
            assert t == (ref[0][0] if ref else None)
            if t is not None and t > horizon:
                push(now + (horizon - now) * rng.random())
        elif ref:
            got = q.pop()
            want = heapq.heappop(ref)
            assert got == want
            now = got[0]
        assert len(q) == len(ref)
    while ref:
        assert q.pop() == heapq.heappop(ref)
    assert len(q) == 0 and q.peek_time() is None


@pytest.mark.parametrize("seed", range(20))
def test_same_order_as_heapq(seed: int) -> None:
    _drain_both(random.Random(seed), 3000)


def test_empty_queue_refuses_to_pop_and_jumps_long_gaps() -> None:
    q = EventQueue()
    with pytest.raises(IndexError):
        q.pop()
    q.push((3600.0, 1, "reap"))          # far beyond the ring, nothing nearer
    q.push((0.001, 2, "link"))
    assert q.pop()[1] == 2
    assert q.pop() == (3600.0, 1, "reap")  # reached without stepping 3.6 M slots one by one
    q.push((3600.0005, 3, "after"))
    assert q.peek_time() == 3600.0005
