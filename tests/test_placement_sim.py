"""The placement experiment in the simulator: the same PlacementMachine the agent runs,
a deployment stream, the greedy ideal in the same run, invariants at every step."""

from __future__ import annotations

from typing import Any

import pytest
from keepmesh.simulations.runner import simulate
from keepmesh.simulations.topology import TopologyError, parse_topology

DOC = """
[mesh]
agents = 12
duration_s = 25
bootstrap = "warm"
[network]
latency_ms = 2
[[group]]
name = "a"
agents = 6
[[group]]
name = "b"
agents = 6
[placement]
load = 0.8
start_s = 2
lifetime_s = 8
sizes_mb = [64, 128, 256]
host_memory_mb = 512
host_keeps = 4
pinned = 0.3
"""


def test_stream_reports_quality_against_the_ideal() -> None:
    import tomllib
    topo = parse_topology(tomllib.loads(DOC), "t.toml")
    report, sim = simulate(topo, 3)
    p = report["placement"]
    decided = p["accepted"] + p["rejected"]
    assert decided > 50 and p["ideal_accepted"] > 0
    assert p["acceptance_vs_ideal"] >= 0.9
    assert 0.0 < p["utilisation"] < 1.0
    assert p["latency_s"]["p50"] is not None and p["latency_s"]["p50"] < 0.1
    assert 6 <= p["msgs_per_placement"] < 30
    assert p["invariant_checks"] > decided
    assert report["protocol_errors"] == 0
    # every running keep is committed in exactly one host's lease table
    held = sum(len([x for x in n.proto.node.machines[0].leases.leases.values() if x.committed])
               for n in sim.engine.nodes if n.up)
    running = sum(len(n.proto.keeps) for n in sim.engine.nodes if n.up)
    assert held == running


def test_same_seed_same_placements() -> None:
    import tomllib
    doc = DOC.replace("duration_s = 25", "duration_s = 10")
    a, _ = simulate(parse_topology(tomllib.loads(doc), "t.toml"), 5)
    b, _ = simulate(parse_topology(tomllib.loads(doc), "t.toml"), 5)
    assert a["trace_hash"] == b["trace_hash"] and a["placement"] == b["placement"]


@pytest.mark.parametrize("bad,key", [
    ("load = -1", "placement.load"), ("sizes_mb = [4096]", "placement.sizes_mb"),
    ("zones = 1", "placement.zones"), ("host_keeps = 0", "placement.host_keeps")])
def test_stream_validation_names_the_key(bad: str, key: str) -> None:
    import tomllib
    name = bad.split(" =")[0]
    lines = [ln for ln in DOC.splitlines() if not ln.startswith(name + " =")]
    doc = "\n".join(lines) + "\n" + bad + "\n"
    with pytest.raises(TopologyError, match=key.replace(".", r"\.")):
        parse_topology(tomllib.loads(doc), "t.toml")


def _bench() -> Any:
    """bench/placement.py as a module (bench/ is not a package)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "bench" / "placement.py"
    spec = importlib.util.spec_from_file_location("bench_placement", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_sizes_share_the_per_host_conditions_and_plots(tmp_path: Any) -> None:
    """The N sweep changes only N: same offered load per host, lifetime, duration and no
    crash, so the arrival rate (and the placements) grow in proportion to N."""
    from keepmesh.simulations.plots import write_placement_plots
    bench = _bench()
    runs = [bench.run(agents=n, load=0.8, duration=4.0, seed=1, lifetime=1.0, start=1.0,
                      crashes=False) for n in (12, 24)]
    small, big = runs
    assert small["crash_events"] == big["crash_events"] == 0
    assert small["lifetime_s"] == big["lifetime_s"] == 1.0
    assert big["arrival_rate_per_s"] == pytest.approx(2 * small["arrival_rate_per_s"])
    for r in runs:
        decided = r["accepted"] + r["rejected"]
        assert decided > 20 and r["protocol_errors"] == 0
        assert r["acceptance_rate"] == pytest.approx(r["accepted"] / decided)
        assert 6 <= r["msgs_per_placement"] < 30
    fit = bench.log_fit([2.0, 4.0, 8.0], [5.0, 7.0, 9.0])  # y = 3 + 2 log2 x
    assert fit == {"intercept": 3.0, "per_log2_n": 2.0, "r2": 1.0}
    doc = {"by_load": {"0.8": small},
           "scaling": {"agents": [12, 24], "load": 0.8, "duration_s": 4.0, "lifetime_s": 1.0,
                       "msgs_per_placement": {"12": small["msgs_per_placement"],
                                              "24": big["msgs_per_placement"]},
                       "where_msgs_per_placement": {"12": small["where_msgs_per_placement"],
                                                    "24": big["where_msgs_per_placement"]}}}
    files = write_placement_plots(doc, str(tmp_path))
    assert files == ["placement_acceptance.png", "placement_msgs_vs_n.png"]
    assert all((tmp_path / f).stat().st_size > 0 for f in files)


def test_placement_hash_does_not_depend_on_python_hash_seed(tmp_path: Any) -> None:
    """Found by a topology generator comparing `keepmesh simulate` with an in-process run:
    with jitter, a placement run's trace hash changed with PYTHONHASHSEED (the machine
    re-announced to a set of member ids, in hash order, and each send draws its jitter
    from the sender's RNG). Same topology + seed must give the same hash in any process."""
    import json
    import subprocess
    import sys
    path = tmp_path / "t.toml"
    path.write_text("[mesh]\nagents = 14\nduration_s = 5\n[network]\nlatency_ms = 1\n"
                    "jitter_ms = 5\n[placement]\nload = 0.5\nstart_s = 0\n")
    code = ("import sys; from keepmesh.simulations.runner import simulate; "
            "from keepmesh.simulations.topology import load_topology; "
            "print(simulate(load_topology(sys.argv[1]), 249)[0]['trace_hash'])")
    hashes = {subprocess.run([sys.executable, "-c", code, str(path)], check=True,
                             capture_output=True, text=True,
                             env={"PYTHONHASHSEED": str(h), "PATH": ""}).stdout.strip()
              for h in (1, 2, 3)}
    assert len(hashes) == 1, hashes
