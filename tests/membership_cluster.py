"""A hand-driven cluster of Membership instances for sans-IO tests with explicit time.

Unlike simulations/testnet.py (a network with latency and a heap), nothing
moves unless the test says so: `deliver()` hands every queued datagram over
at the time the test chooses, `tick(now)` fires timers at exactly `now`.
Real Ed25519 keys (what the agent uses), so signatures are the real ones.
"""

from __future__ import annotations

import random

from keepmesh.protocol.membership import (
    Ed25519Signer,
    Ed25519Verifier,
    Membership,
    MembershipConfig,
    NodeRecord,
    Outgoing,
    make_record,
)

LAN = MembershipConfig.profile("lan")


def address(i: int) -> str:
    return f"10.0.0.{i + 1}:7946"


class Cluster:
    """n members that already know and trust each other (learn(trusted=True))."""

    def __init__(self, n: int, config: MembershipConfig = LAN, seed: int = 1,
                 now: float = 0.0) -> None:
        self.config = config
        self.signers = [Ed25519Signer(bytes([i + 1]) * 32) for i in range(n)]
        self.verifier = Ed25519Verifier()
        self.nodes: list[Membership] = []
        for i, signer in enumerate(self.signers):
            record = make_record(signer, address(i), 1)
            self.nodes.append(Membership(config, record, signer, self.verifier,
                                         random.Random(seed * 1000 + i), now))
        records = [m.record for m in self.nodes]
        for m in self.nodes:
            m.learn(records, now, trusted=True)
        self.by_address = {address(i): i for i in range(n)}

    def id(self, i: int) -> bytes:
        return self.signers[i].node_id

    def record(self, i: int) -> NodeRecord:
        return self.nodes[i].record

    def drain(self, i: int) -> list[Outgoing]:
        return self.nodes[i].datagrams_to_send()

    def deliver(self, i: int, out: list[Outgoing], now: float,
                drop: set[int] = frozenset()) -> int:  # type: ignore[assignment]
        """Hand `out` (sent by member i) to its destinations; returns how many arrived."""
        n = 0
        for o in out:
            j = self.by_address.get(o.dst)
            if j is None or j in drop:
                continue
            self.nodes[j].receive(o.data, address(i), now, src_id=self.id(i))
            n += 1
        return n

    def run(self, until: float, down: set[int] = frozenset(),  # type: ignore[assignment]
            start: float = 0.0) -> float:
        """Fire every member's timers at exactly their deadlines up to `until`, delivering
        each datagram at once (zero latency); members in `down` neither run nor receive."""
        now = start
        while True:
            due = [(t, i) for i, m in enumerate(self.nodes)
                   if i not in down and (t := m.get_timer()) is not None]
            if not due:
                return until
            t, i = min(due)
            if t > until:
                return until
            now = max(now, t)
            self.nodes[i].handle_timer(now)
            self.flush(i, now, down)

    def flush(self, i: int, now: float, down: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        """Deliver what member i queued, and the replies that causes, at `now`."""
        pending = [i]
        while pending:
            j = pending.pop()
            for o in self.nodes[j].datagrams_to_send():
                k = self.by_address.get(o.dst)
                if k is None or k in down:
                    continue
                self.nodes[k].receive(o.data, address(j), now, src_id=self.id(j))
                pending.append(k)

    def events(self, i: int) -> list[tuple[str, bytes]]:
        return [(e.kind, e.node_id) for e in iter(self.nodes[i].next_event, None)]
