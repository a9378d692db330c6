"""Simulator scaling, measured at several N: CPU and memory growth fitted, nothing extrapolated.

One command, one JSON document on stdout:

    .venv/bin/python bench/simulator.py [--agents 250 500 1000 2000] [--duration 60] [--seed 1]

Each size runs in its own process (so peak RSS belongs to that size alone) on
the REAL membership protocol: lan profile, warm bootstrap, 2 ms +- 1 ms links
with 1% loss, 0.2% of agents crashing half way. What is reported per size:

* `warm_start_cpu_s`: building the agents and the O(N^2) warm start (every
  agent learns every record) -- reported on its own, not mixed into the run;
* `run_cpu_s`: the simulated `duration` after the warm start (process CPU time);
* `rss_after_warm_start_mb`, `peak_rss_mb`, `bytes_per_member_entry`;
* events, messages, the trace hash of the run.

The fit is least squares on log-log over the measured sizes: exponent b of
cost = a * N^b for run CPU per simulated second and for warm-start memory.
Ratios are against the smallest size measured in the same invocation. No
figure is computed for a size that was not run.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from typing import Any


def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def one(agents: int, duration: float, seed: int) -> dict[str, Any]:
    """Measure one size in this process (called in a child by main())."""
    from keepmesh.simulations.runner import Simulation
    from keepmesh.simulations.topology import parse_topology

    doc = {
        "mesh": {"agents": agents, "duration_s": duration, "profile": "lan",
                 "bootstrap": "warm"},
        "network": {"latency_ms": 2, "jitter_ms": 1, "loss": 0.01},
        "event": [{"at_s": duration / 2, "crash": max(1, round(agents * 0.002))}],
    }
    topo = parse_topology(doc, f"<bench {agents}>")
    rss0 = _rss_kb()
    c0, w0 = time.process_time(), time.perf_counter()
    sim = Simulation(topo, seed)
    sim.setup()
    sim.engine.run(0.0)  # t = 0: every agent starts and learns every other (warm start)
    c1, w1 = time.process_time(), time.perf_counter()
    rss1 = _rss_kb()
    rep = sim.run()
    c2, w2 = time.process_time(), time.perf_counter()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    entries = agents * (agents - 1)
    run_cpu = c2 - c1
    return {
        "agents": agents, "simulated_s": duration,
        "warm_start_cpu_s": round(c1 - c0, 3), "warm_start_wall_s": round(w1 - w0, 3),
        "run_cpu_s": round(run_cpu, 3), "run_wall_s": round(w2 - w1, 3),
        "run_cpu_us_per_agent_s": round(run_cpu / (agents * duration) * 1e6, 2),
        "rss_before_mb": round(rss0 / 1024, 1),
        "rss_after_warm_start_mb": round(rss1 / 1024, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "bytes_per_member_entry": round((rss1 - rss0) * 1024 / entries, 1) if entries else None,
        "bytes_per_agent_after_warm_start": round((rss1 - rss0) * 1024 / agents),
        "events": rep["events"],
        "events_per_cpu_s": round(rep["events"] / run_cpu) if run_cpu > 0 else None,
        "messages": rep["messages"]["sent"],
        "msgs_per_agent_s": round(rep["metrics"]["msgs_per_agent_s"], 2),
        "detection_p50_s": (rep["metrics"]["detection_s"] or {}).get("p50"),
        "dissemination_999_s": rep["metrics"]["dissemination_999_s"],
        "false_positives": rep["metrics"]["false_positives"],
        "trace_hash": rep["trace_hash"],
    }


def power_fit(xs: list[float], ys: list[float]) -> dict[str, float] | None:
    """Least-squares fit of log y = log a + b log x; None with fewer than two points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    b = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
    a = my - b * mx
    ss_res = sum((p[1] - (a + b * p[0])) ** 2 for p in pts)
    ss_tot = sum((p[1] - my) ** 2 for p in pts)
    return {"exponent": round(b, 3), "coefficient": math.exp(a),
            "r2": round(1.0 - ss_res / ss_tot, 4) if ss_tot > 0 else 1.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, nargs="+", default=[250, 500, 1000, 2000])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child: measure one size
    args = ap.parse_args()
    if args.one is not None:
        json.dump(one(args.one, args.duration, args.seed), sys.stdout)
        return 0
    sizes = sorted(set(args.agents))
    if any(n < 2 for n in sizes) or args.duration <= 0:
        ap.error("sizes must be >= 2 agents and duration > 0")
    runs = []
    for n in sizes:
        proc = subprocess.run([sys.executable, __file__, "--one", str(n), "--duration",
                               str(args.duration), "--seed", str(args.seed)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            print(f"bench/simulator.py: size {n} failed: {tail}", file=sys.stderr)
            return 1
        runs.append(json.loads(proc.stdout))
    base = runs[0]
    for r in runs:
        r["ratio_vs_baseline"] = {
            "agents": round(r["agents"] / base["agents"], 3),
            "run_cpu_per_agent_s": round(r["run_cpu_us_per_agent_s"]
                                         / base["run_cpu_us_per_agent_s"], 3),
            "warm_start_cpu": round(r["warm_start_cpu_s"] / max(base["warm_start_cpu_s"], 1e-9),
                                    3),
            "memory_after_warm_start": round(
                (r["rss_after_warm_start_mb"] - r["rss_before_mb"])
                / max(base["rss_after_warm_start_mb"] - base["rss_before_mb"], 1e-9), 3),
        }
    ns = [float(r["agents"]) for r in runs]
    out = {
        "benchmark": "simulator", "profile": "lan", "bootstrap": "warm",
        "network": "2 ms +- 1 ms, 1% loss; 0.2% of agents crash at duration/2",
        "duration_s": args.duration, "seed": args.seed, "baseline_agents": base["agents"],
        "fit": {  # cost = coefficient * N^exponent over the sizes measured above
            "run_cpu_s": power_fit(ns, [r["run_cpu_s"] for r in runs]),
            "warm_start_cpu_s": power_fit(ns, [r["warm_start_cpu_s"] for r in runs]),
            "memory_after_warm_start_mb": power_fit(
                ns, [r["rss_after_warm_start_mb"] - r["rss_before_mb"] for r in runs]),
            "peak_rss_mb": power_fit(ns, [r["peak_rss_mb"] for r in runs]),
        },
        "runs": runs,
    }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
