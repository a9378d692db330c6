"""A tiny deterministic in-memory network driving Membership instances.

Why here and not in tests/: the unit tests and bench/membership.py share it,
and it is itself sans-IO (virtual time, a seeded random.Random, a heap of
deliveries). The full simulator (simulations/) models topologies, latencies
and faults far better; this harness is deliberately small.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import MembershipConfig
from .records import Capacity, Claims, make_record
from .signing import CachingVerifier, NodeId, SimulationKeyring
from .state import MemberEvent, Membership


@dataclass
class NetStats:
    delivered: int = 0
    dropped: int = 0
    timer_calls: int = 0
    events: list[tuple[str, MemberEvent]] = field(default_factory=list)


def sim_node_id(i: int) -> NodeId:
    return i.to_bytes(4, "big") * 8


class TestNet:
    """Nodes addressed "n<i>"; `loss` drops datagrams (never reliable messages);
    `slow` addresses get `slow_extra` seconds added to every packet they send."""

    __test__ = False  # not a pytest class

    def __init__(self, config: MembershipConfig, seed: int = 1, *,
                 require_attestation: bool = True, loss: float = 0.0,
                 latency: tuple[float, float] = (0.001, 0.010),
                 slow: set[str] | None = None, slow_extra: float = 0.3,
                 policy: Callable[[MemberEvent], bool] | None = None,
                 keep_events: bool = True) -> None:
        self.config = config
        self.rng = random.Random(seed)
        self.seed = seed
        self.require_attestation = require_attestation
        self.loss = loss
        self.latency = latency
        self.slow = slow or set()
        self.slow_extra = slow_extra
        self.policy = policy or (lambda ev: True)
        self.keep_events = keep_events
        self.keyring = SimulationKeyring(b"testnet")
        self.verifier = CachingVerifier(self.keyring.verifier())
        self.nodes: dict[str, Membership] = {}
        self.down: set[str] = set()
        self.now = 0.0
        self._heap: list[tuple[float, int, str, str, bytes, str]] = []
        self._n = 0
        self._timer_at: dict[str, float | None] = {}
        self.stats = NetStats()
        self.on_event: Callable[[str, MemberEvent], None] | None = None
        self.incarnation_base: dict[str, int] = {}

    # ----------------------------------------------------------- topology

    def add(self, i: int, seeds: list[str] | None = None, incarnation: int = 0,
            labels: dict[str, str] | None = None) -> Membership:
        addr = f"n{i}"
        signer = self.keyring.signer(sim_node_id(i))
        record = make_record(signer, addr, incarnation, Claims("sim", "ab" * 8, "1"),
                             Capacity(1024, 1000, 1024, 1000), labels or {"zone": f"z{i % 3}"})
        node = Membership(self.config, record, signer, self.verifier,
                          random.Random(self.rng.getrandbits(64)), self.now,
                          require_attestation=self.require_attestation)
        self.nodes[addr] = node
        self.down.discard(addr)
        if seeds:
            node.join(seeds, self.now)
        self._after(addr)
        return node

    def warm(self, n: int) -> None:
        """n members that already know and trust each other (no join wave), like a
        cluster that has been running: every table primed with learn()."""
        for i in range(n):
            self.add(i)
        records = [node.record for node in self.nodes.values()]
        for node in self.nodes.values():
            node.learn(records, self.now, trusted=True)
        for addr in self.nodes:
            self.kick(addr)

    def kick(self, addr: str) -> None:
        """Collect outputs after poking a node from outside the loop (update_local, leave)."""
        self._after(addr)

    def crash(self, addr: str) -> None:
        self.down.add(addr)
        self._timer_at[addr] = None

    def restart(self, i: int, seeds: list[str]) -> Membership:
        """Same identity, fresh state (incarnation starts from 0 again)."""
        return self.add(i, seeds)

    # ----------------------------------------------------------- running

    def inject(self, dst: str, data: bytes, src: str, reliable: bool = False) -> None:
        self._n += 1
        heapq.heappush(self._heap, (self.now, self._n, "msg", dst, data, src))

    def run_until(self, t: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= t:
            at, _, kind, addr, data, src = heapq.heappop(heap)
            self.now = at
            if addr in self.down or addr not in self.nodes:
                continue
            node = self.nodes[addr]
            if kind == "timer":
                if self._timer_at.get(addr) != at:
                    continue
                self._timer_at[addr] = None
                self.stats.timer_calls += 1
                node.handle_timer(at)
            else:
                self.stats.delivered += 1
                node.receive(data, src, at)
            self._after(addr)
        self.now = t

    def _after(self, addr: str) -> None:
        node = self.nodes[addr]
        for out in node.datagrams_to_send():
            if not out.reliable and self.loss and self.rng.random() < self.loss:
                self.stats.dropped += 1
                continue
            delay = self.rng.uniform(*self.latency)
            if addr in self.slow or out.dst in self.slow:
                delay += self.slow_extra * self.rng.random()
            self._n += 1
            heapq.heappush(self._heap, (self.now + delay, self._n, "msg", out.dst, out.data,
                                        addr))
        while (ev := node.next_event()) is not None:
            if self.keep_events:
                self.stats.events.append((addr, ev))
            if self.on_event is not None:
                self.on_event(addr, ev)
            if ev.kind == "attest":
                node.set_trust(ev.node_id, self.policy(ev), self.now, reason="policy")
                # set_trust may emit join/untrusted: drained by the loop
        t = node.get_timer()
        if t is not None and addr not in self.down:
            t = max(t, self.now)
            if self._timer_at.get(addr) != t:
                self._timer_at[addr] = t
                self._n += 1
                heapq.heappush(self._heap, (t, self._n, "timer", addr, b"", ""))

    # ----------------------------------------------------------- queries

    def up(self) -> list[Membership]:
        return [n for a, n in self.nodes.items() if a not in self.down]

    def converged(self, expected: set[NodeId]) -> bool:
        return all(n.alive_ids() == expected for n in self.up())
