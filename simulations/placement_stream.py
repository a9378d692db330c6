"""The placement experiment: a stream of deployments against the real PlacementMachine,
and a centralised greedy ideal fed the same stream in the same run.

Why an ideal in the same run: Sparrow and Tarcil report quality against an
omniscient scheduler; computing it here, on the same arrivals, sizes,
lifetimes and host set, makes `acceptance_vs_ideal` a ratio of two numbers
measured together rather than a comparison across papers.

Topology TOML (specs/simulator.md):

    [placement]
    load = 0.8              # offered load: mean memory demanded / memory offered
    start_s = 10            # arrivals begin (after the mesh has converged)
    lifetime_s = 60         # mean keep lifetime (exponential)
    sizes_mb = [64, 128, 256]
    host_memory_mb = 1024
    host_keeps = 16
    pinned = 0.2            # fraction of deployments requiring one site's zone label
    replicas = 1
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from .topology import TopologyError

KEYS = {"load", "start_s", "lifetime_s", "sizes_mb", "host_memory_mb", "host_keeps", "pinned",
        "replicas"}


@dataclass(frozen=True)
class PlacementStream:
    load: float
    start_s: float
    lifetime_s: float
    sizes_mb: tuple[int, ...]
    host_memory_mb: int
    host_keeps: int
    pinned: float
    replicas: int

    def rate(self, hosts: int) -> float:
        """Arrivals per second that offer `load` of the mesh's memory on average."""
        mean_size = sum(self.sizes_mb) / len(self.sizes_mb) * self.replicas
        return self.load * hosts * self.host_memory_mb / (mean_size * self.lifetime_s)


def parse_stream(table: Any, path: str) -> PlacementStream:
    """Strict, one line naming the key on anything wrong (as the rest of the topology)."""
    def fail(key: str, why: str) -> TopologyError:
        return TopologyError(f"{path}: placement.{key}: {why}")

    if not isinstance(table, dict):
        raise TopologyError(f"{path}: placement: expected a table")
    for k in table:
        if k not in KEYS:
            raise fail(str(k)[:40], f"unknown key (allowed: {', '.join(sorted(KEYS))})")

    def num(key: str, lo: float, hi: float, default: float) -> float:
        v = table.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise fail(key, f"expected a number in [{lo:g}, {hi:g}]")
        return float(v)

    def int_(key: str, lo: int, hi: int, default: int) -> int:
        v = table.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise fail(key, f"expected an integer in [{lo}, {hi}]")
        return v

    sizes = table.get("sizes_mb", [64, 128, 256])
    if not isinstance(sizes, list) or not 1 <= len(sizes) <= 32 or not all(
            isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 1 << 20 for s in sizes):
        raise fail("sizes_mb", "expected 1-32 sizes in MiB")
    host_memory = int_("host_memory_mb", 1, 1 << 22, 1024)
    if max(sizes) > host_memory:
        raise fail("sizes_mb", f"{max(sizes)} MiB exceeds host_memory_mb ({host_memory})")
    return PlacementStream(load=num("load", 0.0, 10.0, 0.8), start_s=num("start_s", 0.0, 1e6, 10.0),
                           lifetime_s=num("lifetime_s", 0.001, 1e6, 60.0),
                           sizes_mb=tuple(sizes), host_memory_mb=host_memory,
                           host_keeps=int_("host_keeps", 1, 4096, 16),
                           pinned=num("pinned", 0.0, 1.0, 0.0), replicas=int_("replicas", 1, 16, 1))


@dataclass
class Arrival:
    request: int
    size_mb: int
    lifetime_s: float
    zone: str | None
    at: float


@dataclass
class IdealScheduler:
    """Global view, greedy best fit: the host that fits with the least memory left."""

    free_mb: list[int]
    free_slots: list[int]
    zones: list[str]
    up: list[bool] = field(default_factory=list)
    accepted: int = 0
    rejected: int = 0

    def place(self, a: Arrival, replicas: int) -> list[int] | None:
        chosen: list[int] = []
        for _ in range(replicas):
            best = -1
            for h, free in enumerate(self.free_mb):
                if h in chosen or not self.up[h] or free < a.size_mb or self.free_slots[h] <= 0:
                    continue
                if a.zone is not None and self.zones[h] != a.zone:
                    continue
                if best < 0 or free < self.free_mb[best]:
                    best = h
            if best < 0:
                self.rejected += 1
                return None
            chosen.append(best)
        for h in chosen:
            self.free_mb[h] -= a.size_mb
            self.free_slots[h] -= 1
        self.accepted += 1
        return chosen

    def release(self, hosts: list[int], size_mb: int) -> None:
        for h in hosts:
            self.free_mb[h] += size_mb
            self.free_slots[h] += 1


