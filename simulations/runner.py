"""Builds a simulation from a topology and a seed, runs it, and reports numbers.

Why one seed: `random.Random(seed)` is the only source of randomness; the
network, the fault script, node identities and every agent's own RNG are
child generators seeded from it in a fixed order, so a run is a pure function
of (topology, seed) and its trace hash proves it.

What is simulated is the REAL keepmesh.protocol.node.MeshNode (membership and
its sub-machines), through `MeshAdapter` and simulations/mesh_driver.py;
tests may pass another adapter to exercise the engine alone.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from .collector import quiet_collector
from .engine import Engine, SimNode
from .faults import apply_event
from .metrics import SWIM_FIRST_DETECTION_PERIODS, Metrics, serf_rounds_to
from .network import LinkSpec, Network
from .shard import MetricsRecorder, Shard
from .topology import Topology

SIM_MEASUREMENT = "5eed" * 16
# "object": simulated agents hand each other the decoded message along with its bytes
# (no re-decoding; sizes, routing and the trace hash are those of the bytes);
# "bytes": every receiver decodes the bytes, as the agent does. Same trace hash (tested).
MODES = ("object", "bytes")
SIM_TCB = "sim-1"


def sim_record(keyring: Any, node_id: bytes, address: str, labels: dict[str, str],
               incarnation: int) -> Any:
    """A simulated agent's signed record (ProtocolError if it could not travel: topology.py
    asks this of each group's labels before anything runs)."""
    from keepmesh.protocol.membership.records import Capacity, Claims, make_record
    return make_record(
        keyring.signer(node_id), address, incarnation,
        claims=Claims(tee="sim", measurement=SIM_MEASUREMENT, tcb=SIM_TCB),
        capacity=Capacity(memory_mb=4096, cpu_milli=4000, free_memory_mb=4096,
                          free_cpu_milli=4000),
        labels=labels)


class ProtocolAdapter(Protocol):
    """How the simulator creates and pokes one protocol instance."""

    probe_interval: float
    probe_timeout: float
    gossip_interval: float
    gossip_nodes: int
    max_packet: int

    def new_identity(self, rng: random.Random) -> bytes: ...

    def create(self, node_id: bytes, address: str, labels: dict[str, str],
               rng: random.Random, now: float, incarnation: int) -> Any: ...

    def incarnation(self, proto: Any) -> int: ...

    def join(self, proto: Any, seeds: list[str], now: float) -> None: ...

    def warm_start(self, members: list[Any], now: float) -> None: ...

    def leave(self, proto: Any, now: float) -> None: ...

    def update(self, proto: Any, labels: dict[str, str], now: float) -> int: ...

    def set_trust(self, proto: Any, subject: bytes, trusted: bool, now: float,
                  reason: str) -> None: ...


