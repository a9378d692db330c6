"""The simulator driving the REAL protocol/membership: known answers, and the CLI."""

from __future__ import annotations

import json
import os
import tomllib

import pytest
from keepmesh.agent.cli import main
from keepmesh.simulations.runner import simulate
from keepmesh.simulations.topology import parse_topology


def topo(body: str):
    return parse_topology(tomllib.loads(body), "t.toml")


def test_real_protocol_deterministic_and_seed_sensitive():
    t = topo("[mesh]\nagents = 12\nduration_s = 15\n[network]\nlatency_ms = 3\nloss = 0.05\n"
             "[[event]]\nat_s = 8\ncrash = 1\n")
    a, _ = simulate(t, 11)
    b, _ = simulate(t, 11)
    c, _ = simulate(t, 12)
    assert a["trace_hash"] == b["trace_hash"] and a["events"] == b["events"]
    assert a["metrics"] == b["metrics"]
    assert a["trace_hash"] != c["trace_hash"]
    assert a["messages"]["balanced"] == 1 and a["protocol_errors"] == 0


def test_crash_detected_and_dead_everywhere_no_false_positive():
    t = topo("[mesh]\nagents = 24\nduration_s = 45\n[network]\nlatency_ms = 2\n"
             "[[event]]\nat_s = 12\ncrash = 2\n")
    rep, sim = simulate(t, 3)
    m = rep["metrics"]
    assert m["detection_s"]["detected"] == 2
    assert 0 < m["detection_s"]["max"] < 10
    assert m["dead_everywhere_s"]["complete"] == 2
    assert m["false_positives"] == 0
    crashed = {c.subject for c in sim.metrics.all_crashes()}
    for node in sim.engine.nodes:
        if node.up:
            alive = node.proto.alive_ids()
            assert len(alive) == 22  # everyone else and itself, not the crashed ones
            assert not {sim.engine.nodes[i].node_id for i in crashed} & alive
    assert m["dissemination_999_s"] is not None  # the injected update reached everyone


def _assert_one_view(sim) -> None:
    ids = {n.node_id for n in sim.engine.nodes}
    for node in sim.engine.nodes:
        assert node.proto.alive_ids() == ids


def test_short_partition_heals_into_one_view():
    # Shorter than suspicion timeout + gossip: suspects refute after the heal.
    t = topo("[mesh]\nagents = 16\nduration_s = 40\n[network]\nlatency_ms = 2\n"
             "[[event]]\nat_s = 10\npartition = 0.5\n[[event]]\nat_s = 13\nheal = true\n")
    rep, sim = simulate(t, 5)
    assert rep["metrics"]["event_counts"]["suspect"] > 0  # the halves did split
    assert rep["dropped_by_reason"]["partition"] > 0
    _assert_one_view(sim)
    assert rep["metrics"]["false_positives"] == 0


def test_long_partition_heals_into_one_view():
    t = topo("[mesh]\nagents = 16\nduration_s = 120\n[network]\nlatency_ms = 2\n"
             "[[event]]\nat_s = 10\npartition = 0.5\n[[event]]\nat_s = 40\nheal = true\n")
    rep, sim = simulate(t, 5)
    assert rep["metrics"]["dead_declared_across_partition"] > 0  # the halves did split
    _assert_one_view(sim)


def test_tcb_drop_makes_member_untrusted_everywhere():
    t = topo("[mesh]\nagents = 10\nduration_s = 20\n[[event]]\nat_s = 8\ntcb_drop = 1\n")
    rep, sim = simulate(t, 2)
    bad = [i for i, b in enumerate(sim.tee_bad) if b]
    assert len(bad) == 1
    bad_id = sim.engine.nodes[bad[0]].node_id
    for node in sim.engine.nodes:
        if node.idx != bad[0]:
            assert bad_id not in node.proto.alive_ids()
    assert rep["metrics"]["event_counts"]["untrusted"] >= 9


