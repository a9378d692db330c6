"""The piggyback queue (protocol/membership/broadcast.py): order and bounded bookkeeping.
Limits and replacement are covered in test_membership.test_broadcast_queue_limits_and_invalidation."""

from __future__ import annotations

import random

from keepmesh.protocol.membership import BroadcastQueue


def test_fewest_sent_first_then_newest_first() -> None:
    q = BroadcastQueue(max_items=10)
    for key in (b"a", b"b", b"c"):
        q.queue(key, key * 10)
    assert q.take(budget=14, overhead=3, limit=5) == [b"c" * 10]   # newest of tier 0
    assert q.take(budget=1000, overhead=3, limit=5) == [b"b" * 10, b"a" * 10, b"c" * 10]
    q.queue(b"a", b"A" * 10)   # replaced: new, so back in tier 0 and first
    assert q.take(budget=14, overhead=3, limit=5) == [b"A" * 10]


def test_oldest_of_the_most_sent_tier_is_dropped_when_full() -> None:
    q = BroadcastQueue(max_items=3)
    q.queue(b"a", b"a")
    q.queue(b"b", b"b")
    # sent once, newest first: b then a, so b is the oldest of the sent-once tier
    assert q.take(budget=1000, overhead=3, limit=9) == [b"b", b"a"]
    q.queue(b"c", b"c")
    q.queue(b"d", b"d")                         # full: the oldest sent-once item goes
    assert sorted(q.take(budget=1000, overhead=3, limit=9)) == [b"a", b"c", b"d"]


def test_dead_entries_do_not_pile_up() -> None:
    """Items that moved tier or were replaced leave entries behind that are dropped
    lazily; under long churn the stacks stay within a constant factor of the live
    items (they were what made each walk slow at 10,000 members)."""
    rng = random.Random(5)
    q = BroadcastQueue(max_items=500)
    for step in range(50_000):
        if rng.random() < 0.6:
            q.queue(rng.randrange(400).to_bytes(4, "big"), bytes(rng.randrange(10, 120)))
        else:
            q.take(budget=rng.randrange(100, 1400), overhead=3, limit=6)
        entries = sum(len(stack) for stack in q._tiers.values())
        assert entries <= 4 * len(q) + 64 * len(q._tiers), step