class MeshAdapter:
    """Drives keepmesh.protocol.node.MeshNode (membership and its sub-machines) through
    simulations/mesh_driver.py, with the simulation-only keyring.

    One CachingVerifier is shared by every simulated member, so each record
    version is MAC-checked once per process instead of once per member.
    """

    def __init__(self, profile: str, attestation: bool, master: bytes,
                 object_mode: bool = False) -> None:
        from keepmesh.protocol.membership import MembershipConfig
        from keepmesh.protocol.membership.signing import CachingVerifier

        from .keyring import SimulationKeyring

        self.config = MembershipConfig.profile(profile)
        self.attestation = attestation
        self.object_mode = object_mode  # hand decoded messages over with the bytes
        self.keyring = SimulationKeyring(master)
        self.verifier = CachingVerifier(self.keyring.verifier())
        self.probe_interval = self.config.probe_interval
        self.probe_timeout = self.config.probe_timeout
        self.gossip_interval = self.config.gossip_interval
        self.gossip_nodes = self.config.gossip_nodes
        self.max_packet = self.config.max_packet
        self.clock: Callable[[], float] = lambda: 0.0  # set to the engine's clock
        self.placement: Any = None  # PlacementStream: every node gets a PlacementMachine
        self.migration: Any = None  # MigrationExperiment: evidence verdicts reach it too

    def new_identity(self, rng: random.Random) -> bytes:
        return rng.randbytes(32)

    def create(self, node_id: bytes, address: str, labels: dict[str, str],
               rng: random.Random, now: float, incarnation: int) -> Any:
        from keepmesh.protocol.node import MeshNode

        from .mesh_driver import SimMeshDriver

        signer = self.keyring.signer(node_id)
        record = self.record(node_id, address, labels, incarnation)
        node = MeshNode(self.config, record, signer, self.verifier, rng, now,
                        require_attestation=self.attestation)
        if self.placement is not None:
            from keepmesh.protocol.placement import PlacementConfig, PlacementMachine
            # its own RNG, from the identity: membership's random stream stays as it was
            node.add(PlacementMachine(node, random.Random(node_id),
                                      memory_mb=self.placement.host_memory_mb,
                                      max_keeps=self.placement.host_keeps,
                                      config=PlacementConfig(commit_by_entry=True)))
        return SimMeshDriver(node, self.clock, object_mode=self.object_mode)

    def record(self, node_id: bytes, address: str, labels: dict[str, str],
               incarnation: int) -> Any:
        """The signed record a simulated agent starts with (also what another process
        needs of the agents it does not run)."""
        return sim_record(self.keyring, node_id, address, labels, incarnation)

    def incarnation(self, proto: Any) -> int:
        """The incarnation the agent persisted (what a restart reads back)."""
        return int(proto.disk.incarnation)

    def join(self, proto: Any, seeds: list[str], now: float) -> None:
        from keepmesh.protocol.effects import Join
        proto.node.command(Join(tuple(seeds)), now)

    def warm_start(self, members: list[Any], now: float) -> None:
        """Every member learns every other's signed record, already attested: one
        shared base view (each record verified once), adopted by every table.
        `members`, in agent order: a proto, or (id, address, labels) of an agent
        another process runs (its record is rebuilt here, byte for byte)."""
        from keepmesh.protocol.membership import MemberBase
        records = [self.record(m[0], m[1], m[2], 0) if isinstance(m, tuple) else m.node.record
                   for m in members]
        protos = [m for m in members if not isinstance(m, tuple)]
        base = MemberBase.build(records, self.verifier, now)
        for proto in protos:
            proto.node.learn(base, now, trusted=True)

    def leave(self, proto: Any, now: float) -> None:
        from keepmesh.protocol.effects import Leave
        proto.node.command(Leave(), now)

    def update(self, proto: Any, labels: dict[str, str], now: float) -> int:
        from keepmesh.protocol.effects import UpdateLocal
        proto.node.command(UpdateLocal(labels=labels), now)
        return int(proto.node.record.incarnation)

    def set_trust(self, proto: Any, subject: bytes, trusted: bool, now: float,
                  reason: str) -> None:
        """The simulated verifier's verdict, reported like the agent's."""
        from keepmesh.protocol.effects import AttestationVerdict
        proto.node.complete(AttestationVerdict(subject, trusted, None, reason), now)
        if self.migration is not None:
            self.migration.trust(proto, subject, trusted, now)


def build_sites(topo: Topology, rng: random.Random) -> tuple[list[list[LinkSpec]],
                                                             list[dict[str, str]],
                                                             list[str], list[int]]:
    """Link matrix between sites, each site's labels and name, and each agent's site."""
    if topo.groups:
        names = [g.name for g in topo.groups]
        matrix = []
        for i, gi in enumerate(topo.groups):
            row = []
            for j, gj in enumerate(topo.groups):
                if i == j:
                    row.append(topo.links.get((gi.name, gj.name), gi.intra))
                else:
                    row.append(topo.links.get((gi.name, gj.name), topo.default_link))
            matrix.append(row)
        assign = [i for i, g in enumerate(topo.groups) for _ in range(g.agents)]
        return matrix, [dict(g.labels) for g in topo.groups], names, assign
    if topo.graph is not None:
        return _graph_sites(topo, rng)
    return [[topo.default_link]], [{"zone": "default"}], ["default"], [0] * topo.agents


