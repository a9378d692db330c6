"""`keepmesh simulate TOPOLOGY.toml [--seed N] [--set KEY=VALUE ...] [--mode object|bytes]
[--workers N] [--out DIR] [--json]`.

Runs the deterministic simulator (keepmesh.simulations) on a topology file.
It imports keepmesh.protocol only (no sockets, no trio), and matplotlib only
when --out asks for plots, so an edge agent never needs either.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from keepmesh.agent.cli import CommandError
from keepmesh.agent.cli._progress import SimProgress
from keepmesh.agent.cli._progress import enabled as progress_enabled


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("simulate", help="run the deterministic mesh simulator",
                              description="Run the deterministic simulator (the real membership "
                              "protocol in virtual time) on a topology file.")
    p.add_argument("topology", metavar="TOPOLOGY.toml", help="topology file")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--out", metavar="DIR", help="write metrics.json and PNG plots here")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sweep parameter (loss, latency_ms, jitter_ms, agents, "
                   "load, duration_s): replays one point of `keepmesh sweep`")
    p.add_argument("--mode", choices=("object", "bytes"), default="object",
                   help="object (default): simulated agents hand each other the decoded "
                   "message with its bytes; bytes: every receiver decodes the bytes. "
                   "Same trace hash either way")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="split the agents over N processes (cores); same trace hash and "
                   "report as one process (default 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from keepmesh.simulations.parallel import ParallelUnavailable, simulate_parallel
    from keepmesh.simulations.runner import simulate
    from keepmesh.simulations.sweep import (
        MAX_WORKERS,
        SweepError,
        apply_params,
        parse_set,
        read_toml,
    )
    from keepmesh.simulations.topology import TopologyError, load_topology

    if not (-(2**63) <= args.seed < 2**63):
        raise CommandError("--seed must fit in 64 bits")
    if not 1 <= args.workers <= MAX_WORKERS:
        raise CommandError(f"--workers must be in 1..{MAX_WORKERS}")
    try:
        if args.set:
            params = parse_set(args.set)
            topo = apply_params(read_toml(args.topology, TopologyError), params, args.topology)
        else:
            topo = load_topology(args.topology)
    except (TopologyError, SweepError) as err:
        raise CommandError(str(err)) from None
    out_dir = args.out
    if out_dir is not None:
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as err:
            raise CommandError(f"--out {out_dir}: {err.strerror or err}") from None
    progress = SimProgress(topo.duration_s) if progress_enabled(args.json) else None
    try:
        split = None
        if args.workers > 1:
            try:
                split = simulate_parallel(topo, args.seed, args.workers, progress=progress,
                                          mode=args.mode)
            except ParallelUnavailable as why:
                print(f"note: one process: {why}", file=sys.stderr)
        report, sim = split or simulate(topo, args.seed, progress=progress, mode=args.mode)
    except Exception as err:  # a protocol bug must not produce a traceback wall
        raise CommandError(f"simulation failed: {type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}") from None
    finally:
        if progress is not None:
            progress.done()
    if out_dir is not None:
        from keepmesh.simulations.plots import write_outputs
        try:
            report["plots"] = write_outputs(sim, report, out_dir)
        except OSError as err:
            raise CommandError(f"--out {out_dir}: {err.strerror or err}") from None
    if args.json:
        json.dump(report, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        m = report["metrics"]
        det = m["detection_s"]
        dead = m["dead_everywhere_s"]
        print(f"trace_hash {report['trace_hash']}")
        print(f"agents {report['agents']}  simulated {report['simulated_s']:g}s  "
              f"wall {report['wall_s']:.1f}s  events {report['events']} "
              f"({report['events_per_s'] or 0:.0f}/s)")
        print(f"dissemination_999_s {_fmt(m['dissemination_999_s'])}  "
              f"detection_s p50 {_fmt(det and det['p50'])} p99 {_fmt(det and det['p99'])}  "
              f"dead_everywhere_s max {_fmt(dead and dead['max'])}  "
              f"false_positives {m['false_positives']}")
        print(f"msgs/agent/s {m['msgs_per_agent_s']:.2f}  "
              f"bytes/agent/s {m['bytes_per_agent_s']:.0f}")
        if out_dir is not None:
            print(f"wrote {out_dir}/metrics.json and plots")
    return 0


def _fmt(v: float | None) -> str:
    return "null" if v is None else f"{v:.3f}"
