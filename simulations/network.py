"""Network model of the simulator: what happens to each message between two agents.

Why a model and not a socket: the simulator must be deterministic and fast, so
every message's fate (delivered at time t, or dropped for a named reason) is
decided by one call that draws from the simulator's seeded network RNG.

Agents live at *sites* (a [[group]] of the topology, or a node of a generated
graph). A directed site-to-site matrix of `LinkSpec` gives latency, jitter,
loss and bandwidth, so links can be asymmetric. On top of that: partitions
(agents on different sides never hear each other), and loss bursts (extra loss
for every datagram until a deadline).

Reliable messages (push-pull state sync, a QUIC stream in the agent) are never
lost to random loss; each loss instead costs a retransmission timeout, as QUIC
would. Partitions and dead destinations drop them like datagrams.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

DISTRIBUTIONS = ("fixed", "uniform", "normal", "exponential")

# Drop reasons; the engine counts drops per reason.
DROP_LOSS = "loss"
DROP_PARTITION = "partition"
DROP_DOWN = "down"
DROP_UNKNOWN = "unknown_dst"
DROP_SIZE = "oversize"


@dataclass(frozen=True)
class LinkSpec:
    """One direction of a link between two sites.

    latency_s is the base one-way delay; `jitter_s` is added according to
    `distribution` (uniform: U(0, jitter); normal: |N(0, jitter)|;
    exponential: Exp(mean=jitter); fixed: none).
    """

    latency_s: float = 0.005
    jitter_s: float = 0.0
    loss: float = 0.0
    bandwidth_bps: float | None = None
    distribution: str = "uniform"

    def combine(self, other: LinkSpec) -> LinkSpec:
        """Two links in series (a path through a graph): delays add, losses compound."""
        bw: float | None
        if self.bandwidth_bps is None:
            bw = other.bandwidth_bps
        elif other.bandwidth_bps is None:
            bw = self.bandwidth_bps
        else:
            bw = min(self.bandwidth_bps, other.bandwidth_bps)
        return LinkSpec(
            latency_s=self.latency_s + other.latency_s,
            jitter_s=math.hypot(self.jitter_s, other.jitter_s),
            loss=1.0 - (1.0 - self.loss) * (1.0 - other.loss),
            bandwidth_bps=bw,
            distribution=self.distribution,
        )


class Network:
    """Decides delivery time or drop reason for each message.

    Memory is O(agents) (one site index, one partition side and one egress
    clock per agent) plus O(sites^2) for the link matrix, so 100k agents fit.
    """

    def __init__(self, links: list[list[LinkSpec]], rng: random.Random,
                 max_packet: int = 1400) -> None:
        self.links = links
        self.rng = rng  # only seeds the per-sender streams below
        # One stream per sender, seeded in agent order: a sender's delays and losses
        # depend on its own sends only, so agents simulated in different processes
        # draw exactly what one process would (simulations/parallel.py).
        self._stream_seed: list[int] = []
        self._streams: list[random.Random | None] = []
        self.max_packet = max_packet
        self.site: list[int] = []
        self.side: list[int] = []
        self.egress_free: list[float] = []
        self.burst_loss = 0.0
        self.burst_until = -1.0
        self.partitioned = False
        self.last_sides: list[int] | None = None
        self.healed_at: float | None = None

    def add_agent(self, site: int) -> int:
        if not 0 <= site < len(self.links):
            raise ValueError(f"site {site} out of range")
        self.site.append(site)
        self._stream_seed.append(self.rng.getrandbits(64))
        self._streams.append(None)  # made on first use: a shard draws only its own senders' streams
        self.side.append(0)
        self.egress_free.append(0.0)
        return len(self.site) - 1

    # ----------------------------------------------------------- faults

    def partition(self, sides: dict[int, int]) -> None:
        """Put agents on numbered sides; agents not named stay on side 0."""
        for idx in range(len(self.side)):
            self.side[idx] = 0
        for idx, s in sides.items():
            self.side[idx] = s
        self.partitioned = any(self.side)

    def heal(self, now: float = 0.0) -> None:
        if self.partitioned:
            self.last_sides = list(self.side)
            self.healed_at = now
        for idx in range(len(self.side)):
            self.side[idx] = 0
        self.partitioned = False

    def loss_burst(self, loss: float, until: float) -> None:
        self.burst_loss = loss
        self.burst_until = until

    def min_latency(self) -> float:
        """No message arrives sooner than this after it is sent (the parallel lookahead):
        jitter, retransmissions and queueing only ever add to a link's latency."""
        return min(link.latency_s for row in self.links for link in row)

    def can_reach(self, src: int, dst: int) -> bool:
        return not self.partitioned or self.side[src] == self.side[dst]

    def split_since(self, a: int, b: int, since: float) -> bool:
        """Were a and b on different sides of a partition healed at or after `since`?"""
        last = self.last_sides
        return (last is not None and self.healed_at is not None and self.healed_at >= since
                and a < len(last) and b < len(last) and last[a] != last[b])

    # --------------------------------------------------------- delivery

    def route(self, src: int, dst: int, size: int, reliable: bool,
              now: float) -> tuple[float, str]:
        """Return (delivery_time, "") or (now, drop_reason)."""
        if self.partitioned and self.side[src] != self.side[dst]:
            return now, DROP_PARTITION
        if not reliable and size > self.max_packet:
            return now, DROP_SIZE
        link = self.links[self.site[src]][self.site[dst]]
        rng = self._streams[src]
        if rng is None:
            rng = self._streams[src] = random.Random(self._stream_seed[src])
        loss = link.loss
        if now < self.burst_until and not reliable:
            loss = 1.0 - (1.0 - loss) * (1.0 - self.burst_loss)
        delay = link.latency_s
        jit = link.jitter_s
        if jit > 0.0:
            dist = link.distribution
            if dist == "uniform":
                delay += jit * rng.random()
            elif dist == "normal":
                delay += abs(rng.gauss(0.0, jit))
            elif dist == "exponential":
                delay += rng.expovariate(1.0 / jit)
        if loss > 0.0:
            if not reliable:
                if rng.random() < loss:
                    return now, DROP_LOSS
            else:
                # QUIC retransmits: each loss costs about one RTO (>= 2 RTT, floor 200 ms).
                rto = max(4.0 * link.latency_s, 0.2)
                tries = 0
                while rng.random() < loss and tries < 8:
                    delay += rto
                    rto *= 2.0
                    tries += 1
        start = now
        if link.bandwidth_bps is not None:
            # FIFO egress queue at the sender: serialization delay of this message.
            free = self.egress_free[src]
            if free > start:
                start = free
            start += size * 8.0 / link.bandwidth_bps
            self.egress_free[src] = start
        return start + delay, ""