def _graph_sites(topo: Topology, rng: random.Random) -> tuple[list[list[LinkSpec]],
                                                              list[dict[str, str]],
                                                              list[str], list[int]]:
    import networkx as nx

    g = topo.graph
    assert g is not None
    n = int(g["sites"])
    kind = g["kind"]
    seed = rng.getrandbits(32)
    if kind == "full":
        graph = nx.complete_graph(n)
    elif kind == "star":
        graph = nx.star_graph(n - 1)
    elif kind == "scale_free":
        graph = nx.barabasi_albert_graph(n, int(g["m"]), seed=seed)
    elif kind == "tree":
        graph = nx.full_rary_tree(max(1, int(g["m"])), n)
    elif kind == "grid":
        rows = max(1, int(math.isqrt(n)))
        cols = math.ceil(n / rows)
        grid = nx.grid_2d_graph(rows, cols)
        keep = [(r, c) for r in range(rows) for c in range(cols)][:n]
        graph = nx.convert_node_labels_to_integers(grid.subgraph(keep), ordering="sorted")
    else:  # random_geometric, made connected by linking each component to component 0
        graph = nx.random_geometric_graph(n, float(g["radius"]), seed=seed)
        comps = sorted((sorted(c) for c in nx.connected_components(graph)), key=lambda c: c[0])
        for comp in comps[1:]:
            graph.add_edge(comps[0][0], comp[0])
    hops = dict(nx.all_pairs_shortest_path_length(graph))
    hop: LinkSpec = g["hop"]
    by_hops: dict[int, LinkSpec] = {}

    def path(h: int) -> LinkSpec:
        spec = by_hops.get(h)
        if spec is None:
            spec = hop
            for _ in range(h - 1):
                spec = spec.combine(hop)
            spec = topo.default_link.combine(spec)
            by_hops[h] = spec
        return spec

    matrix = [[topo.default_link if i == j else path(hops[i][j]) for j in range(n)]
              for i in range(n)]
    names = [f"site{i}" for i in range(n)]
    if kind == "star":
        # hub holds a share like any site; leaves get the rest round-robin
        assign = [i % n for i in range(topo.agents)]
    else:
        assign = [rng.randrange(n) for _ in range(topo.agents)]
    return matrix, [{"zone": nm} for nm in names], names, assign


