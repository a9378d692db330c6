"""Mutation fuzzing of every decoder and verifier; crashes, hangs and speed per target.

    python bench/fuzz.py --cases N [--target NAME ...] [--seconds-per-target S]
                         [--hang-ms MS] [--seed SEED]

Targets and mutators live in tests/fuzz_targets.py (shared with the CI tests).
A *crash* is any exception other than the target's declared error types
(ProtocolError/VerificationError; TopologyError for topologies); crash kinds
are told apart by exception type and the innermost keepmesh source line. A
*hang* is a case slower than --hang-ms. Baseline, measured in the same run:
each target's seeds (unmutated) verified/decoded, so `slowdown` is the ratio
of the mean mutated case to the mean valid input (a mutation that makes the
verifier do far more work than a valid input shows up there). Prints one
JSON document.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fuzz_targets import VECTORS, Target, targets  # noqa: E402 - tests/ is not a package


def baseline_ms(target: Target, rounds: int = 5) -> float:
    """Mean time of the unmutated seeds (valid inputs), in ms."""
    seeds = target.seeds()
    for seed in seeds:  # warm: imports, caches, lazily built trust stores
        try:
            target.run(seed)
        except target.declared:
            pass
    times = []
    for _ in range(rounds):
        for seed in seeds:
            t0 = time.perf_counter()
            try:
                target.run(seed)
            except target.declared:
                pass
            times.append(time.perf_counter() - t0)
    return 1000 * sum(times) / max(1, len(times))


def fuzz(target: Target, cases: int, seconds: float | None, hang_ms: float,
         seed: int) -> dict[str, Any]:
    rng = random.Random(f"{seed}-{target.name}")
    base = baseline_ms(target)
    kinds: dict[str, dict[str, Any]] = {}
    crashes = hangs = rejected = accepted = done = 0
    slowest = 0.0
    slowest_seed = 0
    total = 0.0
    t_start = time.perf_counter()
    while done < cases:
        if seconds is not None and time.perf_counter() - t_start > seconds:
            break
        case_seed = rng.getrandbits(64)
        case = target.case(random.Random(case_seed))
        t0 = time.perf_counter()
        kind, err = target.check(case)
        ms = 1000 * (time.perf_counter() - t0)
        if kind == "accepted":
            accepted += 1
        elif kind == "rejected":
            rejected += 1
        else:
            crashes += 1
            entry = kinds.setdefault(kind, {"count": 0, "example": {
                "case_seed": case_seed, "message": str(err)[:200]}})
            entry["count"] += 1
        total += ms
        if ms > slowest:
            slowest, slowest_seed = ms, case_seed
        if ms > hang_ms:
            hangs += 1
        done += 1
    elapsed = time.perf_counter() - t_start
    mean = total / max(1, done)
    return {"cases": done, "seconds": round(elapsed, 2),
            "cases_per_s": round(done / elapsed, 1) if elapsed else None,
            "rejected": rejected, "accepted": accepted,
            "crashes": {"count": crashes, "kinds": len(kinds), "by_kind": kinds},
            "hangs": hangs, "slowest_case_ms": round(slowest, 2),
            "slowest_case_seed": slowest_seed,
            "mean_case_ms": round(mean, 3), "baseline_valid_ms": round(base, 3),
            "slowdown": round(mean / base, 2) if base else None}


def main(argv: list[str] | None = None) -> int:
    all_targets = targets()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2000, help="cases per target")
    ap.add_argument("--target", action="append", choices=sorted(all_targets),
                    help="only this target (repeatable)")
    ap.add_argument("--seconds-per-target", type=float, default=None,
                    help="stop a target after this long even if --cases is not reached")
    ap.add_argument("--hang-ms", type=float, default=1000.0,
                    help="a case slower than this counts as a hang")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--replay", type=int, metavar="CASE_SEED",
                    help="run the one case with this case_seed (from a crash example or "
                         "slowest_case_seed) on the single --target and report it")
    args = ap.parse_args(argv)
    if args.replay is not None:
        if not args.target or len(args.target) != 1:
            ap.error("--replay needs exactly one --target")
        target = all_targets[args.target[0]]
        case = target.case(random.Random(args.replay))
        t0 = time.perf_counter()
        kind, err = target.check(case)
        print(json.dumps({"target": target.name, "case_seed": args.replay, "outcome": kind,
                          "error": repr(err)[:500] if err else None,
                          "ms": round(1000 * (time.perf_counter() - t0), 2)}, indent=2))
        return 0
    chosen = args.target or sorted(all_targets)
    out: dict[str, Any] = {"cases_per_target": args.cases, "hang_ms": args.hang_ms,
                           "seed": args.seed, "targets": {}, "skipped": []}
    for name in chosen:
        target = all_targets[name]
        if target.needs_vectors and not VECTORS.is_dir():
            out["skipped"].append(name)
            continue
        out["targets"][name] = fuzz(target, args.cases, args.seconds_per_target, args.hang_ms,
                                    args.seed)
    res = out["targets"].values()
    out["total"] = {"crashes": sum(r["crashes"]["count"] for r in res),
                    "hangs": sum(r["hangs"] for r in res),
                    "cases": sum(r["cases"] for r in res)}
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