def test_untrusted_agents_are_not_expected_to_learn_later_updates():
    """Every observer excludes an agent whose evidence failed; counting it among those who
    must learn an update made every later dissemination_999_s null (never 99.9%)."""
    t = topo("[mesh]\nagents = 30\nduration_s = 40\n[network]\nlatency_ms = 2\n"
             "[[event]]\nat_s = 8\ntee_expire = 2\n[[event]]\nat_s = 14\nupdate = 2\n")
    rep, sim = simulate(t, 3)
    m = rep["metrics"]
    assert sum(sim.tee_bad) == 2
    assert m["updates_tracked"] == 3
    per_update = m["dissemination_999_per_update_s"]
    assert len(per_update) == 3 and all(v is not None and 0 < v < 5 for v in per_update), m
    for track in sim.metrics.all_updates():
        if track.at > 8 + 1:  # after every observer distrusted them
            assert not any(track.eligible[i] for i, b in enumerate(sim.tee_bad) if b)


def test_a_crash_is_dead_everywhere_among_the_agents_that_can_hear_of_it():
    """An agent every observer cut off (its TEE failed) never hears that a crashed agent
    is dead: waiting for it left dead_everywhere null (edge_cloud: 3 of 4 crashes).
    Both ways: the agents that can hear must all still say `dead`, and the wait ends
    when the last one missing is cut off or crashes."""
    from keepmesh.simulations.metrics import CrashTrack, Metrics

    class World:
        def __init__(self) -> None:
            self.up_ = {0, 1, 2, 3}
            self.bad: set[int] = set()

        def expected_observers(self) -> list[int]:
            return sorted(self.up_ - self.bad)

        def n_expected_observers(self) -> int:
            return len(self.up_ - self.bad)

        def up(self, i: int) -> bool:
            return i in self.up_

        def excuse(self, obs: int, subj: int, now: float) -> str:
            return ""

    for how in ("cut off", "crash"):
        m, w = Metrics(5), World()
        m.crash(4, 10.0)
        m.on_event(0, 4, "dead", 1, 12.0, w)
        m.on_event(1, 4, "dead", 1, 13.0, w)
        track: CrashTrack = m.crashes[4]
        assert track.dead_everywhere is None  # 2 and 3 have not said it
        m.on_event(2, 4, "dead", 1, 14.0, w)
        assert track.dead_everywhere is None  # 3 has not: still waits
        if how == "cut off":
            w.bad.add(3)
        else:
            w.up_.discard(3)
        m.departed(3, 20.0, w)
        assert track.dead_everywhere == 20.0, how
    t = topo("[mesh]\nagents = 20\nduration_s = 45\n[network]\nlatency_ms = 2\n"
             "[[event]]\nat_s = 5\ntee_expire = 1\n[[event]]\nat_s = 10\ncrash = 2\n")
    rep, sim = simulate(t, 4)
    assert sum(sim.tee_bad) == 1 and sim.up_untrusted == 1
    dead_all = rep["metrics"]["dead_everywhere_s"]
    assert dead_all["complete"] == 2 == dead_all["crashes"], dead_all


def write(tmp_path, text: str) -> str:
    p = tmp_path / "topo.toml"
    p.write_text(text)
    return str(p)


SMALL = """
[mesh]
agents = 10
duration_s = 20
profile = "lan"
[network]
latency_ms = 5
loss = 0.01
[[event]]
at_s = 8
crash = 1
"""