class Simulation:
    """One run: world state, fault actions, and the glue between engine, protocol and metrics."""

    def __init__(self, topo: Topology, seed: int,
                 adapter: ProtocolAdapter | None = None, mode: str = "object",
                 shard: Shard | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if shard is not None and (topo.placement is not None or topo.migration is not None):
            raise ValueError("placement and migration experiments run in one process")
        # shard: this process runs only the agents it owns (simulations/parallel.py);
        # every process keeps the whole world (who is up, paused, partitioned)
        self.shard = shard
        self.topology = topo
        self.seed = seed
        self.mode = mode
        root = random.Random(seed)
        self.net_rng = random.Random(root.getrandbits(64))
        self.fault_rng = random.Random(root.getrandbits(64))
        self.id_rng = random.Random(root.getrandbits(64))
        self.node_rng_seeds = random.Random(root.getrandbits(64))
        self.site_rng = random.Random(root.getrandbits(64))
        master = root.randbytes(32)
        self.adapter: ProtocolAdapter = adapter or MeshAdapter(
            topo.profile, topo.attestation, master, object_mode=mode == "object")
        matrix, self.site_labels, self.site_names, self.assign = build_sites(topo, self.site_rng)
        self.site_by_name = {nm: i for i, nm in enumerate(self.site_names)}
        self.network = Network(matrix, self.net_rng, self.adapter.max_packet)
        self.engine = Engine(self.network, object_mode=mode == "object")
        self.engine.on_event = self._on_event
        if isinstance(self.adapter, MeshAdapter):
            self.adapter.clock = lambda: self.engine.now
        self.placement: Any = None
        if topo.placement is not None and isinstance(self.adapter, MeshAdapter):
            from .placement_stream import PlacementExperiment
            self.adapter.placement = topo.placement
            # drawn after every other child RNG, so runs without [placement] are unchanged
            self.placement = PlacementExperiment(self, topo.placement,
                                                 random.Random(root.getrandbits(64)))
        self.migration: Any = None
        if topo.migration is not None and isinstance(self.adapter, MeshAdapter):
            from .migration_experiment import MigrationExperiment
            # drawn last, so runs without [migration] are unchanged
            self.migration = MigrationExperiment(self, topo.migration,
                                                 random.Random(root.getrandbits(64)))
            self.adapter.migration = self.migration
        self.metrics = Metrics(topo.agents)  # read by reports and plots
        # where measurements go: the Metrics itself, or (sharded) a recorder whose calls
        # worker 0 replays into its Metrics in one-process order (shard.py)
        self.metrics_input: Metrics | MetricsRecorder = self.metrics
        if shard is not None:
            self.metrics_input = MetricsRecorder(shard, self.engine,
                                                 self.metrics if shard.index == 0 else None)
        self.tee_bad: list[bool] = []
        self.restarted_at: list[float] = []
        self.incarnations: list[int] = []
        self.up_count = 0
        self.up_untrusted = 0  # up agents whose TEE failed: every observer excludes them
        self.started = 0
        self._agent_s = 0.0
        self._agent_s_t = 0.0
        self.update_rev = 0
        cfg = getattr(self.adapter, "config", None)
        # A suspicion may legitimately outlive the fault that caused it by its
        # longest timeout; dead declarations inside that window are attributed
        # to the partition/pause, not counted as false positives.
        self.grace_s = (cfg.suspicion_min(topo.agents) * cfg.suspicion_max_timeout_mult
                        if cfg is not None else 10.0 * self.adapter.probe_interval)
        self.join_window = min(topo.duration_s * 0.1, max(1.0, topo.agents / 100.0))

    # ---------------------------------------------------------- building

    def _new_node(self, site: int) -> SimNode:
        idx = len(self.engine.nodes)
        node_id = self.adapter.new_identity(self.id_rng)
        while node_id in self.engine.by_id:
            node_id = self.adapter.new_identity(self.id_rng)
        address = f"10.{idx >> 16 & 255}.{idx >> 8 & 255}.{idx & 255}:7946"
        self.tee_bad.append(False)
        self.restarted_at.append(-math.inf)
        self.incarnations.append(0)
        self.metrics_input.ensure(idx + 1)
        node = self.engine.add_node(address, site, None, node_id, group=site)
        node.up = False
        node.local = self.shard is None or self.shard.owns(idx)
        return node

    def _start(self, node: SimNode, incarnation: int, seeds: list[str]) -> None:
        now = self.engine.now
        rng = random.Random(self.node_rng_seeds.getrandbits(64) ^ node.idx)
        self._count_agents()
        self.up_count += 1
        if self.tee_bad[node.idx]:
            self.up_untrusted += 1
        self.started += 1
        if not node.local:
            self.engine.restart(node, None)  # another process runs it: world flags only
            return
        labels = dict(self.site_labels[node.group])
        proto = self.adapter.create(node.node_id, node.address, labels, rng, now, incarnation)
        if seeds:
            self.adapter.join(proto, seeds, now)
        if self.placement is not None:
            self.placement.attach(proto)
        if self.migration is not None:
            self.migration.attach(proto, node.idx, node.node_id, node.address, now)
        self.engine.restart(node, proto)

    def _count_agents(self) -> None:
        now = self.engine.now
        self._agent_s += self.up_count * (now - self._agent_s_t)
        self._agent_s_t = now

    def setup(self) -> None:
        """Create agents and schedule staggered joins, scripted events and measurements."""
        topo = self.topology
        nodes = [self._new_node(site) for site in self.assign]
        if topo.bootstrap == "warm":
            self.join_window = 0.0
            self.engine.schedule(0.0, self._warm_start, nodes)
        else:
            self._schedule_joins(nodes)
        for ev in topo.events:
            self.engine.schedule(ev.at_s, apply_event, self, ev)
        if self.placement is not None:
            self.placement.setup()
        if self.migration is not None:
            self.migration.setup()
        probe_at = topo.update_at_s
        if probe_at is None:
            probe_at = min(topo.duration_s * 0.3,
                           self.join_window + 20.0 * self.adapter.probe_interval)
        self.engine.schedule(probe_at, self._probe_update)
        t = 0.0
        while t <= topo.duration_s:
            self.engine.schedule(t, self._sample)
            t += topo.sample_interval_s

    def _schedule_joins(self, nodes: list[SimNode]) -> None:
        # Staggered bootstrap: agent 0 founds the mesh, the others join through
        # `seeds` agents that started before them (as an operator would list).
        starts = sorted(self.fault_rng.uniform(0.0, self.join_window) for _ in nodes[1:])
        self.engine.schedule(0.0, self._start, nodes[0], 0, [])
        for k, node in enumerate(nodes[1:], start=1):
            self.engine.schedule(starts[k - 1], self._bootstrap_join, node, k)

    def _warm_start(self, nodes: list[SimNode]) -> None:
        for node in nodes:
            self._start(node, 0, [])
        self.adapter.warm_start(
            [n.proto if n.local else (n.node_id, n.address, dict(self.site_labels[n.group]))
             for n in nodes], self.engine.now)
        for node in nodes:
            if not node.local:
                continue  # learn() moved their deadlines: re-arm every timer
            self.engine.pump(node)

    def _bootstrap_join(self, node: SimNode, k: int) -> None:
        nodes = self.engine.nodes
        earlier = [i for i in range(max(0, k - 256), k) if nodes[i].up]
        n = min(self.topology.seeds, len(earlier))
        picks = self.fault_rng.sample(earlier, n) if n else []
        self._start(node, 0, [self.engine.nodes[i].address for i in picks])

    def _probe_update(self) -> None:
        victims = self.pick(1, None)
        if victims:
            self.update(victims[0], kind="probe")
            self.metrics_input.mark(self.engine.now, "update probe")

    def _sample(self) -> None:
        self.metrics_input.sample_view(self.engine.now, self.up_indices())
        if self.placement is not None:
            self.placement.sample()

    # ------------------------------------------------------ world queries

    def up(self, idx: int) -> bool:
        return self.engine.nodes[idx].up

    def paused(self, idx: int, now: float | None = None) -> bool:
        """Paused now, or recently enough that a suspicion raised during the pause may end now."""
        node = self.engine.nodes[idx]
        t = self.engine.now if now is None else now
        return node.pending is not None or t < node.paused_until + self.grace_s

    def excuse(self, observer: int, subject: int, now: float | None = None) -> str:
        """Why declaring a live agent dead at `now` (default: the engine's) is not a false
        positive ("" if it is one). A parallel run asks after its window: hence `now`."""
        t = self.engine.now if now is None else now
        if self.tee_bad[subject]:
            return "untrusted"  # excluded on purpose after its attestation failed
        if not self.reachable(observer, subject, t):
            return "partition"
        if self.paused(subject, t):
            return "pause"
        if t < self.restarted_at[subject] + self.grace_s:
            return "restart"  # news about the instance that crashed, still draining
        return ""

    def reachable(self, a: int, b: int, now: float | None = None) -> bool:
        """Reachable now and not split by a partition healed within the suspicion grace."""
        t = self.engine.now if now is None else now
        return self.network.can_reach(a, b) and not self.network.split_since(
            a, b, t - self.grace_s)

    def n_up(self) -> int:
        return self.up_count

    def up_indices(self) -> list[int]:
        return [n.idx for n in self.engine.nodes if n.up]

    def expected_observers(self) -> list[int]:
        """Agents a crash waits on to be dead everywhere: up, and not cut off by a TEE
        fault (every observer excludes those on purpose, so they never hear of it)."""
        bad = self.tee_bad
        return [n.idx for n in self.engine.nodes if n.up and not bad[n.idx]]

    def n_expected_observers(self) -> int:
        return self.up_count - self.up_untrusted

    def crashed_indices(self, group: str | None) -> list[int]:
        gi = None if group is None else self.site_by_name[group]
        return [n.idx for n in self.engine.nodes
                if not n.up and n.crashed_at is not None and not n.left
                and (gi is None or n.group == gi)]

    def pick(self, k: int, group: str | None) -> list[int]:
        gi = None if group is None else self.site_by_name[group]
        cands = [n.idx for n in self.engine.nodes
                 if n.up and n.pending is None and (gi is None or n.group == gi)]
        if k >= len(cands):
            return cands
        return sorted(self.fault_rng.sample(cands, k))

    # ------------------------------------------------------------ actions

    def _on_event(self, node: SimNode, ev: Any, now: float) -> None:
        subject = self.engine.by_id.get(ev.node_id, -1)
        if ev.kind == "attest":
            trusted = subject >= 0 and not self.tee_bad[subject]
            self.metrics_input.attested(node.idx, trusted)
            self.adapter.set_trust(node.proto, ev.node_id, trusted, now,
                                   "" if trusted else "simulated attestation failure")
        self.metrics_input.on_event(node.idx, subject, ev.kind, ev.incarnation, now, self)
        if self.migration is not None and ev.kind in ("join", "alive", "update") and \
                subject >= 0:
            # the simulated verifier vouched for it: migration gets its verified evidence
            self.migration.trust(node.proto, ev.node_id, not self.tee_bad[subject], now)

    def crash(self, idx: int) -> None:
        node = self.engine.nodes[idx]
        if not node.up:
            return
        if node.local:
            self.incarnations[idx] = self.adapter.incarnation(node.proto)
        self._count_agents()
        self.up_count -= 1
        if self.tee_bad[idx]:
            self.up_untrusted -= 1
        self.engine.crash(node)
        node.proto = None
        if self.migration is not None:
            self.migration.on_crash(idx, self.engine.now)
        self.metrics_input.crash(idx, self.engine.now)
        self.metrics_input.departed(idx, self.engine.now, self)

    def restart(self, idx: int) -> None:
        """Same identity and persisted incarnation + 1, rejoining through live seeds."""
        node = self.engine.nodes[idx]
        if node.up:
            return
        self.metrics_input.revived(idx)
        self.restarted_at[idx] = self.engine.now
        self._start(node, self.incarnations[idx] + 1, self._seeds(exclude=idx))

    def leave(self, idx: int) -> None:
        node = self.engine.nodes[idx]
        if not node.up:
            return
        if node.local:
            self.adapter.leave(node.proto, self.engine.now)
            self.engine.pump(node)
        linger = max(1.0, 5.0 * self.adapter.gossip_interval)
        self.engine.schedule(self.engine.now + linger, self._stop_left, node)

    def _stop_left(self, node: SimNode) -> None:
        if not node.up:
            return
        self._count_agents()
        self.up_count -= 1
        if self.tee_bad[node.idx]:
            self.up_untrusted -= 1
        self.engine.crash(node)
        node.left = True
        node.crashed_at = None
        node.proto = None
        self.metrics_input.departed(node.idx, self.engine.now, self)

    def join_new(self, group: str | None) -> None:
        if group is not None:
            site = self.site_by_name[group]
        else:
            site = self.assign[self.fault_rng.randrange(len(self.assign))]
        node = self._new_node(site)
        self._start(node, 0, self._seeds(exclude=node.idx))

    def _seeds(self, exclude: int) -> list[str]:
        ups = [i for i in self.up_indices() if i != exclude]
        n = min(self.topology.seeds, len(ups))
        return [self.engine.nodes[i].address for i in self.fault_rng.sample(ups, n)]

    def update(self, idx: int, kind: str = "update") -> None:
        node = self.engine.nodes[idx]
        if not node.up:
            return
        self.update_rev += 1
        labels = dict(self.site_labels[node.group])
        labels["rev"] = str(self.update_rev)
        inc = self.adapter.update(node.proto, labels, self.engine.now) if node.local else -1
        # Agents whose attestation failed are excluded by every observer on purpose: they
        # never learn later updates, so they are not among those expected to.
        bad = self.tee_bad
        eligible = bytearray(1 if n.up and not bad[n.idx] else 0 for n in self.engine.nodes)
        self.metrics_input.update(idx, inc, self.engine.now, eligible, kind=kind)
        if node.local:
            self.engine.pump(node)

    def tee_fault(self, idx: int, reason: str) -> None:
        """Every observer's re-attestation of `idx` fails, spread over one probe period."""
        if not self.tee_bad[idx] and self.engine.nodes[idx].up:
            self.up_untrusted += 1
        self.tee_bad[idx] = True
        # cut off from now on: it learns no pending update, nor that a crashed agent is dead
        self.metrics_input.departed(idx, self.engine.now, self)
        subject = self.engine.nodes[idx].node_id
        spread = self.adapter.probe_interval
        for obs in self.up_indices():
            if obs != idx:
                self.engine.schedule(self.engine.now + self.fault_rng.uniform(0.0, spread),
                                     self._distrust, obs, subject, reason)

    def _distrust(self, obs: int, subject: bytes, reason: str) -> None:
        node = self.engine.nodes[obs]
        if node.up and node.local:
            self.adapter.set_trust(node.proto, subject, False, self.engine.now, reason)
            self.engine.pump(node)

    def partition(self, value: float | tuple[str, ...]) -> None:
        nodes = self.engine.nodes
        if isinstance(value, tuple):
            side_sites = {self.site_by_name[nm] for nm in value}
            sides = {n.idx: 1 for n in nodes if n.group in side_sites}
        else:
            order = list(range(len(nodes)))
            self.fault_rng.shuffle(order)
            cut = int(round(value * len(order)))
            sides = {i: 1 for i in order[:cut]}
        self.network.partition(sides)

    # --------------------------------------------------------------- run

    def run(self, progress: Callable[[float], None] | None = None) -> dict[str, Any]:
        if not self.engine.nodes:
            self.setup()
        wall0 = time.perf_counter()
        self.engine.run(0.0, progress)  # t = 0: the warm start builds every table
        with quiet_collector():  # which the collector then never walks again
            self.engine.run(self.topology.duration_s, progress)
        wall = time.perf_counter() - wall0
        self._count_agents()
        return self.report(wall)

    def report(self, wall: float) -> dict[str, Any]:
        eng = self.engine
        topo = self.topology
        agent_s = max(self._agent_s, 1e-9)
        summary = self.metrics.summary()
        n = max(1, topo.agents)
        rounds = serf_rounds_to(n, self.adapter.gossip_nodes, 0.999)
        metrics: dict[str, Any] = {
            "dissemination_999_s": summary.pop("dissemination_999_s"),
            "detection_s": summary.pop("detection_s"),
            "dead_everywhere_s": summary.pop("dead_everywhere_s"),
            "false_positives": summary.pop("false_positives"),
            "msgs_per_agent_s": eng.sent / agent_s,
            "bytes_per_agent_s": eng.bytes_sent / agent_s,
        }
        metrics.update(summary)
        metrics["model"] = {
            "serf_dissemination_999_s": rounds * self.adapter.gossip_interval,
            "swim_first_detection_s": SWIM_FIRST_DETECTION_PERIODS * self.adapter.probe_interval,
            "swim_first_suspicion_s": (SWIM_FIRST_DETECTION_PERIODS * self.adapter.probe_interval
                                       + self.adapter.probe_timeout),
        }
        return {
            "trace_hash": eng.trace_hash(),
            "seed": self.seed,
            "topology": topo.path,
            "profile": topo.profile,
            "agents": topo.agents,
            "agents_started": self.started,
            "agents_up_at_end": self.up_count,
            "simulated_s": topo.duration_s,
            "wall_s": wall,
            "mode": self.mode,
            "workers": 1,  # parallel.py: how many processes ran it
            "events": eng.steps,
            "events_per_s": eng.steps / wall if wall > 0 else None,
            "stale_timers": eng.stale_timers,
            "idle_timers": eng.idle_timers,
            "handed_over": eng.handed_over,
            "messages": eng.conservation(),
            "dropped_by_reason": dict(sorted(eng.dropped.items())),
            "bytes_sent": eng.bytes_sent,
            "protocol_errors": eng.protocol_errors,
            "bootstrap": {"mode": topo.bootstrap, "window_s": self.join_window,
                          "seeds_per_join": topo.seeds},
            "metrics": metrics,
            **({"placement": self.placement.summary()} if self.placement is not None else {}),
            **({"migration": self.migration.summary()} if self.migration is not None else {}),
        }


def simulate(topo: Topology, seed: int, adapter: ProtocolAdapter | None = None,
             progress: Callable[[float], None] | None = None,
             mode: str = "object") -> tuple[dict[str, Any], Simulation]:
    sim = Simulation(topo, seed, adapter, mode)
    sim.setup()
    return sim.run(progress), sim
