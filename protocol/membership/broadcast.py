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
    __slots__ = ("key", "data", "transmits", "order")

    def __init__(self, key: NodeId, data: bytes, order: int) -> None:
        self.key = key
        self.data = data
        self.transmits = 0
        self.order = order


class BroadcastQueue:
    # tiers[transmits] maps key -> item, newest inserted last; selection walks
    # tiers from 0 up and each tier newest first: O(items taken), not O(queue).

    def __init__(self, max_items: int) -> None:
        self._by_key: dict[NodeId, _Item] = {}
        self._tiers: dict[int, dict[NodeId, _Item]] = {}
        self._order = 0
        self._max = max_items

    def __len__(self) -> int:
        return len(self._by_key)

    def queue(self, key: NodeId, data: bytes) -> None:
        """Add an encoded gossip message about `key`, replacing any older one."""
        self._remove(key)
        self._order += 1
        item = _Item(key, data, self._order)
        self._by_key[key] = item
        self._tiers.setdefault(0, {})[key] = item
        if len(self._by_key) > self._max:
            self._drop_most_sent()

    def _remove(self, key: NodeId) -> None:
        old = self._by_key.pop(key, None)
        if old is not None:
            tier = self._tiers[old.transmits]
            del tier[key]
            if not tier:
                del self._tiers[old.transmits]

    def _drop_most_sent(self) -> None:
        worst = max(self._tiers)
        key = next(iter(self._tiers[worst]))
        self._remove(key)

    def take(self, budget: int, overhead: int, limit: int) -> list[bytes]:
        """Items (each costing len + `overhead`) that fit in `budget`; counts a transmit each."""
        chosen: list[_Item] = []
        misses = 0  # items too big for what is left; give up after a few (queue may be long)
        for transmits in sorted(self._tiers):
            for item in reversed(self._tiers[transmits].values()):
                cost = len(item.data) + overhead
                if cost <= budget:
                    chosen.append(item)
                    budget -= cost
                    misses = 0
                else:
                    misses += 1
                if budget < overhead + 16 or len(chosen) >= 64 or misses >= MAX_MISSES:
                    break
            if budget < overhead + 16 or len(chosen) >= 64 or misses >= MAX_MISSES:
                break
        out = []
        for item in chosen:
            tier = self._tiers[item.transmits]
            del tier[item.key]
            if not tier:
                del self._tiers[item.transmits]
            item.transmits += 1
            if item.transmits >= limit:
                del self._by_key[item.key]
            else:
                self._tiers.setdefault(item.transmits, {})[item.key] = item
            out.append(item.data)
        return out
