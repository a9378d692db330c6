"""The compiled simulator build (simulations/compiled.py) is the same code: a run on it
gives the pure-Python run's trace hash, message counts and metrics, and it really ran
the extension modules. Without a C compiler or mypyc the build is unavailable and
this test says so (skipped with the reason), it does not pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from keepmesh.simulations.compiled import CompiledBuildUnavailable, build

REPO = Path(__file__).resolve().parent.parent
TOPOLOGY = REPO / "examples" / "topologies" / "quick.toml"

_PROBE = """
import json, sys
import keepmesh.simulations.engine as engine, keepmesh.protocol.membership.state as state
print(json.dumps([engine.__file__, state.__file__]))
"""


def _simulate(pythonpath: str | None, cwd: Path) -> dict:  # type: ignore[type-arg]
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run([sys.executable, "-m", "keepmesh.agent.cli", "simulate", str(TOPOLOGY),
                           "--seed", "7", "--json"], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600, check=True)
    result: dict = json.loads(proc.stdout)  # type: ignore[type-arg]
    return result


@pytest.mark.slow
def test_compiled_build_gives_the_pure_python_trace(tmp_path: Path) -> None:
    try:
        out = build(tmp_path / "compiled", opt_level="0")  # same C, compiled in half the time
    except CompiledBuildUnavailable as err:
        pytest.skip(f"compiled simulator unavailable here: {err.reason}")
    # Not from the repository root: `python -m`/`-c` put the working directory first on
    # sys.path, and the repository's keepmesh/ would shadow the build.
    env = dict(os.environ, PYTHONPATH=str(out))
    files = json.loads(subprocess.run([sys.executable, "-c", _PROBE], capture_output=True,
                                      text=True, env=env, cwd=tmp_path, check=True).stdout)
    assert all(f.endswith(".so") and f.startswith(str(out)) for f in files), files
    compiled = _simulate(str(out), tmp_path)
    pure = _simulate(None, tmp_path)
    assert compiled["trace_hash"] == pure["trace_hash"]
    assert compiled["messages"] == pure["messages"]
    assert compiled["metrics"] == pure["metrics"]
