"""Simulator scaling, measured at several N: CPU and memory growth fitted, nothing extrapolated.

One command, one JSON document on stdout:

    .venv/bin/python bench/simulator.py [--agents 250 500 1000 2000] [--duration 60]
        [--big 10000 --big-duration 600] [--seed 1] [--log FILE]

Each size runs in its own process (so peak RSS belongs to that size alone) on
the REAL membership protocol: lan profile, warm bootstrap, 2 ms +- 1 ms links
with 1% loss, 0.2% of agents (at least one) crashing half way, object mode
(decoded messages handed over with their bytes). What is reported per size:

* `warm_start_cpu_s`: building the agents and the warm start (every agent
  learns every record) -- reported on its own, not mixed into the run;
* `run_cpu_s` / `run_wall_s`: the simulated `duration` after the warm start
  (process CPU time; wall time on this shared machine);
* `rss_after_warm_start_mb`, `peak_rss_mb`, `kb_per_agent_at_peak`;
* events, stale and idle timers, messages, the protocol's figures
  (first detection, dead everywhere, dissemination, false positives) and the
  trace hash of the run.

Baseline (measured in the same invocation): the smallest size. Ratios per
size are against it. `mode_check`: the baseline size is run again in byte mode
(every receiver decodes); its trace hash must equal the object-mode hash and
its CPU gives the object-mode speed-up. The fit is least squares on log-log
over the sizes run with `--duration`: cost = a * N^b. `--big N` adds one run
of N agents for `--big-duration` simulated seconds (e.g. the 10,000 x 600 s
target) to the document, measured, never extrapolated; `--log FILE` appends a
progress line per simulated minute of every child (simulated time, CPU, RSS).

`--workers N` runs the `--big` run split over N processes (simulations/parallel.py)
and adds `parallel_check`: the baseline size run again on N processes, whose trace
hash must be the one-process run's. A split run cannot time its warm start apart,
so it reports `wall_s` and `cpu_s` from start to end (warm start included, CPU of
every process), the hub's and the largest worker's peak RSS, and their sum as
`peak_rss_mb` (an upper bound on the run's simultaneous footprint).

`interpreter` names the CPython that ran the children (this one): where it was
installed, whether its interpreter is a shared libpython, and whether it was
configured with PGO/LTO (a distribution may build them without saying so here).
On a shared, unoptimised build the same sources take ~1.4x the CPU per event
(one process) and ~1.2x the wall time of a split 10,000-agent run.

`host_speed` (before the first child and after the last): a fixed pure-Python loop
alone and two copies at once, and what the second vCPU is worth (2.0: a full core).
The hosts behind this machine differ from day to day by more than any recent code
change; compare runs of different days through it, not through wall time alone.

`--compiled DIR` runs every child on the mypyc build in DIR (`make sim-compiled`,
simulations/compiled.py: the same sources compiled) and adds `build_check`: the
baseline size run again in pure Python, whose trace hash must be the compiled
run's, and the compiled/pure CPU ratio measured in this invocation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from typing import Any


def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _interpreter() -> dict[str, Any]:
    """Which CPython runs the children (they run this one). Why it belongs in the
    figures: the same sources take ~1.4x the CPU per event on a CPython whose
    interpreter lives in a shared libpython built without PGO/LTO (pyenv's default
    build, this machine's `python3`) as on a statically linked PGO/LTO build
    (Debian's /usr/bin/python3.11), measured in simulations/RESULTS.md."""
    with open("/proc/self/maps") as fh:
        shared = any("libpython" in line for line in fh)
    config = str(sysconfig.get_config_var("CONFIG_ARGS") or "")
    return {
        "executable": os.path.realpath(sys.executable),
        "version": platform.python_version(),
        "libpython_shared": shared,  # the interpreter loaded from a shared libpython
        "configured_with_optimizations": "--enable-optimizations" in config,  # PGO
        "configured_with_lto": "--with-lto" in config,
    }


def _calibration_loop() -> float:
    """A fixed pure-Python workload (calls, dict churn, small tuples: what an event is
    made of); its CPU seconds."""
    c0 = time.process_time()
    table: dict[int, tuple[int, int]] = {}
    for i in range(1_500_000):
        table[i & 0x3FFF] = (i, i >> 3)
        if table.get((i * 7) & 0x3FFF) is None:
            table[i & 0xFF] = (0, 0)
    return time.process_time() - c0


def _calibration_child(conn: Any) -> None:
    conn.send(_calibration_loop())
    conn.close()


def host_speed() -> dict[str, Any]:
    """How fast this host is right now, and how much a second process slows the first.

    Why it belongs in the figures: the vCPUs behind this machine differ from day to day.
    The same code and interpreter ran 10,000 x 600 s in 668 s on one day and 380 s on
    another (simulations/RESULTS.md), and on some hosts two busy vCPUs slow each other
    by ~1.6x, which is what a two-worker run gets. `alone_s`: the loop once, nothing else
    of ours running; `two_at_once_s`: the slower of two copies run at the same time;
    `second_vcpu_worth`: 2 x alone / two_at_once (2.0: a full second core)."""
    import multiprocessing

    alone = min(_calibration_loop() for _ in range(2))
    ctx = multiprocessing.get_context("fork")
    pipes = [ctx.Pipe() for _ in range(2)]
    procs = [ctx.Process(target=_calibration_child, args=(child,)) for _, child in pipes]
    for p in procs:
        p.start()
    both = [parent.recv() for parent, _ in pipes]
    for p in procs:
        p.join()
    slower = max(both)
    return {"alone_s": round(alone, 3), "two_at_once_s": round(slower, 3),
            "second_vcpu_worth": round(2.0 * alone / max(slower, 1e-9), 2)}


def _topology_doc(agents: int, duration: float) -> dict[str, Any]:
    return {
        "mesh": {"agents": agents, "duration_s": duration, "profile": "lan",
                 "bootstrap": "warm"},
        "network": {"latency_ms": 2, "jitter_ms": 1, "loss": 0.01},
        "event": [{"at_s": duration / 2, "crash": max(1, round(agents * 0.002))}],
    }


def _minute_log(log: str | None, label: str, duration: float,
                extra: Callable[[], str]) -> Callable[[float], None] | None:
    """A progress callback appending one line per simulated minute to `log` (CPU and
    wall counted from now), or None without a log."""
    if log is None:
        return None
    path = log
    c0, w0 = time.process_time(), time.perf_counter()
    next_line = [60.0]

    def progress(t: float) -> None:
        if t >= next_line[0]:
            next_line[0] += 60.0
            with open(path, "a") as fh:
                fh.write(f"{label} t={t:.0f}/{duration:g}s "
                         f"cpu={time.process_time() - c0:.0f}s "
                         f"wall={time.perf_counter() - w0:.0f}s "
                         f"{extra()}rss={_rss_kb() // 1024}MB\n")
    return progress


def one(agents: int, duration: float, seed: int, mode: str, log: str | None) -> dict[str, Any]:
    """Measure one size in this process (called in a child by main())."""
    from keepmesh.simulations.runner import Simulation
    from keepmesh.simulations.topology import parse_topology

    topo = parse_topology(_topology_doc(agents, duration), f"<bench {agents}>")
    rss0 = _rss_kb()
    c0, w0 = time.process_time(), time.perf_counter()
    sim = Simulation(topo, seed, mode=mode)
    sim.setup()
    sim.engine.run(0.0)  # t = 0: every agent starts and learns every other (warm start)
    c1, w1 = time.process_time(), time.perf_counter()
    rss1 = _rss_kb()
    progress = _minute_log(log, f"N={agents} mode={mode}", duration,
                           lambda: f"events={sim.engine.steps} ")
    rep = sim.run(progress)
    c2, w2 = time.process_time(), time.perf_counter()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run_cpu = c2 - c1
    m = rep["metrics"]
    return {
        "agents": agents, "simulated_s": duration, "mode": mode,
        "warm_start_cpu_s": round(c1 - c0, 3), "warm_start_wall_s": round(w1 - w0, 3),
        "run_cpu_s": round(run_cpu, 3), "run_wall_s": round(w2 - w1, 3),
        "run_cpu_us_per_agent_s": round(run_cpu / (agents * duration) * 1e6, 2),
        "rss_before_mb": round(rss0 / 1024, 1),
        "rss_after_warm_start_mb": round(rss1 / 1024, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "kb_per_agent_at_peak": round((peak_kb - rss0) / agents, 1),
        "events": rep["events"],
        "events_per_cpu_s": round(rep["events"] / run_cpu) if run_cpu > 0 else None,
        "cpu_us_per_event": round(run_cpu / rep["events"] * 1e6, 2) if rep["events"] else None,
        "stale_timers": rep["stale_timers"],
        "idle_timers": rep["idle_timers"],
        "handed_over": rep["handed_over"],
        "messages": rep["messages"]["sent"],
        "msgs_per_agent_s": round(m["msgs_per_agent_s"], 2),
        "bytes_per_agent_s": round(m["bytes_per_agent_s"], 1),
        **_run_figures(rep, sim),
    }


def _run_figures(rep: dict[str, Any], sim: Any) -> dict[str, Any]:
    """What a run found (the same keys for one process and a split run)."""
    m = rep["metrics"]
    det = m["detection_s"] or {}
    dead = m["dead_everywhere_s"] or {}
    return {
        "detection_p50_s": det.get("p50"),
        "detection_p99_s": det.get("p99"),
        "crashes_detected": det.get("detected"),
        "dead_everywhere_max_s": dead.get("max"),
        "dissemination_999_s": m["dissemination_999_s"],
        "false_positives": m["false_positives"],
        "protocol_errors": rep["protocol_errors"],
        "trace_hash": rep["trace_hash"],
        "engine_module": os.path.basename(sys.modules[type(sim.engine).__module__].__file__
                                          or "?"),
    }


def one_split(agents: int, duration: float, seed: int, mode: str, workers: int,
              log: str | None) -> dict[str, Any]:
    """Measure one size split over `workers` processes (called in a child by main())."""
    from keepmesh.simulations.parallel import simulate_parallel
    from keepmesh.simulations.topology import parse_topology

    topo = parse_topology(_topology_doc(agents, duration), f"<bench {agents}>")
    rss0 = _rss_kb()
    c0, w0 = time.process_time(), time.perf_counter()
    progress = _minute_log(log, f"N={agents} workers={workers} hub", duration, lambda: "")
    rep, sim = simulate_parallel(topo, seed, workers, progress=progress, mode=mode)
    wall = time.perf_counter() - w0
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, joined
    cpu = (own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime) - c0
    peak = (own.ru_maxrss + kids.ru_maxrss) / 1024
    return {
        "agents": agents, "simulated_s": duration, "mode": mode, "workers": workers,
        "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
        "cpu_us_per_agent_s": round(cpu / (agents * duration) * 1e6, 2),
        "peak_rss_mb_hub": round(own.ru_maxrss / 1024, 1),
        "peak_rss_mb_worker_max": round(kids.ru_maxrss / 1024, 1),
        "peak_rss_mb": round(peak, 1),
        "kb_per_agent_at_peak": round((peak * 1024 - rss0) / agents, 1),
        "events": rep["events"],
        "cpu_us_per_event": round(cpu / rep["events"] * 1e6, 2) if rep["events"] else None,
        "handed_over": rep["handed_over"],
        "messages": rep["messages"]["sent"],
        **_run_figures(rep, sim),
    }


def line_fit(pts: list[tuple[float, float]]) -> tuple[float, float, float] | None:
    """Least-squares y = a + b x: (a, b, r2), or None with fewer than two distinct x."""
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
    return a, b, (1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0)


def power_fit(xs: list[float], ys: list[float]) -> dict[str, float] | None:
    """Least-squares fit of log y = log a + b log x; None with fewer than two points."""
    fit = line_fit([(math.log(x), math.log(y))
                    for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0])
    if fit is None:
        return None
    a, b, r2 = fit
    return {"exponent": round(b, 3), "coefficient": math.exp(a), "r2": round(r2, 4)}


def _child(n: int, duration: float, seed: int, mode: str, log: str | None,
           compiled: str | None = None, workers: int = 1) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--one", str(n), "--duration",
           str(duration), "--seed", str(seed), "--mode", mode, "--workers", str(workers)]
    if log is not None:
        cmd += ["--log", log]
    env = dict(os.environ)
    if compiled is not None:  # the compiled build shadows the installed package
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (os.path.abspath(compiled), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"size {n} ({mode}) failed: {tail}")
    result: dict[str, Any] = json.loads(proc.stdout)
    result["build"] = "mypyc" if compiled is not None else "python"
    if result["engine_module"].endswith(".py") == (compiled is not None):
        raise RuntimeError(f"size {n}: ran {result['engine_module']}, "
                           f"expected the {result['build']} build")
    return result


def _ratios(r: dict[str, Any], base: dict[str, Any]) -> dict[str, float]:
    return {
        "agents": round(r["agents"] / base["agents"], 3),
        "run_cpu_per_agent_s": round(r["run_cpu_us_per_agent_s"]
                                     / base["run_cpu_us_per_agent_s"], 3),
        "cpu_per_event": round(r["cpu_us_per_event"] / base["cpu_us_per_event"], 3),
        "events_per_agent_s": round((r["events"] / (r["agents"] * r["simulated_s"]))
                                    / (base["events"] / (base["agents"] * base["simulated_s"])),
                                    3),
        "warm_start_cpu": round(r["warm_start_cpu_s"] / max(base["warm_start_cpu_s"], 1e-9), 3),
        "peak_kb_per_agent": round(r["kb_per_agent_at_peak"]
                                   / max(base["kb_per_agent_at_peak"], 1e-9), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--agents", type=int, nargs="+", default=[250, 500, 1000, 2000])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--big", type=int, help="also run this many agents for --big-duration")
    ap.add_argument("--big-duration", type=float, default=600.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--log", help="append progress lines of every child here")
    ap.add_argument("--workers", type=int, default=1,
                    help="split the --big run over this many processes")
    ap.add_argument("--compiled", metavar="DIR",
                    help="run on the mypyc build in DIR (make sim-compiled)")
    ap.add_argument("--mode", choices=("object", "bytes"), default="object",
                    help=argparse.SUPPRESS)  # child only
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child: measure one size
    args = ap.parse_args()
    if args.workers < 1:
        ap.error("--workers must be >= 1")
    if args.one is not None:
        json.dump(one(args.one, args.duration, args.seed, args.mode, args.log)
                  if args.workers == 1 else
                  one_split(args.one, args.duration, args.seed, args.mode, args.workers,
                            args.log), sys.stdout)
        return 0
    sizes = sorted(set(args.agents))
    if any(n < 2 for n in sizes) or args.duration <= 0 or args.big_duration <= 0:
        ap.error("sizes must be >= 2 agents and durations > 0")
    if args.big is not None and args.big < 2:
        ap.error("--big must be >= 2 agents")
    wall0 = time.perf_counter()
    host_before = host_speed()
    try:
        c = args.compiled
        runs = [_child(n, args.duration, args.seed, "object", args.log, c) for n in sizes]
        base = runs[0]
        byte_base = _child(base["agents"], args.duration, args.seed, "bytes", args.log, c)
        pure_base = (_child(base["agents"], args.duration, args.seed, "object", args.log)
                     if c is not None else None)
        split_base = (_child(base["agents"], args.duration, args.seed, "object", args.log, c,
                             args.workers) if args.workers > 1 else None)
        big = (_child(args.big, args.big_duration, args.seed, "object", args.log, c,
                      args.workers) if args.big is not None else None)
    except RuntimeError as err:
        print(f"bench/simulator.py: {err}", file=sys.stderr)
        return 1
    for r in runs:
        r["ratio_vs_baseline"] = _ratios(r, base)
    if big is not None and args.workers > 1:
        big["target"] = {"wall_s_max": 600.0, "peak_rss_mb_max": 2048.0,
                         "kb_per_agent_max": 200.0}
        big["meets_target"] = {  # warm start included; RSS summed over the processes
            "wall": big["wall_s"] <= 600.0,
            "peak_rss": big["peak_rss_mb"] <= 2048.0,
            "kb_per_agent": big["kb_per_agent_at_peak"] <= 200.0,
        }
    elif big is not None:
        big["ratio_vs_baseline"] = _ratios(big, base)
        big["target"] = {"wall_s_max": 600.0, "peak_rss_mb_max": 2048.0,
                         "kb_per_agent_max": 200.0}
        big["meets_target"] = {
            # one process, one core: wall on a shared machine, so CPU time is given too
            "wall": big["warm_start_wall_s"] + big["run_wall_s"] <= 600.0,
            "cpu": big["warm_start_cpu_s"] + big["run_cpu_s"] <= 600.0,
            "peak_rss": big["peak_rss_mb"] <= 2048.0,
            "kb_per_agent": big["kb_per_agent_at_peak"] <= 200.0,
        }
    ns = [float(r["agents"]) for r in runs]
    out = {
        "benchmark": "simulator", "profile": "lan", "bootstrap": "warm", "mode": "object",
        "network": "2 ms +- 1 ms, 1% loss; 0.2% of agents (>= 1) crash at duration/2",
        "duration_s": args.duration, "seed": args.seed, "baseline_agents": base["agents"],
        "load_average_at_end": list(os.getloadavg()),
        "interpreter": _interpreter(),
        "host_speed": {"before": host_before, "after": host_speed()},
        "bench_wall_s": round(time.perf_counter() - wall0, 1),
        "mode_check": {
            "agents": base["agents"],
            "object_trace_hash": base["trace_hash"],
            "bytes_trace_hash": byte_base["trace_hash"],
            "same_trace_hash": base["trace_hash"] == byte_base["trace_hash"],
            "object_run_cpu_s": base["run_cpu_s"],
            "bytes_run_cpu_s": byte_base["run_cpu_s"],
            "object_cpu_vs_bytes": round(base["run_cpu_s"] / max(byte_base["run_cpu_s"], 1e-9),
                                         3),
        },
        "fit": {  # cost = coefficient * N^exponent over the --duration sizes above
            "run_cpu_s": power_fit(ns, [r["run_cpu_s"] for r in runs]),
            "cpu_us_per_event": power_fit(ns, [r["cpu_us_per_event"] for r in runs]),
            "events": power_fit(ns, [float(r["events"]) for r in runs]),
            "warm_start_cpu_s": power_fit(ns, [r["warm_start_cpu_s"] for r in runs]),
            "memory_after_warm_start_mb": power_fit(
                ns, [r["rss_after_warm_start_mb"] - r["rss_before_mb"] for r in runs]),
            "peak_rss_mb": power_fit(ns, [r["peak_rss_mb"] for r in runs]),
        },
        "build": base["build"],
        "build_check": None if pure_base is None else {
            "agents": base["agents"],
            "compiled_trace_hash": base["trace_hash"],
            "python_trace_hash": pure_base["trace_hash"],
            "same_trace_hash": base["trace_hash"] == pure_base["trace_hash"],
            "compiled_run_cpu_s": base["run_cpu_s"],
            "python_run_cpu_s": pure_base["run_cpu_s"],
            "compiled_cpu_vs_python": round(base["run_cpu_s"]
                                            / max(pure_base["run_cpu_s"], 1e-9), 3),
        },
        "parallel_check": None if split_base is None else {
            "agents": base["agents"], "workers": args.workers,
            "one_process_trace_hash": base["trace_hash"],
            "split_trace_hash": split_base["trace_hash"],
            "same_trace_hash": base["trace_hash"] == split_base["trace_hash"],
            "one_process_wall_s": round(base["warm_start_wall_s"] + base["run_wall_s"], 3),
            "split_wall_s": split_base["wall_s"],
        },
        "runs": runs,
        "big": big,
    }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    ok = out["mode_check"]["same_trace_hash"] and (
        pure_base is None or base["trace_hash"] == pure_base["trace_hash"]) and (
        split_base is None or base["trace_hash"] == split_base["trace_hash"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
