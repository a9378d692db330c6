"""Shared fixtures: sim roots are slow to make (RSA keys), so make each once per run."""

from __future__ import annotations

from pathlib import Path

import pytest

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"


@pytest.fixture(scope="session")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from keepmesh.agent.tee.sim import init_sim_root
    root = tmp_path_factory.mktemp("sim-root") / "root"
    init_sim_root(root, key_bits=2048)
    return root


@pytest.fixture(scope="session")
def other_sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from keepmesh.agent.tee.sim import init_sim_root
    root = tmp_path_factory.mktemp("other-sim-root") / "root"
    init_sim_root(root, key_bits=2048)
    return root
