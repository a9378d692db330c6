"""A tiny deterministic in-memory network driving MeshNode instances.

Why in simulations/ and not in the product package or tests/: it is test
scaffolding (simulation keyring, a trust `policy` standing in for the
verifier) that the unit tests and bench/membership.py share. It drives the
same MeshNode as the agent and the simulator, carrying out effects only:
sends go on a heap of deliveries (virtual time, a seeded random.Random),
attestation requests are answered by `policy`. The full simulator
(simulations/runner.py) models topologies, latencies and faults far better;
this harness is deliberately small.

`nodes[addr]` is each node's Membership (what the membership unit tests
poke); `mesh[addr]` is the MeshNode that owns it.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

from keepmesh.protocol.effects import (
    AttestationVerdict,
    Event,
    KeepLocated,
    MemberEvent,
    Persist,
    PlacementDone,
    PlacementFailed,
    RequestAttestation,
    Send,
)
from keepmesh.protocol.membership import MemberBase, MembershipConfig, NodeId
from keepmesh.protocol.membership.records import Capacity, Claims, make_record
from keepmesh.protocol.membership.signing import CachingVerifier
from keepmesh.protocol.membership.state import Membership
from keepmesh.protocol.node import MeshNode

from .keyring import SimulationKeyring

NetEvent: TypeAlias = MemberEvent | RequestAttestation | Event


@dataclass
class NetStats:
    delivered: int = 0
    dropped: int = 0
    timer_calls: int = 0
    events: list[tuple[str, NetEvent]] = field(default_factory=list)


PORT = 7946  # record addresses must be canonical HOST:PORT (protocol/address.py)


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
                 policy: Callable[[RequestAttestation], bool] | None = None,
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
        self.mesh: dict[str, MeshNode] = {}
        self.disk: dict[str, dict[str, int | str | bytes]] = {}
        self.down: set[str] = set()
        self.now = 0.0
        self._heap: list[tuple[float, int, str, str, bytes, str]] = []
        self._n = 0
        self._timer_at: dict[str, float | None] = {}
        self.stats = NetStats()
        self.on_event: Callable[[str, NetEvent], None] | None = None
        self.incarnation_base: dict[str, int] = {}

    # ----------------------------------------------------------- topology

    def add(self, i: int, seeds: list[str] | None = None, incarnation: int = 0,
            labels: dict[str, str] | None = None) -> Membership:
        addr = f"n{i}"
        signer = self.keyring.signer(sim_node_id(i))
        record = make_record(signer, f"{addr}:{PORT}", incarnation, Claims("sim", "ab" * 8, "1"),
                             Capacity(1024, 1000, 1024, 1000), labels or {"zone": f"z{i % 3}"})
        mesh = MeshNode(self.config, record, signer, self.verifier,
                        random.Random(self.rng.getrandbits(64)), self.now,
                        require_attestation=self.require_attestation)
        self.mesh[addr] = mesh
        node = self.nodes[addr] = mesh.membership
        self.down.discard(addr)
        if seeds:
            mesh.join([s if ":" in s else f"{s}:{PORT}" for s in seeds], self.now)
        self._after(addr)
        return node

    def warm(self, n: int) -> None:
        """n members that already know and trust each other (no join wave), like a
        cluster that has been running: every table primed with learn()."""
        for i in range(n):
            self.add(i)
        base = MemberBase.build([node.record for node in self.nodes.values()],
                                self.verifier, self.now)
        for mesh in self.mesh.values():
            mesh.learn(base, self.now, trusted=True)
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
            node = self.mesh[addr]
            if kind == "timer":
                if self._timer_at.get(addr) != at:
                    continue
                self._timer_at[addr] = None
                self.stats.timer_calls += 1
                node.handle_timer(at)
            else:
                self.stats.delivered += 1
                node.receive(data, src, None, at)
            self._after(addr)
        self.now = t

    def _after(self, addr: str) -> None:
        """Carry out what the node wants: sends onto the heap, verdicts from `policy`."""
        node = self.mesh[addr]
        while (item := node.next_effect()) is not None:
            if isinstance(item, Send):
                self._deliver(addr, item)
            elif isinstance(item, Persist):
                self.disk.setdefault(addr, {})[item.key] = item.value
            elif isinstance(item, RequestAttestation | MemberEvent | PlacementDone
                            | PlacementFailed | KeepLocated):
                if self.keep_events:
                    self.stats.events.append((addr, item))
                if self.on_event is not None:
                    self.on_event(addr, item)
                if isinstance(item, RequestAttestation):
                    node.complete(AttestationVerdict(item.node_id, self.policy(item),
                                                     reason="policy"), self.now)
        t = node.get_timer()
        if t is not None and addr not in self.down:
            t = max(t, self.now)
            if self._timer_at.get(addr) != t:
                self._timer_at[addr] = t
                self._n += 1
                heapq.heappush(self._heap, (t, self._n, "timer", addr, b"", ""))

    def _deliver(self, addr: str, out: Send) -> None:
        if not out.reliable and self.loss and self.rng.random() < self.loss:
            self.stats.dropped += 1
            return
        delay = self.rng.uniform(*self.latency)
        dst = out.dst.rsplit(":", 1)[0]  # records carry "n<i>:PORT"; nodes are named "n<i>"
        if addr in self.slow or dst in self.slow:
            delay += self.slow_extra * self.rng.random()
        self._n += 1
        heapq.heappush(self._heap, (self.now + delay, self._n, "msg", dst, out.data, addr))

    # ----------------------------------------------------------- queries

    def up(self) -> list[Membership]:
        return [n for a, n in self.nodes.items() if a not in self.down]

    def up_mesh(self) -> list[MeshNode]:
        return [n for a, n in self.mesh.items() if a not in self.down]

    def converged(self, expected: set[NodeId]) -> bool:
        return all(n.alive_ids() == expected for n in self.up())
