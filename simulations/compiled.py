"""The compiled simulator build: the same protocol and engine sources, compiled by mypyc.

Why: the simulator's cost is Python's per-call overhead spread thinly over the
membership state machine, MeshNode and the engine (no single hot spot is left:
see simulations/RESULTS.md). mypyc (shipped with mypy, which already checks
these modules under --strict) compiles them to C extension modules: measured
1.75x faster per event at 1,000 agents with identical trace hashes. It is the
real code, not a port: the same .py files at the same commit, and a run's hash
must equal the pure-Python run's (tests/test_sim_compiled.py; `bench/simulator.py
--compiled DIR` checks it on its baseline size).

It is optional and separate. The build is a copy of the keepmesh package in its
own folder with extension modules beside the sources; a process uses it only
when that folder comes first on PYTHONPATH. The agent, the tests and everything
else keep running the pure-Python package (compiled classes cannot be
monkeypatched, and an edge device has no compiler). A machine without a C
compiler or mypyc gets `CompiledBuildUnavailable` with the reason.

    python -m keepmesh.simulations.compiled --out build/compiled
    PYTHONPATH=build/compiled .venv/bin/keepmesh simulate TOPOLOGY.toml

(The console script, not `python -m`, from the repository root: `-m` and `-c`
put the working directory first on sys.path, and the repository's keepmesh/
would shadow the build. bench/simulator.py checks which engine module ran.)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

# The modules every simulated event runs through (membership, MeshNode, engine). Others
# stay pure Python: the wire messages rely on dataclass machinery mypyc does not compile.
MODULES = (
    "protocol/membership/state.py",
    "protocol/membership/table.py",
    "protocol/membership/broadcast.py",
    "protocol/membership/suspicion.py",
    "protocol/membership/awareness.py",
    "protocol/membership/penalties.py",
    "protocol/node.py",
    "simulations/engine.py",
    "simulations/event_queue.py",
    "simulations/network.py",
    "simulations/mesh_driver.py",
)
SUBPACKAGES = ("protocol", "agent", "simulations")
BUILD_TIMEOUT_S = 900


class CompiledBuildUnavailable(Exception):
    """No compiled build on this machine (no C compiler, no mypyc, or mypyc failed)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _package_root() -> Path:
    """Folder holding keepmesh/__init__.py; the subpackages may live elsewhere (the
    repository maps protocol/, agent/, simulations/ under keepmesh)."""
    import keepmesh

    return Path(keepmesh.__file__).resolve().parent


def _subpackage_dir(name: str) -> Path:
    spec = importlib.util.find_spec(f"keepmesh.{name}")
    if spec is None or not spec.submodule_search_locations:
        raise CompiledBuildUnavailable(f"keepmesh.{name} not found")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def _c_compiler() -> str | None:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shutil.which(cc.split()[0])


def build(out: Path, opt_level: str = "3") -> Path:
    """Copy the package to `out`/keepmesh and compile MODULES there; returns `out`.

    `opt_level`: the C compiler's (mypyc's MYPYC_OPT_LEVEL). "3" for runs; the test that
    the build gives the pure-Python trace uses "0", which compiles in half the time and
    runs the same C (the hash does not depend on how it was optimised)."""
    if opt_level not in ("0", "1", "2", "3"):
        raise ValueError(f"opt_level {opt_level!r}: one of 0, 1, 2, 3")
    if importlib.util.find_spec("mypyc") is None:
        raise CompiledBuildUnavailable("mypyc is not installed (pip install mypy)")
    if _c_compiler() is None:
        raise CompiledBuildUnavailable("no C compiler (cc) on this machine")
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").exists():
        raise CompiledBuildUnavailable(f"no Python headers in {include}")
    out = out.resolve()
    if out.exists():
        shutil.rmtree(out)
    pkg = out / "keepmesh"
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc", "results")
    shutil.copytree(_package_root(), pkg, ignore=ignore)
    for name in SUBPACKAGES:
        target = pkg / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(_subpackage_dir(name), target, ignore=ignore)
    env = dict(os.environ, PYTHONPATH=str(out), MYPYC_OPT_LEVEL=opt_level)
    cmd = [sys.executable, "-m", "mypyc", *(f"keepmesh/{m}" for m in MODULES)]
    try:
        done = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise CompiledBuildUnavailable(f"mypyc took over {BUILD_TIMEOUT_S} s") from None
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        raise CompiledBuildUnavailable("mypyc failed: " + " | ".join(tail))
    missing = [m for m in MODULES if not list((pkg / m).parent.glob(
        Path(m).stem + ".*.so"))]
    if missing:
        raise CompiledBuildUnavailable(f"mypyc built no extension for {missing[0]}")
    shutil.rmtree(out / "build", ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m keepmesh.simulations.compiled",
                                 description="Build the mypyc-compiled simulator.")
    ap.add_argument("--out", default="build/compiled", help="folder to build into")
    args = ap.parse_args(argv)
    try:
        out = build(Path(args.out))
    except CompiledBuildUnavailable as err:
        print(f"compiled simulator: not built: {err.reason}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