def test_cli_json_shape(tmp_path, capsys):
    path = write(tmp_path, SMALL)
    assert main(["simulate", path, "--seed", "4", "--json"]) == 0
    out = capsys.readouterr()
    doc = json.loads(out.out)
    for key in ("trace_hash", "agents", "simulated_s", "wall_s", "events", "events_per_s",
                "metrics"):
        assert key in doc
    m = doc["metrics"]
    for key in ("dissemination_999_s", "detection_s", "dead_everywhere_s", "false_positives",
                "msgs_per_agent_s", "bytes_per_agent_s"):
        assert key in m
    assert set(m["detection_s"]) >= {"p50", "p99", "max"}
    assert set(m["dead_everywhere_s"]) >= {"p50", "max"}
    assert doc["agents"] == 10 and doc["simulated_s"] == 20.0
    assert out.err == ""  # no progress bar when stderr is not a TTY
    assert main(["simulate", path, "--seed", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trace_hash"] == doc["trace_hash"]
    for key in ("mode", "stale_timers", "idle_timers", "handed_over"):
        assert key in doc
    assert doc["mode"] == "object" and doc["handed_over"] > 0
    # byte mode (every receiver decodes) reproduces the object-mode trace
    assert main(["simulate", path, "--seed", "4", "--json", "--mode", "bytes"]) == 0
    byt = json.loads(capsys.readouterr().out)
    assert byt["mode"] == "bytes" and byt["handed_over"] == 0
    assert byt["trace_hash"] == doc["trace_hash"]


def test_cli_no_crash_gives_null_metrics(tmp_path, capsys):
    path = write(tmp_path, SMALL.replace("[[event]]\nat_s = 8\ncrash = 1\n", ""))
    assert main(["simulate", path, "--json"]) == 0
    m = json.loads(capsys.readouterr().out)["metrics"]
    assert m["detection_s"] is None and m["dead_everywhere_s"] is None


@pytest.mark.parametrize("bad,needle", [
    ("agents = 10", "mesh.agents"),
    ("loss = 0.01", "network.loss"),
    ("at_s = 8", "event[0].at_s"),
])
def test_cli_malformed_is_one_line(tmp_path, capsys, bad, needle):
    repl = {"agents = 10": "agents = 0", "loss = 0.01": "loss = 2",
            "at_s = 8": "at_s = 99"}[bad]
    path = write(tmp_path, SMALL.replace(bad, repl))
    assert main(["simulate", path, "--json"]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and path in lines[0] and needle in lines[0]


def test_cli_out_writes_metrics_and_plots(tmp_path, capsys):
    path = write(tmp_path, SMALL)
    out_dir = tmp_path / "out"
    assert main(["simulate", path, "--out", str(out_dir)]) == 0
    assert "trace_hash" in capsys.readouterr().out
    for name in ("metrics.json", "dissemination.png", "detection_cdf.png",
                 "membership_view.png"):
        assert os.path.getsize(out_dir / name) > 0
    assert json.loads((out_dir / "metrics.json").read_text())["agents"] == 10


def test_trace_hash_is_identical_across_processes_and_hash_seeds(tmp_path):
    """Set/dict iteration over bytes keys must not leak PYTHONHASHSEED into the run."""
    import subprocess
    import sys

    path = write(tmp_path, SMALL + "[[event]]\nat_s = 10\npartition = 0.5\n"
                 "[[event]]\nat_s = 14\nheal = true\n")
    hashes = set()
    for hs in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hs)
        out = subprocess.run([sys.executable, "-m", "keepmesh.agent.cli", "simulate", path,
                              "--seed", "9", "--json"], capture_output=True, text=True,
                             env=env, timeout=120, check=True)
        hashes.add(json.loads(out.stdout)["trace_hash"])
    assert len(hashes) == 1


def test_every_fault_kind_runs_against_the_real_protocol():
    t = topo("""
[mesh]
duration_s = 30
[[group]]
name = "a"
agents = 6
latency_ms = 1
[[group]]
name = "b"
agents = 6
latency_ms = 3
jitter_ms = 2
distribution = "exponential"
bandwidth_mbps = 10
[[link]]
from = "a"
to = "b"
latency_ms = 20
loss = 0.02
symmetric = false
[[event]]
at_s = 6
crash = 1
group = "a"
[[event]]
at_s = 8
pause = 1
pause_s = 2
[[event]]
at_s = 9
loss_burst = 0.5
duration_s = 2
[[event]]
at_s = 10
partition = ["b"]
[[event]]
at_s = 12
heal = true
[[event]]
at_s = 13
restart = true
[[event]]
at_s = 14
leave = 1
[[event]]
at_s = 15
join = 2
group = "b"
[[event]]
at_s = 16
tee_expire = 1
[[event]]
at_s = 17
update = 2
[[event]]
at_s = 18
churn = 0.5
duration_s = 6
""")
    rep, sim = simulate(t, 21)
    assert rep["messages"]["balanced"] == 1
    assert rep["protocol_errors"] == 0
    assert rep["agents_started"] >= 12 + 1 + 2
    assert rep["metrics"]["updates_tracked"] == 3
    counts = rep["metrics"]["event_counts"]
    assert counts.get("left", 0) > 0 and counts.get("untrusted", 0) > 0
    assert rep["dropped_by_reason"]["partition"] > 0
