"""Parameter sweeps: one topology over a grid of seeds and parameters, aggregated.

Why a separate layer: a single run answers "what happens with seed 1"; a
design decision needs the spread over seeds and how it moves with loss,
latency, N and load. Every run stays a pure function of (topology, params,
seed), so it keeps its trace hash and can be replayed alone with
`keepmesh simulate TOPOLOGY --seed S --set key=value ...` (same hash).

Runs are independent, so they go to a local process pool by default or to a
Dask distributed cluster (`--cluster ADDRESS`, the optional `sim` extra). The
worker receives the parsed topology document (not a path), so a remote
worker needs no shared filesystem.

A SWEEP.toml is untrusted input: unknown keys, wrong types, out-of-range
values and grids larger than MAX_RUNS fail with one line `FILE: KEY: reason`
before anything runs.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from keepmesh.files import read_at_most

from .metrics import percentile
from .topology import MAX_AGENTS, TopologyError, parse_topology

MAX_FILE_BYTES = 1024 * 1024
MAX_RUNS = 10_000          # seeds x grid points
MAX_VALUES = 256           # values per grid axis
MAX_LOAD_EVENTS = 100_000  # update events a `load` value may add to one run
LOAD_SPAN = 0.9  # `load` updates fall in this first share of the run (the rest spreads them)
MAX_WORKERS = 256
CONNECT_TIMEOUT_S = 15.0    # reaching a Dask scheduler
CONNECT_GRACE_S = 5.0       # then, at most, its handshake (a silent peer is given up on)

# grid axis -> (type, lo, hi, what it sets)
PARAMS: dict[str, tuple[type, float, float, str]] = {
    "loss": (float, 0.0, 0.999, "[network] loss of the default link"),
    "latency_ms": (float, 0.0, 60_000.0, "[network] latency_ms of the default link"),
    "jitter_ms": (float, 0.0, 60_000.0, "[network] jitter_ms of the default link"),
    "agents": (int, 1, MAX_AGENTS, "[mesh] agents (topologies without [[group]])"),
    "load": (float, 0.0, 10_000.0, "record updates per simulated second (update events)"),
    "duration_s": (float, 1e-3, 86_400.0 * 7, "[mesh] duration_s"),
}

# Per-run figures that are aggregated (median, p10, p90 over seeds).
METRICS = ("dissemination_999_s", "dissemination_50_s", "detection_p50_s", "detection_p99_s",
           "dead_everywhere_max_s", "false_positives", "msgs_per_agent_s", "bytes_per_agent_s",
           "events", "wall_s")


class SweepError(Exception):
    """A sweep file or parameter is invalid; str() is one line."""


@dataclass(frozen=True)
class Sweep:
    path: str
    topology_path: str
    topology_doc: dict[str, Any]
    seeds: tuple[int, ...]
    grid: dict[str, tuple[Any, ...]]

    def points(self) -> list[dict[str, Any]]:
        """Every combination of grid values, in file order (one dict per point)."""
        keys = list(self.grid)
        return [dict(zip(keys, combo, strict=True))
                for combo in itertools.product(*(self.grid[k] for k in keys))]

    def runs(self) -> list[tuple[dict[str, Any], int]]:
        return [(p, s) for p in self.points() for s in self.seeds]


# ------------------------------------------------------------------ loading


def read_toml(path: str, err: type[Exception]) -> dict[str, Any]:
    """Read a small UTF-8 TOML file; any problem raises `err` with one line."""
    try:
        raw = read_at_most(path, MAX_FILE_BYTES)
    except OSError as e:
        raise err(f"{path}: cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise err(f"{path}: file larger than {MAX_FILE_BYTES} bytes")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise err(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise err(f"{path}: TOML syntax: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise err(f"{path}: TOML syntax: nested too deeply") from None
    except ValueError as e:  # int() of a literal over sys.get_int_max_str_digits()
        raise err(f"{path}: TOML syntax: {str(e).split(':')[0]}") from None


def check_param(key: str, value: Any, where: str = "") -> int | float:
    """Validate one parameter value (grid entry or `simulate --set`)."""
    where = where or key
    spec = PARAMS.get(key)
    if spec is None:
        raise SweepError(f"{where}: unknown parameter (expected one of {', '.join(PARAMS)})")
    typ, lo, hi, _ = spec
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SweepError(f"{where}: expected a number, got {type(value).__name__}")
    if typ is int and not isinstance(value, int):
        if not float(value).is_integer():
            raise SweepError(f"{where}: expected an integer, got {value!r}")
        value = int(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise SweepError(f"{where}: {value!r} is not finite")
    if not lo <= value <= hi:
        raise SweepError(f"{where}: {value!r} outside [{lo:g}, {hi:g}]")
    return typ(value)  # type: ignore[no-any-return]


def parse_set(items: list[str]) -> dict[str, int | float]:
    """`key=value` strings (the CLI's --set) -> checked parameters."""
    out: dict[str, int | float] = {}
    for item in items[:len(PARAMS) + 1]:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise SweepError(f"--set {item[:60]!r}: expected KEY=VALUE")
        if key in out:
            raise SweepError(f"--set {key}: given twice")
        try:
            num: int | float = int(text) if text.strip().lstrip("+-").isdigit() else float(text)
        except ValueError:
            raise SweepError(f"--set {key}: {text[:40]!r} is not a number") from None
        out[key] = check_param(key, num, f"--set {key}")
    if len(items) > len(PARAMS):
        raise SweepError(f"--set: more than {len(PARAMS)} parameters")
    return out


def load_sweep(path: str) -> Sweep:
    doc = read_toml(path, SweepError)

    def fail(key: str, reason: str) -> SweepError:
        return SweepError(f"{path}: {key}: {reason}")

    for k in doc:
        if k not in ("sweep", "grid"):
            raise fail(str(k)[:40], "unknown table (expected [sweep] and [grid])")
    sw = doc.get("sweep")
    if not isinstance(sw, dict):
        raise fail("sweep", "missing [sweep] table")
    for k in sw:
        if k not in ("topology", "seeds"):
            raise fail(f"sweep.{str(k)[:40]}", "unknown key (expected topology, seeds)")
    topo = sw.get("topology")
    if not isinstance(topo, str) or not topo or len(topo) > 4096:
        raise fail("sweep.topology", "expected a path to a topology file")
    topo_path = topo if os.path.isabs(topo) else os.path.join(os.path.dirname(path) or ".", topo)
    seeds = _seeds(sw.get("seeds", 1), fail)
    grid_doc = doc.get("grid", {})
    if not isinstance(grid_doc, dict):
        raise fail("grid", "expected a table")
    grid: dict[str, tuple[Any, ...]] = {}
    for k, vals in grid_doc.items():
        key = f"grid.{str(k)[:40]}"
        if k not in PARAMS:
            raise fail(key, f"unknown parameter (expected one of {', '.join(PARAMS)})")
        if not isinstance(vals, list):
            vals = [vals]
        if not vals or len(vals) > MAX_VALUES:
            raise fail(key, f"expected 1..{MAX_VALUES} values")
        try:
            checked = tuple(check_param(k, v, key) for v in vals)
        except SweepError as err:
            raise SweepError(f"{path}: {err}") from None
        if len(set(checked)) != len(checked):
            raise fail(key, "values repeat")
        grid[k] = checked
    n_points = math.prod(len(v) for v in grid.values())
    if n_points * len(seeds) > MAX_RUNS:
        raise fail("grid", f"{n_points} points x {len(seeds)} seeds = {n_points * len(seeds)} "
                   f"runs, above {MAX_RUNS}")
    try:
        topo_doc = read_toml(topo_path, SweepError)
        base = parse_topology(topo_doc, topo_path)
    except TopologyError as err:
        raise SweepError(f"{path}: sweep.topology: {err}") from None
    if "agents" in grid and base.groups:
        raise fail("grid.agents", "the topology sets agents per [[group]]; vary it there")
    sweep = Sweep(path, topo_path, topo_doc, seeds, grid)
    for point in sweep.points():  # every point must be a valid topology before anything runs
        try:
            apply_params(topo_doc, point, topo_path)
        except (SweepError, TopologyError) as err:
            raise SweepError(f"{path}: grid {_label(point)}: {err}") from None
    return sweep


def _seeds(v: Any, fail: Callable[[str, str], SweepError]) -> tuple[int, ...]:
    if isinstance(v, int) and not isinstance(v, bool):
        if not 1 <= v <= MAX_RUNS:
            raise fail("sweep.seeds", f"a count must be in 1..{MAX_RUNS}")
        return tuple(range(1, v + 1))
    if isinstance(v, list) and 0 < len(v) <= MAX_RUNS:
        if not all(isinstance(s, int) and not isinstance(s, bool) and -2**63 <= s < 2**63
                   for s in v):
            raise fail("sweep.seeds", "expected 64-bit integers")
        if len(set(v)) != len(v):
            raise fail("sweep.seeds", "seeds repeat")
        return tuple(v)
    raise fail("sweep.seeds", f"expected a count or a list of 1..{MAX_RUNS} seeds")


def apply_params(doc: dict[str, Any], params: dict[str, Any], path: str) -> Any:
    """A topology document with `params` applied, parsed and validated (a Topology)."""
    d = copy.deepcopy(doc)
    mesh = d.setdefault("mesh", {})
    net = d.setdefault("network", {})
    if not isinstance(mesh, dict) or not isinstance(net, dict):
        raise SweepError("topology: [mesh] and [network] must be tables")
    for key, value in params.items():
        check_param(key, value)
        if key in ("loss", "latency_ms", "jitter_ms"):
            net[key] = value
        elif key in ("agents", "duration_s"):
            if key == "agents" and d.get("group"):
                raise SweepError("agents: the topology sets agents per [[group]]")
            mesh[key] = value
    load = params.get("load", 0)
    if load:
        duration = mesh.get("duration_s")
        if not isinstance(duration, (int, float)) or isinstance(duration, bool):
            raise SweepError("load: topology has no numeric mesh.duration_s")
        # Updates over the first LOAD_SPAN of the run: one made in its last moments has no
        # time to spread, and a single unreached update makes dissemination_999_s null.
        last = duration * LOAD_SPAN
        n = int(math.floor(last * load))
        if n > MAX_LOAD_EVENTS:
            raise SweepError(f"load: {n} update events above {MAX_LOAD_EVENTS}")
        events = d.setdefault("event", [])
        if not isinstance(events, list):
            raise SweepError("topology: [[event]] must be an array of tables")
        events.extend({"at_s": k / load, "update": 1} for k in range(1, n + 1)
                      if k / load <= last)
    return parse_topology(d, path)


# ------------------------------------------------------------------ running


def run_point(doc: dict[str, Any], path: str, params: dict[str, Any],
              seed: int) -> dict[str, Any]:
    """One run (executed in a worker process): the compact record the sweep keeps."""
    from .runner import simulate

    t0 = time.perf_counter()
    try:
        topo = apply_params(doc, params, path)
        rep, _ = simulate(topo, seed)
    except Exception as err:  # one broken point must not sink the sweep
        first = str(err).splitlines()[0][:200] if str(err) else ""
        return {"params": params, "seed": seed, "error": f"{type(err).__name__}: {first}",
                "wall_s": time.perf_counter() - t0}
    m = rep["metrics"]
    det = m.get("detection_s") or {}
    dead = m.get("dead_everywhere_s") or {}
    return {
        "params": params, "seed": seed, "trace_hash": rep["trace_hash"],
        "agents": rep["agents"], "simulated_s": rep["simulated_s"],
        "metrics": {
            "dissemination_999_s": m.get("dissemination_999_s"),
            "dissemination_50_s": m.get("dissemination_50_s"),
            "detection_p50_s": det.get("p50"),
            "detection_p99_s": det.get("p99"),
            "dead_everywhere_max_s": dead.get("max"),
            "false_positives": m.get("false_positives"),
            "msgs_per_agent_s": m.get("msgs_per_agent_s"),
            "bytes_per_agent_s": m.get("bytes_per_agent_s"),
            "events": rep["events"],
            "wall_s": rep["wall_s"],
        },
        "protocol_errors": rep.get("protocol_errors", 0),
        "wall_s": time.perf_counter() - t0,
    }


Progress = Callable[[int, int, int], None]  # (runs done, runs total, events so far)


def _local(sweep: Sweep, workers: int) -> Iterator[dict[str, Any]]:
    runs = sweep.runs()
    if workers <= 1:
        for params, seed in runs:
            yield run_point(sweep.topology_doc, sweep.topology_path, params, seed)
        return
    import concurrent.futures as cf
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    with cf.ProcessPoolExecutor(max_workers=min(workers, len(runs)), mp_context=ctx) as pool:
        futs = [pool.submit(run_point, sweep.topology_doc, sweep.topology_path, p, s)
                for p, s in runs]
        for fut in cf.as_completed(futs):
            yield fut.result()


def _connect(client_type: Any, address: str) -> Any:
    """A Dask client for `address`, or one line saying why not, within the connect timeout
    (plus a grace). Why a thread: Dask's own timeout covers reaching the address, not a
    server that accepts and then never speaks its protocol (the sweep waited forever), and
    bytes from something that is not a scheduler can fail in any way (a MemoryError from
    a garbage length)."""
    import threading

    box: dict[str, Any] = {}

    def connect() -> None:
        try:
            box["client"] = client_type(address, timeout=f"{CONNECT_TIMEOUT_S}s")
        except BaseException as err:  # noqa: BLE001 - reported as one line below
            box["error"] = err

    thread = threading.Thread(target=connect, name="dask-connect", daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT_S + CONNECT_GRACE_S)
    where = f"--cluster {address[:80]}"
    if thread.is_alive():
        raise SweepError(f"{where}: no Dask scheduler answered within "
                         f"{CONNECT_TIMEOUT_S:g} s")
    err = box.get("error")
    if err is not None:
        what = "cannot connect" if isinstance(err, OSError | TimeoutError | ValueError) \
            else "not a Dask scheduler"
        raise SweepError(f"{where}: {what}: {type(err).__name__}")
    return box["client"]


def _dask(sweep: Sweep, address: str) -> Iterator[dict[str, Any]]:
    try:
        from dask.distributed import Client, as_completed
    except ImportError:
        raise SweepError("--cluster needs dask.distributed (pip install 'keepmesh[sim]')") \
            from None
    client = _connect(Client, address)
    try:
        runs = sweep.runs()
        futs = client.map(run_point, [sweep.topology_doc] * len(runs),
                          [sweep.topology_path] * len(runs), [p for p, _ in runs],
                          [s for _, s in runs], pure=False)
        for fut in as_completed(futs):  # type: ignore[no-untyped-call]
            yield fut.result()
    finally:
        client.close()


def run_sweep(sweep: Sweep, workers: int = 1, cluster: str | None = None,
              progress: Progress | None = None) -> dict[str, Any]:
    """Run every (point, seed); return the aggregated document (runs in a fixed order)."""
    if not 1 <= workers <= MAX_WORKERS:
        raise SweepError(f"--workers must be in 1..{MAX_WORKERS}")
    total = len(sweep.runs())
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    events = 0
    source = _dask(sweep, cluster) if cluster else _local(sweep, workers)
    for rec in source:
        results.append(rec)
        events += int(rec.get("metrics", {}).get("events") or 0)
        if progress is not None:
            progress(len(results), total, events)
    order = {(_key(p), s): i for i, (p, s) in enumerate(sweep.runs())}
    results.sort(key=lambda r: order[(_key(r["params"]), r["seed"])])
    for r in results:
        r["replay"] = replay_command(sweep.topology_path, r["params"], r["seed"])
    return {
        "sweep": sweep.path, "topology": sweep.topology_path,
        "grid": {k: list(v) for k, v in sweep.grid.items()}, "seeds": list(sweep.seeds),
        "executor": {"kind": "dask", "address": cluster} if cluster else
                    {"kind": "local", "workers": workers},
        "runs_total": total, "runs_failed": sum(1 for r in results if "error" in r),
        "wall_s": time.perf_counter() - t0,
        "points": aggregate(sweep.points(), results),
        "runs": results,
    }


def aggregate(points: list[dict[str, Any]], results: list[dict[str, Any]]
              ) -> list[dict[str, Any]]:
    """Median, p10 and p90 of each metric over the seeds of each point (nearest rank)."""
    out = []
    for point in points:
        k = _key(point)
        runs = [r for r in results if _key(r["params"]) == k and "error" not in r]
        figures: dict[str, Any] = {}
        for name in METRICS:
            vals = [float(v) for r in runs if (v := r["metrics"].get(name)) is not None]
            figures[name] = {"median": _median(vals), "p10": percentile(vals, 10),
                             "p90": percentile(vals, 90), "n": len(vals)}
        out.append({"params": point, "runs": len(runs),
                    "trace_hashes": [r["trace_hash"] for r in runs], "metrics": figures})
    return out


def _median(vals: list[float]) -> float | None:
    if not vals:
        return None
    xs = sorted(vals)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2.0


def _key(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(params.items()))


def _label(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v!r}" for k, v in params.items()) or "(no parameters)"


def replay_command(topology_path: str, params: dict[str, Any], seed: int) -> str:
    """The `keepmesh simulate` command that reproduces one run (same trace hash)."""
    sets = "".join(f" --set {k}={v!r}" for k, v in params.items())
    return f"keepmesh simulate {topology_path} --seed {seed}{sets}"
