"""Piggyback queue with a retransmit limit (memberlist TransmitLimitedQueue).

Why: gossip rides on packets we send anyway. Each item is sent at most
retransmit_mult * ceil(log10(N+1)) times, fewest-sent first, which is enough
for epidemic spread to reach everyone with high probability; a newer item
about the same member replaces the older one, so stale news is never sent.
"""

from __future__ import annotations

from .signing import NodeId

MAX_MISSES = 8


class _Item:
    __slots__ = ("key", "data", "transmits", "live")

    def __init__(self, key: NodeId, data: bytes) -> None:
        self.key = key
        self.data = data
        self.transmits = 0
        self.live = True   # False once replaced, dropped or sent `limit` times


class BroadcastQueue:
    """Items in tiers by transmit count; selection walks tiers from 0 up and each tier
    newest first: O(items looked at), not O(queue).

    Each tier is a stack (newest last) from which moved or removed items are dropped
    lazily, when a walk or a drop reaches them. Why stacks and not dicts: a tier's
    newest items are the ones taken, and deleting the end of a dict leaves holes that
    the next newest-first walk must step over again, until the dict is rebuilt: at
    10,000 members that walk was a tenth of the simulator's time.
    """

    def __init__(self, max_items: int) -> None:
        self._by_key: dict[NodeId, _Item] = {}
        # The same dict, never rebound: its truth value answers "anything queued?" in
        # the hot paths without a Python-level __len__ call (several per simulated event).
        self.pending: dict[NodeId, _Item] = self._by_key
        self._tiers: dict[int, list[_Item]] = {}   # transmits -> stack, with dead entries
        self._live: dict[int, int] = {}            # transmits -> live items in that tier
        self._max = max_items

    def __len__(self) -> int:
        return len(self._by_key)

    def queue(self, key: NodeId, data: bytes) -> None:
        """Add an encoded gossip message about `key`, replacing any older one."""
        self._remove(key)
        item = _Item(key, data)
        self._by_key[key] = item
        self._push(0, item)
        if len(self._by_key) > self._max:
            self._drop_most_sent()

    def _push(self, tier: int, item: _Item) -> None:
        stack = self._tiers.get(tier)
        if stack is None:
            stack = self._tiers[tier] = []
        stack.append(item)
        self._live[tier] = self._live.get(tier, 0) + 1

    def _gone(self, item: _Item) -> None:
        """`item` left its tier (moved up, replaced or dropped); its stack entry is dead."""
        tier = item.transmits
        n = self._live[tier] - 1
        if n:
            self._live[tier] = n
            stack = self._tiers[tier]
            if len(stack) > 64 and len(stack) > 4 * n:  # mostly dead: compact
                self._tiers[tier] = [i for i in stack if i.live and i.transmits == tier]
        else:
            del self._live[tier]
            del self._tiers[tier]

    def _remove(self, key: NodeId) -> None:
        old = self._by_key.pop(key, None)
        if old is not None:
            old.live = False
            self._gone(old)

    def _drop_most_sent(self) -> None:
        """Drop the oldest item of the most-sent tier."""
        worst = max(self._live)
        for item in self._tiers[worst]:
            if item.live and item.transmits == worst:
                self._remove(item.key)
                return

    def take(self, budget: int, overhead: int, limit: int) -> list[bytes]:
        """Items (each costing len + `overhead`) that fit in `budget`; counts a transmit each."""
        chosen: list[_Item] = []
        misses = 0  # items too big for what is left; give up after a few (queue may be long)
        floor = overhead + 16
        done = False
        for transmits in sorted(self._live):
            stack = self._tiers[transmits]
            while not (stack[-1].live and stack[-1].transmits == transmits):
                stack.pop()  # dead entries on top (items taken last time): gone for good
            i = len(stack)
            while i:
                i -= 1
                item = stack[i]
                if not item.live or item.transmits != transmits:
                    continue
                cost = len(item.data) + overhead
                if cost <= budget:
                    chosen.append(item)
                    budget -= cost
                    misses = 0
                else:
                    misses += 1
                if budget < floor or len(chosen) >= 64 or misses >= MAX_MISSES:
                    done = True
                    break
            if done:
                break
        out = []
        for item in chosen:
            self._gone(item)
            item.transmits += 1
            if item.transmits >= limit:
                item.live = False
                del self._by_key[item.key]
            else:
                self._push(item.transmits, item)
            out.append(item.data)
        return out
