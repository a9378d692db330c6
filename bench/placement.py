"""Placement quality and cost in the simulator, against the greedy ideal of the same run.

One command, one JSON document:

    .venv/bin/python bench/placement.py [--agents 50 200] [--loads 0.5 0.8 0.95]
                                        [--duration 60] [--seed 1]

For each offered load (at the first N): accepted / ideal_accepted (the ratio
against a centralised greedy best-fit scheduler fed the same arrivals in the
same run), utilisation, latency p50/p99, negotiation messages per placement.
For each N (at the first load): messages per placement, and its ratio to the
smallest N (flat = 1.0). Topology: simulations/topologies/placement.toml with
mesh size, duration and load overridden.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from keepmesh.simulations.runner import simulate
from keepmesh.simulations.topology import GroupSpec, load_topology

TOPOLOGY = Path(__file__).resolve().parent.parent / "simulations/topologies/placement.toml"


def run(agents: int, load: float, duration: float, seed: int) -> dict[str, Any]:
    topo = load_topology(TOPOLOGY)
    share = [g.agents / topo.agents for g in topo.groups]
    counts = [max(1, int(agents * s)) for s in share]
    counts[0] += agents - sum(counts)
    topo.groups = [GroupSpec(g.name, n, g.labels, g.intra) for g, n in zip(topo.groups, counts,
                                                                            strict=True)]
    topo.agents = agents
    topo.duration_s = duration
    topo.events = [dataclasses.replace(e, at_s=min(e.at_s, duration / 2)) for e in topo.events]
    topo.placement = dataclasses.replace(topo.placement, load=load,
                                         lifetime_s=min(topo.placement.lifetime_s, duration / 4))
    report, _ = simulate(topo, seed)
    p = dict(report["placement"])
    p["agents"] = agents
    p["trace_hash"] = report["trace_hash"]
    p["wall_s"] = round(report["wall_s"], 1)
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--loads", type=float, nargs="+", default=[0.5, 0.8, 0.95])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    n0 = args.agents[0]
    by_load = {str(load): run(n0, load, args.duration, args.seed) for load in args.loads}
    by_n = {str(n0): by_load[str(args.loads[0])]}
    for n in args.agents[1:]:
        by_n[str(n)] = run(n, args.loads[0], args.duration, args.seed)
    base = by_n[str(n0)]["msgs_per_placement"] or 1.0
    doc = {
        "topology": str(TOPOLOGY.name), "seed": args.seed, "duration_s": args.duration,
        "acceptance_vs_ideal": {k: v["acceptance_vs_ideal"] for k, v in by_load.items()},
        "msgs_per_placement_vs_smallest_n": {k: (v["msgs_per_placement"] or 0.0) / base
                                             for k, v in by_n.items()},
        "by_load": by_load, "by_agents": by_n,
    }
    json.dump(doc, sys.stdout, indent=2, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
