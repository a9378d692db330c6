"""Placement quality and cost in the simulator, against the greedy ideal of the same run.

One command, one JSON document:

    .venv/bin/python bench/placement.py [--load-agents 50] [--loads 0.5 0.8 0.95]
        [--duration 60] [--agents 100 300 1000 3000] [--scale-load 0.8]
        [--scale-duration 12] [--scale-lifetime 4] [--seed 1] [--out DIR]

Two experiments on simulations/topologies/placement.toml (three sites 40/40/20%,
1 GiB and 16 keep slots per host, 64/128/256 MiB keeps, 20% pinned to a site):

1. **Quality against load** (at `--load-agents`, the topology's own conditions:
   `--duration`, lifetime min(30 s, duration/4), its crash events): for each
   offered load, accepted / ideal_accepted, where the ideal is a centralised
   greedy best-fit scheduler fed the same arrivals, lifetimes and live hosts in
   the same run; also each side's acceptance rate (accepted / decided).
2. **Cost against N** (`--agents`, all at `--scale-load`, with the SAME
   conditions per size: `--scale-duration` simulated seconds, exponential
   lifetime mean `--scale-lifetime`, arrivals from 1 s, no crash events; the
   arrival rate is proportional to N, so every size sees the same offered load
   per host and the same number of keep lifetimes): negotiation messages per
   placement, location gossip messages per placement, their ratio to the
   smallest N (flat = 1.0), the spread max/min - 1 (target <= 0.10 from N = 100
   to 3,000), and least-squares fits `a * N^b` (and, for the location gossip,
   whose retransmissions grow with log2 N by design, `a + c * log2 N`).

The short lifetime is what makes N = 3,000 affordable: the number of placements
is (offered load x host memory / mean size) x N x duration / lifetime, so the
conditions per host stay those of the load experiment while each size costs
O(N) placements. Each size runs in its own process (memory is returned).
`--out DIR` also writes bench.json and the placement plots
(simulations/plots.py `write_placement_plots`), and keeps every finished
configuration under DIR/runs/: a rerun with the same --out reuses them (a run
is a pure function of its configuration and seed), so sizes can be added later.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from keepmesh.simulations.runner import simulate
from keepmesh.simulations.topology import GroupSpec, load_topology

sys.path.insert(0, str(Path(__file__).resolve().parent))
from simulator import line_fit, power_fit  # noqa: E402  (bench/simulator.py: the same fit)

TOPOLOGY = Path(__file__).resolve().parent.parent / "simulations/topologies/placement.toml"


def run(agents: int, load: float, duration: float, seed: int, lifetime: float | None = None,
        start: float | None = None, crashes: bool = True) -> dict[str, Any]:
    """One simulation of the placement topology, resized; its `placement` report."""
    topo = load_topology(TOPOLOGY)
    share = [g.agents / topo.agents for g in topo.groups]
    counts = [max(1, int(agents * s)) for s in share]
    counts[0] += agents - sum(counts)
    topo.groups = [GroupSpec(g.name, n, g.labels, g.intra) for g, n in zip(topo.groups, counts,
                                                                            strict=True)]
    topo.agents = agents
    topo.duration_s = duration
    topo.events = [dataclasses.replace(e, at_s=min(e.at_s, duration / 2)) for e in topo.events] \
        if crashes else []
    assert topo.placement is not None
    life = min(topo.placement.lifetime_s, duration / 4) if lifetime is None else lifetime
    topo.placement = dataclasses.replace(
        topo.placement, load=load, lifetime_s=life,
        start_s=topo.placement.start_s if start is None else start)
    cpu0 = time.process_time()
    report, _ = simulate(topo, seed)
    p = dict(report["placement"])
    decided = p["accepted"] + p["rejected"]
    ideal_decided = p["ideal_accepted"] + p["ideal_rejected"]
    p.update({
        "agents": agents, "duration_s": duration, "lifetime_s": life,
        "crash_events": len(topo.events),
        "acceptance_rate": p["accepted"] / decided if decided else None,
        "ideal_acceptance_rate": p["ideal_accepted"] / ideal_decided if ideal_decided else None,
        "trace_hash": report["trace_hash"], "wall_s": round(report["wall_s"], 1),
        "cpu_s": round(time.process_time() - cpu0, 1), "events": report["events"],
        "protocol_errors": report["protocol_errors"]})
    return p


def log_fit(xs: list[float], ys: list[float]) -> dict[str, float] | None:
    """Least-squares y = a + c log2 x (the location gossip's retransmission law)."""
    fit = line_fit([(math.log2(x), y) for x, y in zip(xs, ys, strict=True) if x > 0])
    if fit is None:
        return None
    a, c, r2 = fit
    return {"intercept": round(a, 3), "per_log2_n": round(c, 3), "r2": round(r2, 4)}


def child(spec: dict[str, Any], cache: Path | None) -> dict[str, Any]:
    """Run one configuration in a fresh process (a 3,000-agent mesh takes GBs).

    With `cache` (DIR/runs under --out), a configuration already finished there is
    read back instead of run again: a run is a pure function of its configuration
    (its trace hash shows it), so an interrupted bench resumes where it stopped.
    """
    key = json.dumps(spec, sort_keys=True)
    name = "_".join(f"{k}-{spec[k]}" for k in sorted(spec)) + ".json"
    if cache is not None and (cache / name).is_file():
        cached: dict[str, Any] = json.loads((cache / name).read_text())
        if cached.get("config") == key:
            return cached
    proc = subprocess.run([sys.executable, __file__, "--one", key],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(f"bench/placement.py: {spec} failed: {tail}")
    out: dict[str, Any] = json.loads(proc.stdout)
    out["config"] = key
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        (cache / name).write_text(json.dumps(out, sort_keys=True))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--load-agents", type=int, default=50)
    ap.add_argument("--loads", type=float, nargs="*", default=[0.5, 0.8, 0.95])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--agents", type=int, nargs="*", default=[100, 300, 1000, 3000])
    ap.add_argument("--scale-load", type=float, default=0.8)
    ap.add_argument("--scale-duration", type=float, default=12.0)
    ap.add_argument("--scale-lifetime", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="also write bench.json and the placement plots here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child: one configuration (JSON)
    args = ap.parse_args(argv)
    if args.one is not None:
        json.dump(run(**json.loads(args.one)), sys.stdout)
        return 0
    if args.load_agents < 2 or any(n < 2 for n in args.agents) or args.duration <= 0 or \
            args.scale_duration <= 1.0 or args.scale_lifetime <= 0 or \
            not all(0 < x <= 10 for x in [*args.loads, args.scale_load]):
        ap.error("sizes must be >= 2 agents, durations and lifetimes > 0 (scale > 1 s), "
                 "loads in (0, 10]")
    cache = Path(args.out) / "runs" if args.out else None
    by_load = {f"{load:g}": child({"agents": args.load_agents, "load": load,
                                   "duration": args.duration, "seed": args.seed}, cache)
               for load in args.loads}
    sizes = sorted(set(args.agents))
    by_n = {str(n): child({"agents": n, "load": args.scale_load,
                           "duration": args.scale_duration, "seed": args.seed,
                           "lifetime": args.scale_lifetime, "start": 1.0, "crashes": False},
                          cache)
            for n in sizes}
    doc: dict[str, Any] = {
        "benchmark": "placement", "topology": TOPOLOGY.name, "seed": args.seed,
        "quality": {"agents": args.load_agents, "duration_s": args.duration,
                    "acceptance_vs_ideal": {k: v["acceptance_vs_ideal"]
                                            for k, v in by_load.items()},
                    "targets": {"0.8": 0.95, "0.95": 0.88}},
        "by_load": by_load,
    }
    if by_n:
        ns = [float(n) for n in sizes]
        msgs = [by_n[str(n)]["msgs_per_placement"] or 0.0 for n in sizes]
        where = [by_n[str(n)]["where_msgs_per_placement"] or 0.0 for n in sizes]
        base = msgs[0] or 1.0
        doc["scaling"] = {
            "load": args.scale_load, "duration_s": args.scale_duration,
            "lifetime_s": args.scale_lifetime, "agents": sizes,
            "msgs_per_placement": dict(zip(map(str, sizes), msgs, strict=True)),
            "msgs_per_placement_vs_smallest_n": {str(n): m / base
                                                 for n, m in zip(sizes, msgs, strict=True)},
            "msgs_per_placement_spread": (max(msgs) / min(msgs) - 1.0) if min(msgs) > 0
            else None,
            "target_spread": 0.10,
            "fit_msgs_per_placement": power_fit(ns, msgs),
            "where_msgs_per_placement": dict(zip(map(str, sizes), where, strict=True)),
            "fit_where_power": power_fit(ns, where),
            "fit_where_log2": log_fit(ns, where),
        }
    doc["by_agents"] = by_n
    if args.out:
        from keepmesh.simulations.plots import write_placement_plots
        Path(args.out).mkdir(parents=True, exist_ok=True)
        with open(Path(args.out) / "bench.json", "w") as fh:
            json.dump(doc, fh, indent=2, sort_keys=True)
        doc["plots"] = write_placement_plots(doc, args.out)
    json.dump(doc, sys.stdout, indent=2, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