@dataclass
class PlacementMetrics:
    accepted: int = 0
    rejected: int = 0
    latencies: list[float] = field(default_factory=list)
    messages: int = 0
    used_mb_s: float = 0.0
    capacity_mb_s: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)
    invariant_checks: int = 0

    def summary(self, ideal: IdealScheduler) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            if not lat:
                return None
            return lat[min(len(lat) - 1, max(0, math.ceil(p * len(lat)) - 1))]

        decided = self.accepted + self.rejected
        return {
            "accepted": self.accepted,
            "rejected": self.rejected,
            "ideal_accepted": ideal.accepted,
            "ideal_rejected": ideal.rejected,
            "acceptance_vs_ideal": (self.accepted / ideal.accepted) if ideal.accepted else None,
            "utilisation": (self.used_mb_s / self.capacity_mb_s) if self.capacity_mb_s else None,
            "latency_s": {"p50": pct(0.5), "p99": pct(0.99)},
            "msgs_per_placement": (self.messages / decided) if decided else None,
            "rejection_reasons": dict(sorted(self.reasons.items(), key=lambda kv: -kv[1])[:5]),
            "invariant_checks": self.invariant_checks,
        }


def arrivals(stream: PlacementStream, hosts: int, zones: list[str], until: float,
             rng: random.Random) -> list[Arrival]:
    """The whole deployment stream, drawn up front from its own RNG (so the protocol and
    the ideal see the same arrivals whatever either does)."""
    out: list[Arrival] = []
    rate = stream.rate(hosts)
    if rate <= 0:
        return out
    t = stream.start_s
    i = 0
    while True:
        t += rng.expovariate(rate)
        if t >= until:
            return out
        zone = rng.choice(zones) if zones and rng.random() < stream.pinned else None
        out.append(Arrival(i, rng.choice(stream.sizes_mb), rng.expovariate(1.0 / stream.lifetime_s),
                           zone, t))
        i += 1


