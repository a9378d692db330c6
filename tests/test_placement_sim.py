"""The placement experiment in the simulator: the same PlacementMachine the agent runs,
a deployment stream, the greedy ideal in the same run, invariants at every step."""

from __future__ import annotations

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
