"""simulations/parallel.py: a run split over processes gives the one-process answer.

Each topology here exercises a different way the world changes (crashes and
restarts, pauses, leaves and joins, partitions, loss bursts, failed attestation,
label updates, several sites with different latencies); the split run must give
the same trace hash and the same report, bar the fields that describe how it ran.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from keepmesh.agent.cli import main
from keepmesh.simulations import parallel
from keepmesh.simulations.parallel import ParallelUnavailable, simulate_parallel
from keepmesh.simulations.runner import Simulation, simulate
from keepmesh.simulations.topology import parse_topology

WORLD = """
[mesh]
agents = 32
duration_s = 40
profile = "lan"
attestation = true

[network]
latency_ms = 2
jitter_ms = 1
loss = 0.02

[[event]]
at_s = 6
crash = 2
[[event]]
at_s = 8
pause = 1
pause_s = 4
[[event]]
at_s = 10
update = 2
[[event]]
at_s = 12
leave = 1
[[event]]
at_s = 13
join = 2
[[event]]
at_s = 14
restart = 1
[[event]]
at_s = 16
tee_expire = 1
[[event]]
at_s = 20
partition = 0.3
[[event]]
at_s = 26
heal = true
[[event]]
at_s = 28
loss_burst = 0.5
duration_s = 2
[[event]]
at_s = 30
churn = 0.5
duration_s = 6
"""

SITES = """
[mesh]
duration_s = 30
profile = "wan"
bootstrap = "join"

[network]
latency_ms = 30
jitter_ms = 8
loss = 0.01

[[group]]
name = "near"
agents = 20
latency_ms = 1

[[group]]
name = "far"
agents = 25
latency_ms = 12
jitter_ms = 6
bandwidth_mbps = 5

[[event]]
at_s = 12
crash = 2
group = "far"
"""

PLACEMENT = """
[mesh]
agents = 12
duration_s = 8
bootstrap = "warm"

[network]
latency_ms = 2

[placement]
load = 0.5
start_s = 2
lifetime_s = 4
"""

# How the run was made, not what it found.
HOW = ("wall_s", "events_per_s", "workers")


def _topo(text: str) -> Any:
    return parse_topology(tomllib.loads(text), "t.toml")


def _what(report: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in report.items() if k not in HOW}))


@pytest.mark.parametrize("text,workers,mode", [
    (WORLD, 2, "object"), (WORLD, 3, "bytes"), (SITES, 2, "object")])
def test_split_run_gives_the_one_process_report(text: str, workers: int, mode: str) -> None:
    one, _ = simulate(_topo(text), 5, mode=mode)
    split, sim = simulate_parallel(_topo(text), 5, workers, mode=mode)
    assert split["workers"] == workers and one["workers"] == 1
    assert _what(split) == _what(one)
    assert split["messages"]["balanced"] == 1 and split["protocol_errors"] == 0
    # the hub's Simulation carries the whole run's metrics (plots read them)
    assert sim.metrics.summary()["event_counts"] == one["metrics"]["event_counts"]
    if text is WORLD:  # guards the comparison: a split that ran nothing would also agree
        m = split["metrics"]
        assert m["detection_s"]["crashes"] >= 2 and m["detection_s"]["detected"] >= 2
        assert m["dead_declared_across_partition"] > 0
        assert m["dead_declared_untrusted"] + m["event_counts"].get("untrusted", 0) > 0
        assert m["attest_requests"] > 0 and m["updates_tracked"] >= 3
        assert split["agents_started"] > 32  # joins and the restart
    # object mode: decoded twins cross processes too, so every delivery one process
    # handed over is handed over here (the comparison above covers handed_over)
    assert (split["handed_over"] > 0) == (mode == "object")


def test_hub_parts_too_big_to_send_ahead_are_sent_after_reading(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Both sides send before they read; a hub part too big for a socket buffer waits
    until that worker's part was read (else both could block writing). Forced here for
    every part: same report, no deadlock."""
    monkeypatch.setattr(parallel, "_AHEAD_MAX", 0)
    one, _ = simulate(_topo(SITES), 5)
    split, _ = simulate_parallel(_topo(SITES), 5, 3)  # late parts, and forwarding
    assert _what(split) == _what(one)


def test_different_seeds_still_differ() -> None:
    short = SITES.replace("duration_s = 30", "duration_s = 14")
    a, _ = simulate_parallel(_topo(short), 1, 2)
    b, _ = simulate_parallel(_topo(short), 2, 2)
    assert a["trace_hash"] != b["trace_hash"]


def test_experiments_and_zero_latency_run_in_one_process() -> None:
    with pytest.raises(ParallelUnavailable, match="one process"):
        simulate_parallel(_topo(PLACEMENT), 1, 2)
    zero = WORLD.replace("latency_ms = 2", "latency_ms = 0")
    with pytest.raises(ParallelUnavailable, match="zero latency"):
        simulate_parallel(_topo(zero), 1, 2)
    assert parallel.can_split(Simulation(_topo(WORLD), 1)) == ""


def test_a_failing_worker_fails_the_run_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Simulation.setup

    def setup(self: Simulation) -> None:
        if self.shard is not None and self.shard.index == 1:
            raise MemoryError("worker out of memory")
        real(self)

    monkeypatch.setattr(Simulation, "setup", setup)  # forked workers inherit it
    with pytest.raises(RuntimeError, match="worker 1: MemoryError: worker out of memory"):
        simulate_parallel(_topo(SITES), 1, 2)


def test_cli_workers_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topo = tmp_path / "t.toml"
    topo.write_text(SITES.replace("duration_s = 30", "duration_s = 14"))

    def run(*extra: str) -> dict[str, Any]:
        assert main(["simulate", str(topo), "--json", *extra]) == 0
        doc: dict[str, Any] = json.loads(capsys.readouterr().out)
        return doc

    one, two = run(), run("--workers", "2")
    assert two["workers"] == 2 and one["workers"] == 1
    assert one["trace_hash"] == two["trace_hash"]
    assert run("--workers", "2", "--set", "loss=0.05")["workers"] == 2  # a sweep point splits
    for bad in ("0", "257"):
        assert main(["simulate", str(topo), "--workers", bad]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--workers must be in 1..256" in err[0]
    placement = tmp_path / "p.toml"
    placement.write_text(PLACEMENT)
    assert main(["simulate", str(placement), "--workers", "2", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["workers"] == 1
    assert "note: one process: placement and migration experiments" in out.err