class PlacementExperiment:
    """Feeds the stream to random entry agents of a running Simulation, runs the ideal
    alongside, checks the invariants at every keep start and sample, and reports."""

    def __init__(self, sim: Any, stream: PlacementStream, rng: random.Random) -> None:
        self.sim = sim
        self.stream = stream
        self.rng = rng
        self.metrics = PlacementMetrics()
        self.arrivals: dict[int, Arrival] = {}
        self.running: dict[tuple[str, int], set[int]] = {}   # (keep, epoch) -> host idx
        self.ideal = IdealScheduler([], [], [])
        self.counters: dict[str, int] = {}
        self._last_sample: float | None = None

    # ---------------------------------------------------------- set-up
    def setup(self) -> None:
        sim = self.sim
        n = len(sim.engine.nodes)
        zones = [sim.site_labels[node.group].get("zone", "") for node in sim.engine.nodes]
        self.ideal = IdealScheduler([self.stream.host_memory_mb] * n,
                                    [self.stream.host_keeps] * n, zones, [True] * n)
        for a in arrivals(self.stream, n, sorted(set(zones)), sim.topology.duration_s,
                          self.rng):
            sim.engine.schedule(a.at, self._arrive, a)

    def attach(self, driver: Any) -> None:
        driver.observer = self.observe
        driver.counters = self.counters

    # ---------------------------------------------------------- stream
    def _arrive(self, a: Arrival) -> None:
        from keepmesh.protocol.effects import Deploy
        from keepmesh.protocol.placement import PlacementSpec, Requirements
        sim = self.sim
        ups = sim.up_indices()
        self.ideal.up = [node.up for node in sim.engine.nodes]
        hosts = self.ideal.place(a, self.stream.replicas)
        if hosts is not None:
            sim.engine.schedule(a.at + a.lifetime_s, self.ideal.release, hosts, a.size_mb)
        if not ups:
            self.metrics.rejected += 1
            return
        entry = sim.engine.nodes[self.rng.choice(ups)]
        self.arrivals[a.request] = a
        spec = PlacementSpec(replicas=self.stream.replicas,
                             labels={"zone": a.zone} if a.zone is not None else {}, spread=None)
        req = Requirements(a.size_mb, spec)
        entry.proto.node.command(Deploy(a.request, f"k{a.request}", b"", req), sim.engine.now)
        sim.engine.pump(entry)

    def observe(self, driver: Any, item: Any) -> None:
        from keepmesh.protocol.effects import PlacementDone, PlacementFailed, StartKeep
        now = self.sim.engine.now
        if isinstance(item, PlacementDone):
            self.metrics.accepted += 1
            a = self.arrivals.pop(item.request, None)
            if a is not None:
                self.metrics.latencies.append(now - a.at)
        elif isinstance(item, PlacementFailed):
            self.metrics.rejected += 1
            self.arrivals.pop(item.request, None)
            why = item.reason.split(";")[0][:60]
            self.metrics.reasons[why] = self.metrics.reasons.get(why, 0) + 1
        elif isinstance(item, StartKeep):
            host = self.sim.engine.by_address.get(driver.node.address, -1)
            where = self.running.setdefault((item.keep_id, item.epoch), set())
            # invariants: one instance per (keep, epoch) per host, at most `replicas` of them,
            # and the host's lease table never over-committed
            assert host not in where, f"keep {item.keep_id} epoch {item.epoch} started twice"
            where.add(host)
            assert len(where) <= self.stream.replicas, f"keep {item.keep_id} over-replicated"
            self._check(driver)
            request = int(item.keep_id[1:])
            a = self.arrivals.get(request)
            life = a.lifetime_s if a is not None else self.stream.lifetime_s
            self.sim.engine.schedule(now + life, self._depart, driver, item.keep_id,
                                     item.epoch, host)

    def _depart(self, driver: Any, keep: str, epoch: int, host: int) -> None:
        from keepmesh.protocol.effects import Stop
        self.running.get((keep, epoch), set()).discard(host)
        node = self.sim.engine.nodes[host]
        if not node.up or node.proto is not driver:
            return  # crashed meanwhile: its keeps went with it
        try:
            driver.node.command(Stop(keep), self.sim.engine.now)
        except Exception:  # already gone (lease expired before commit cannot happen here)
            return
        self.sim.engine.pump(node)

    # ---------------------------------------------------------- measuring
    def _check(self, driver: Any) -> None:
        machine = self._machine(driver)
        if machine is not None:
            machine.leases.check()
            self.metrics.invariant_checks += 1

    @staticmethod
    def _machine(driver: Any) -> Any:
        from keepmesh.protocol.placement import PlacementMachine
        return driver.node.machine(PlacementMachine) if driver is not None else None

    def sample(self) -> None:
        now = self.sim.engine.now
        used = 0
        cap = 0
        for node in self.sim.engine.nodes:
            if not node.up or node.proto is None:
                continue
            machine = self._machine(node.proto)
            if machine is None:
                continue
            machine.leases.check()
            self.metrics.invariant_checks += 1
            used += sum(lease.memory_mb for lease in machine.leases.leases.values()
                        if lease.committed)
            cap += machine.leases.memory_mb
        if self._last_sample is not None and now >= self.stream.start_s:
            dt = now - self._last_sample
            self.metrics.used_mb_s += used * dt
            self.metrics.capacity_mb_s += cap * dt
        self._last_sample = now

    def summary(self) -> dict[str, Any]:
        self.metrics.messages = self.counters.get("place", 0)
        doc = self.metrics.summary(self.ideal)
        decided = self.metrics.accepted + self.metrics.rejected
        doc["where_msgs_per_placement"] = (self.counters.get("where", 0) / decided
                                           if decided else None)
        doc["offered_load"] = self.stream.load
        doc["arrival_rate_per_s"] = self.stream.rate(len(self.sim.engine.nodes))
        return doc
