"""Simulator throughput: events and messages per wall second at 1k (and optionally 10k) agents.

One command, one JSON document on stdout:

    .venv/bin/python bench/simulator.py [--agents 100 1000 [10000]] [--duration 30] [--seed 1]

Runs the REAL membership protocol (lan profile, simulation-only keyring) on a
single-LAN topology with 1% loss and a crash of 1% of agents half way. The
baseline is the first (smallest) size measured in the same run; ratios show
how per-event cost grows with N. `extrapolated_10k_600s_wall_s` scales the
measured cost per agent-second linearly (a lower bound: per-message work grows
with log N and push-pull state grows with N).
"""

from __future__ import annotations

import argparse
import json
import sys

from keepmesh.simulations.runner import simulate
from keepmesh.simulations.topology import parse_topology


def one(agents: int, duration: float, seed: int, bootstrap: str) -> dict[str, object]:
    doc = {
        "mesh": {"agents": agents, "duration_s": duration, "profile": "lan",
                 "bootstrap": bootstrap},
        "network": {"latency_ms": 2, "jitter_ms": 1, "loss": 0.01},
        "event": [{"at_s": duration / 2, "crash": max(1, agents // 100)}],
    }
    topo = parse_topology(doc, f"<bench {agents}>")
    rep, _ = simulate(topo, seed)
    m = rep["metrics"]
    assert isinstance(m, dict)
    wall = float(rep["wall_s"])
    msgs = rep["messages"]["sent"]
    agent_s = agents * duration
    return {
        "agents": agents, "simulated_s": duration, "wall_s": round(wall, 2),
        "events": rep["events"], "events_per_s": round(float(rep["events_per_s"] or 0), 1),
        "messages": msgs, "messages_per_s": round(msgs / wall, 1),
        "wall_us_per_agent_s": round(wall / agent_s * 1e6, 1),
        "msgs_per_agent_s": round(m["msgs_per_agent_s"], 2),
        "trace_hash": rep["trace_hash"],
        "detection_p50_s": (m["detection_s"] or {}).get("p50"),
        "dissemination_999_s": m["dissemination_999_s"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bootstrap", choices=("warm", "join"), default="warm",
                    help="warm: steady state from t=0 (throughput); join: staggered joins")
    args = ap.parse_args()
    runs = [one(n, args.duration, args.seed, args.bootstrap) for n in sorted(args.agents)]
    base = runs[0]
    for r in runs:
        r["events_per_s_ratio_vs_baseline"] = round(
            float(r["events_per_s"]) / float(base["events_per_s"]), 3)  # type: ignore[arg-type]
    worst = max(float(r["wall_us_per_agent_s"]) for r in runs)  # type: ignore[arg-type]
    out = {"benchmark": "simulator", "bootstrap": args.bootstrap,
           "baseline_agents": base["agents"], "runs": runs,
           "extrapolated_10k_600s_wall_s": round(worst * 1e-6 * 10_000 * 600, 0)}
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
