"""`keepmesh sweep SWEEP.toml [--workers N] [--cluster ADDRESS] [--json] [--out DIR]`.

Runs one topology over a grid of seeds and parameters (simulations/sweep.py):
on a local process pool by default, on a Dask distributed cluster with
--cluster. Prints the per-point medians (or one JSON document with --json);
--out writes sweep.json and PNG plots. Every run keeps its trace hash and the
`keepmesh simulate ... --set` command that replays it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from keepmesh.agent.cli import CommandError
from keepmesh.agent.cli._progress import SweepProgress
from keepmesh.agent.cli._progress import enabled as progress_enabled


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("sweep", help="run a topology over a grid of seeds and parameters",
                              description="Run the simulator over a grid of seeds and parameters "
                              "(loss, latency, N, load); aggregate median and p10/p90.")
    p.add_argument("sweep", metavar="SWEEP.toml", help="sweep file")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="local worker processes (default: CPU count; 1 = in this process)")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="Dask scheduler address (tcp://host:8786): run there instead")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--out", metavar="DIR", help="write sweep.json and PNG plots here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from keepmesh.simulations.sweep import MAX_WORKERS, SweepError, load_sweep, run_sweep

    if not 1 <= args.workers <= MAX_WORKERS:
        raise CommandError(f"--workers must be in 1..{MAX_WORKERS}")
    if args.cluster is not None and (not args.cluster or len(args.cluster) > 256
                                     or any(c.isspace() for c in args.cluster)):
        raise CommandError("--cluster: expected a scheduler address like tcp://host:8786")
    try:
        sweep = load_sweep(args.sweep)
    except SweepError as err:
        raise CommandError(str(err)) from None
    if args.out is not None:
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as err:
            raise CommandError(f"--out {args.out}: {err.strerror or err}") from None
    progress = SweepProgress() if progress_enabled(args.json) else None
    try:
        doc = run_sweep(sweep, workers=args.workers, cluster=args.cluster, progress=progress)
    except SweepError as err:
        raise CommandError(str(err)) from None
    finally:
        if progress is not None:
            progress.done()
    if args.out is not None:
        from keepmesh.simulations.plots import write_sweep_outputs
        try:
            doc["plots"] = write_sweep_outputs(doc, args.out)
        except OSError as err:
            raise CommandError(f"--out {args.out}: {err.strerror or err}") from None
    if args.json:
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        _print_table(doc)
    failed = doc["runs_failed"]
    if failed:
        first = next(r for r in doc["runs"] if "error" in r)
        raise CommandError(f"{failed} of {doc['runs_total']} runs failed (first: seed "
                           f"{first['seed']} {first['params']}: {first['error']})")
    return 0


def _print_table(doc: dict[str, Any]) -> None:
    ex = doc["executor"]
    where = ex.get("address") or f"{ex.get('workers')} local workers"
    print(f"sweep {doc['sweep']}: {doc['runs_total']} runs on {where} in {doc['wall_s']:.1f}s")
    cols = ("dissemination_999_s", "detection_p50_s", "dead_everywhere_max_s",
            "false_positives", "msgs_per_agent_s")
    print("point | " + " | ".join(f"{c} median [p10, p90]" for c in cols))
    for p in doc["points"]:
        label = " ".join(f"{k}={v:g}" for k, v in p["params"].items()) or "-"
        cells = []
        for c in cols:
            f = p["metrics"][c]
            cells.append(f"{_fmt(f['median'])} [{_fmt(f['p10'])}, {_fmt(f['p90'])}]")
        print(f"{label} | " + " | ".join(cells))


def _fmt(v: float | None) -> str:
    return "null" if v is None else f"{v:.3g}"
