"""Compare the real protocol in the simulator with Serf's and SWIM's analytic models.

    .venv/bin/python -m keepmesh.simulations.validation [--sizes 50 100 200] [--out DIR]

Prints a markdown table (pasted into simulations/RESULTS.md) and writes PNG
plots. Why: a simulator that only reproduces itself proves little; matching
(or explaining departures from) published models is the check that both the
protocol and the simulator behave like SWIM/Lifeguard should.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any

from .metrics import SWIM_FIRST_DETECTION_PERIODS, serf_model, serf_rounds_to
from .runner import Simulation, simulate
from .topology import parse_topology


def dissemination_run(n: int, loss: float, seed: int) -> tuple[dict[str, Any], Simulation]:
    """Several single-agent updates after bootstrap, each measured separately."""
    start = min(40.0, max(15.0, n / 100.0 + 15.0))
    events = [{"at_s": start + 6.0 * k, "update": 1} for k in range(5)]
    doc = {"mesh": {"agents": n, "duration_s": start + 36.0, "profile": "lan",
                    "update_at_s": start - 5.0},
           "network": {"latency_ms": 2, "jitter_ms": 1, "loss": loss},
           "event": events}
    return simulate(parse_topology(doc, f"<dissemination {n}>"), seed)


def detection_run(n: int, crashes: int, seed: int) -> tuple[dict[str, Any], Simulation]:
    """One crash at a time, far enough apart that detections do not overlap."""
    start = 20.0
    gap = 15.0
    events = [{"at_s": start + gap * k, "crash": 1} for k in range(crashes)]
    doc = {"mesh": {"agents": n, "duration_s": start + gap * crashes + 10.0,
                    "profile": "lan"},
           "network": {"latency_ms": 2, "jitter_ms": 1, "loss": 0.0},
           "event": events}
    return simulate(parse_topology(doc, f"<detection {n}>"), seed)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--detect-agents", type=int, default=100)
    ap.add_argument("--crashes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="simulations/results")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(args.out, exist_ok=True)
    rows = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n in args.sizes:
        rep, sim = dissemination_run(n, args.loss, args.seed)
        ad = sim.adapter
        tracks = [u for u in sim.metrics.all_updates() if u.kind == "update"]
        t999 = [sim.metrics.dissemination_time(u, 0.999) for u in tracks]
        t50 = [sim.metrics.dissemination_time(u, 0.5) for u in tracks]
        ok999 = [x for x in t999 if x is not None]
        ok50 = [x for x in t50 if x is not None]
        model999 = serf_rounds_to(n, ad.gossip_nodes, 0.999) * ad.gossip_interval
        model50 = serf_rounds_to(n, ad.gossip_nodes, 0.5) * ad.gossip_interval
        rows.append({
            "agents": n, "loss": args.loss, "updates": len(tracks),
            "reached_999": len(ok999),
            "measured_50_s": statistics.median(ok50) if ok50 else None,
            "model_50_s": model50,
            "measured_999_median_s": statistics.median(ok999) if ok999 else None,
            "measured_999_max_s": max(ok999) if ok999 else None,
            "model_999_s": model999,
            "msgs_per_agent_s": rep["metrics"]["msgs_per_agent_s"],
            "wall_s": rep["wall_s"], "trace_hash": rep["trace_hash"],
        })
        if tracks and tracks[0].times:
            u = tracks[0]
            xs = sorted(u.times)
            line = ax.step(xs, [(i + 1) / u.effective_target for i in range(len(xs))], where="post",
                           label=f"measured N={n}")
            horizon = max(xs[-1], model999) * 1.1
            mx = [horizon * k / 200 for k in range(201)]
            ax.plot(mx, [serf_model(n, ad.gossip_nodes, x / ad.gossip_interval) / n
                         for x in mx], "--", color=line[0].get_color(),
                    label=f"Serf model N={n}")
        print(json.dumps(rows[-1]), file=sys.stderr)
    ax.set_xlabel("seconds since update")
    ax.set_ylabel("fraction of agents informed")
    ax.set_title(f"Dissemination vs Serf model (lan profile, loss {args.loss:g})")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "validation_dissemination.png"), dpi=110)
    plt.close(fig)

    rep, sim = detection_run(args.detect_agents, args.crashes, args.seed)
    ad = sim.adapter
    det = sorted(c.first_suspect - c.at for c in sim.metrics.all_crashes()
                 if c.first_suspect is not None)
    dead = sorted(c.dead_everywhere - c.at for c in sim.metrics.all_crashes()
                  if c.dead_everywhere is not None)
    swim_probe = SWIM_FIRST_DETECTION_PERIODS * ad.probe_interval
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.step(det, [(i + 1) / len(det) for i in range(len(det))], where="post",
            label="measured: crash to first suspicion")
    ax.axvline(swim_probe, color="k", ls="--", label=f"SWIM e/(e-1)·T = {swim_probe:.2f}s")
    ax.axvline(swim_probe + ad.probe_timeout, color="grey", ls=":",
               label=f"+ probe timeout = {swim_probe + ad.probe_timeout:.2f}s")
    ax.set_xlabel("seconds since crash")
    ax.set_ylabel("CDF")
    ax.set_title(f"First detection, N={args.detect_agents}, {len(det)} crashes")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "validation_detection.png"), dpi=110)
    plt.close(fig)
    detection = {
        "agents": args.detect_agents, "crashes": args.crashes, "detected": len(det),
        "mean_s": statistics.fmean(det) if det else None,
        "p50_s": statistics.median(det) if det else None,
        "max_s": max(det) if det else None,
        "swim_expected_probe_s": swim_probe,
        "swim_expected_suspect_s": swim_probe + ad.probe_timeout,
        "dead_everywhere_p50_s": statistics.median(dead) if dead else None,
        "dead_everywhere_max_s": max(dead) if dead else None,
        "false_positives": rep["metrics"]["false_positives"],
        "trace_hash": rep["trace_hash"],
    }
    result = {"dissemination": rows, "detection": detection}
    with open(os.path.join(args.out, "validation.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    print("| N | loss | median t50 (s) | Serf t50 (s) | median t99.9 (s) | max t99.9 (s) "
          "| Serf t99.9 (s) | reached 99.9% | msgs/agent/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['agents']} | {r['loss']:g} | {_f(r['measured_50_s'])} | "
              f"{_f(r['model_50_s'])} | {_f(r['measured_999_median_s'])} | "
              f"{_f(r['measured_999_max_s'])} | {_f(r['model_999_s'])} | "
              f"{r['reached_999']}/{r['updates']} | {r['msgs_per_agent_s']:.1f} |")
    print()
    d = detection
    print("| N | crashes | detected | mean (s) | p50 (s) | max (s) | SWIM e/(e-1)T (s) "
          "| + timeout (s) | dead everywhere p50/max (s) | false positives |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {d['agents']} | {d['crashes']} | {d['detected']} | {_f(d['mean_s'])} | "
          f"{_f(d['p50_s'])} | {_f(d['max_s'])} | {_f(d['swim_expected_probe_s'])} | "
          f"{_f(d['swim_expected_suspect_s'])} | {_f(d['dead_everywhere_p50_s'])} / "
          f"{_f(d['dead_everywhere_max_s'])} | {d['false_positives']} |")
    return 0


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


if __name__ == "__main__":
    sys.exit(main())
