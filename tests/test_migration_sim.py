"""Migration in the simulator: the real MigrationMachine in every simulated agent."""

from __future__ import annotations

import pytest
from keepmesh.simulations.runner import simulate
from keepmesh.simulations.topology import TopologyError, parse_topology

TOPO = """
[mesh]
agents = 16
duration_s = 60
bootstrap = "warm"

[migration]
keeps = 12
start_s = 2

[[event]]
at_s = 25
crash = 3
"""


def test_crashes_move_keeps_and_nothing_is_lost() -> None:
    import tomllib
    report, sim = simulate(parse_topology(tomllib.loads(TOPO), "t.toml"), seed=3)
    m = report["migration"]
    down = {n.node_id for n in sim.engine.nodes if not n.up}
    survivor = next(n for n in sim.engine.nodes if n.up)
    [machine] = [x for x in survivor.proto.node.machines if hasattr(x, "sync_view")]
    unrecoverable = 0
    for keep, track in sim.migration.keeps.items():
        if track.crashed_at is None:
            continue
        loc = machine.engine.locations.get(keep)
        # still down only when its host AND every standby crashed (k = 1: a stated limit)
        assert loc is not None and set(loc.standbys) <= down, keep
        unrecoverable += 1
    assert m["recovered"] >= 1 and m["moved"] >= m["recovered"]
    assert m["lost"] == unrecoverable and m["duplicate_s"]["max"] == 0.0
    detection = report["metrics"]["detection_s"]
    assert m["recovery_s"]["max"] is not None
    # state lost on a crash stays within one checkpoint interval (+ transfer slack)
    assert m["lost_state_s"]["checkpoint_intervals_max"] <= 1.2
    assert isinstance(detection, dict)


def test_migration_table_is_validated() -> None:
    import tomllib
    for bad, field in [("keeps = 0", "migration.keeps"), ("keeps = 'x'", "migration.keeps"),
                       ("speed = 1", "migration.speed")]:
        doc = tomllib.loads(TOPO.replace("keeps = 12", bad))
        with pytest.raises(TopologyError, match=field):
            parse_topology(doc, "t.toml")
