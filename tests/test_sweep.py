"""`keepmesh sweep`: hostile validation, aggregation, replay by trace hash, local pool and Dask."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from keepmesh.agent.cli import main
from keepmesh.simulations.sweep import (
    MAX_RUNS,
    SweepError,
    aggregate,
    load_sweep,
    run_sweep,
)

TOPO = """
[mesh]
agents = 12
duration_s = 15
profile = "lan"
[network]
latency_ms = 3
jitter_ms = 1
loss = 0.01
[[event]]
at_s = 6
crash = 1
"""


def write(tmp: Path, sweep: str, topo: str = TOPO) -> str:
    (tmp / "topo.toml").write_text(topo)
    p = tmp / "sweep.toml"
    p.write_text(sweep)
    return str(p)


SMALL = """
[sweep]
topology = "topo.toml"
seeds = [3, 4]
[grid]
loss = [0.0, 0.1]
agents = [10, 14]
"""


@pytest.mark.parametrize("body,needle", [
    ("[sweep]\ntopology='topo.toml'\n[grdi]\n", "grdi: unknown table"),
    ("[sweep]\ntopology='topo.toml'\nworkers=3\n", "sweep.workers: unknown key"),
    ("[sweep]\ntopology='topo.toml'\n[grid]\nspeed=[1]\n", "grid.speed: unknown parameter"),
    ("[sweep]\ntopology='topo.toml'\n[grid]\nloss=[0.1, 0.1]\n", "values repeat"),
    ("[sweep]\ntopology='topo.toml'\n[grid]\nloss=[1.5]\n", "outside"),
    ("[sweep]\ntopology='topo.toml'\n[grid]\nloss=[true]\n", "expected a number"),
    ("[sweep]\ntopology='topo.toml'\n[grid]\nagents=[2.5]\n", "expected an integer"),
    ("[sweep]\ntopology='topo.toml'\n[grid]\nloss=[]\n", "expected 1..256 values"),
    ("[sweep]\ntopology='topo.toml'\nseeds=0\n", "sweep.seeds"),
    ("[sweep]\ntopology='topo.toml'\nseeds=[1, 1]\n", "seeds repeat"),
    ("[sweep]\ntopology='topo.toml'\nseeds=['a']\n", "64-bit integers"),
    ("[sweep]\ntopology='nope.toml'\n", "cannot read"),
    ("[sweep]\nseeds=2\n", "sweep.topology"),
    ("[grid]\nloss=[0.1]\n", "missing [sweep]"),
    ("[sweep]\ntopology='topo.toml'\n[grid]\nduration_s=[5]\n", "beyond mesh.duration_s"),
    ("[sweep]\ntopology='topo.toml'\n[grid]\nload=[5000.0]\nduration_s=[86400]\n",
     "update events above"),
    ("[sweep]\ntopology='topo.toml'\nseeds=100\n[grid]\nloss=[0.0,0.1,0.2,0.3,0.4,0.5,0.6,"
     "0.7,0.8,0.9]\nagents=[10,11,12,13,14,15,16,17,18,19,20]\n", f"above {MAX_RUNS}"),
    ("[sweep\n", "TOML syntax"),
    # tomllib raises ValueError (not TOMLDecodeError) for an integer over 4,300 digits
    ("[sweep]\ntopology='topo.toml'\nseeds=" + "9" * 5000 + "\n", "TOML syntax: Exceeds"),
])
def test_hostile_sweep_files_fail_with_one_line(tmp_path, capsys, body, needle):
    path = write(tmp_path, body)
    with pytest.raises(SweepError) as err:
        load_sweep(path)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert main(["sweep", path, "--workers", "1"]) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1 and needle in out.err


def test_agents_axis_refused_for_group_topologies_and_binary_files(tmp_path):
    groups = "[mesh]\nduration_s = 10\n[[group]]\nname = 'a'\nagents = 3\n"
    with pytest.raises(SweepError, match="per \\[\\[group\\]\\]"):
        load_sweep(write(tmp_path, "[sweep]\ntopology='topo.toml'\n[grid]\nagents=[4]\n",
                         groups))
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe[sweep]")
    with pytest.raises(SweepError, match="not UTF-8"):
        load_sweep(str(tmp_path / "bin.toml"))
    (tmp_path / "big.toml").write_bytes(b"#" * (1024 * 1024 + 10))
    with pytest.raises(SweepError, match="larger than"):
        load_sweep(str(tmp_path / "big.toml"))


def test_cli_flags_are_checked(tmp_path, capsys):
    path = write(tmp_path, SMALL)
    assert main(["sweep", path, "--workers", "0"]) == 1
    assert main(["sweep", path, "--cluster", "tcp://a b"]) == 1
    err = capsys.readouterr().err
    assert "--workers must be in" in err and "--cluster" in err


def test_local_sweep_aggregates_and_every_run_replays_alone(tmp_path, capsys):
    sweep = load_sweep(write(tmp_path, SMALL))
    doc = run_sweep(sweep, workers=1)
    assert doc["runs_total"] == 8 and doc["runs_failed"] == 0 and len(doc["runs"]) == 8
    assert [(r["params"], r["seed"]) for r in doc["runs"]] == sweep.runs()  # fixed order
    assert len({r["trace_hash"] for r in doc["runs"]}) == 8
    # aggregation: median/p10/p90 over the two seeds of each point
    for point in doc["points"]:
        runs = [r for r in doc["runs"] if r["params"] == point["params"]]
        vals = sorted(r["metrics"]["msgs_per_agent_s"] for r in runs)
        fig = point["metrics"]["msgs_per_agent_s"]
        assert fig["n"] == 2 and fig["median"] == pytest.approx(sum(vals) / 2)
        assert fig["p10"] == vals[0] and fig["p90"] == vals[1]
        assert point["trace_hashes"] == [r["trace_hash"] for r in runs]
    # the point with more loss drops datagrams: the grid really changed the topology
    assert doc["points"][0]["params"] == {"loss": 0.0, "agents": 10}
    # replay one run alone with `keepmesh simulate --set`: same hash
    run = doc["runs"][5]
    argv = run["replay"].split()[1:]
    assert argv[0] == "simulate"
    assert main(argv + ["--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["trace_hash"] == run["trace_hash"] and rep["agents"] == run["params"]["agents"]


def test_load_axis_adds_updates_and_failed_runs_are_reported(tmp_path):
    sweep = load_sweep(write(tmp_path, "[sweep]\ntopology='topo.toml'\nseeds=1\n"
                             "[grid]\nload=[0, 0.4]\n"))  # 15 s x 0.4: one due at the end
    doc = run_sweep(sweep, workers=1)
    base, loaded = doc["runs"]
    assert loaded["metrics"]["msgs_per_agent_s"] > base["metrics"]["msgs_per_agent_s"]
    # no update is made too late to spread: the headline figure exists under load
    assert loaded["metrics"]["dissemination_999_s"] is not None
    broken = dict(doc["runs"][0], error="X: y")
    agg = aggregate([{"load": 0}], [broken])
    assert agg[0]["runs"] == 0 and agg[0]["metrics"]["events"]["median"] is None


@pytest.mark.slow
def test_process_pool_gives_the_same_hashes_and_writes_plots(tmp_path, capsys):
    path = write(tmp_path, SMALL.replace("seeds = [3, 4]", "seeds = [3]"))
    local = run_sweep(load_sweep(path), workers=1)
    out = tmp_path / "out"
    assert main(["sweep", path, "--workers", "2", "--json", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert captured.err == ""  # --json / not a terminal: no progress line
    assert [r["trace_hash"] for r in doc["runs"]] == [r["trace_hash"] for r in local["runs"]]
    assert (out / "sweep.json").exists() and (out / "sweep_msgs_per_agent_s.png").exists()


@pytest.mark.slow
def test_dask_local_cluster_reproduces_local_hashes(tmp_path, capsys):
    distributed = pytest.importorskip("dask.distributed")
    path = write(tmp_path, SMALL)
    local = run_sweep(load_sweep(path), workers=1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        assert main(["sweep", path, "--cluster", cluster.scheduler_address, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["executor"]["kind"] == "dask"
    assert [r["trace_hash"] for r in doc["runs"]] == [r["trace_hash"] for r in local["runs"]]


def test_unreachable_cluster_is_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("dask.distributed")
    monkeypatch.setattr("keepmesh.simulations.sweep.CONNECT_TIMEOUT_S", 1.0)
    path = write(tmp_path, SMALL)
    assert main(["sweep", path, "--cluster", "tcp://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot connect" in err


@pytest.mark.parametrize("answer", [None, b"\xff" * 64, b"HTTP/1.0 200 OK\r\n\r\n"])
def test_a_cluster_address_that_is_not_a_scheduler_is_one_line(tmp_path, capsys, monkeypatch,
                                                                answer):
    """Something that accepts and then says nothing (the sweep used to wait forever: Dask's
    timeout covers reaching the address, not a silent peer), or answers garbage."""
    import socket
    import threading
    pytest.importorskip("dask.distributed")
    monkeypatch.setattr("keepmesh.simulations.sweep.CONNECT_TIMEOUT_S", 1.0)
    monkeypatch.setattr("keepmesh.simulations.sweep.CONNECT_GRACE_S", 0.5)
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            if answer is not None:
                conn.sendall(answer)
    threading.Thread(target=serve, daemon=True).start()
    try:
        path = write(tmp_path, SMALL)
        port = server.getsockname()[1]
        assert main(["sweep", path, "--cluster", f"tcp://127.0.0.1:{port}"]) == 1
    finally:
        server.close()
        for conn in held:
            conn.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--cluster" in err and "Traceback" not in err


def test_progress_only_on_a_terminal(tmp_path, capsys, monkeypatch):
    topo = tmp_path / "t.toml"
    topo.write_text(TOPO)
    assert main(["simulate", str(topo)]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["simulate", str(topo), "--json"]) == 0  # --json: still nothing
    assert capsys.readouterr().err == ""
    monkeypatch.setattr("keepmesh.agent.cli._progress._REDRAW_S", 0.0)
    assert main(["simulate", str(topo)]) == 0
    err = capsys.readouterr().err
    assert "simulating t=" in err and "events/s" in err and "ETA" in err
    path = write(tmp_path, SMALL)
    assert main(["sweep", path, "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "sweep 8/8 runs" in err and "ETA" in err


def test_example_sweeps_are_valid():
    examples = sorted((Path(__file__).parent.parent / "simulations" / "sweeps").glob("*.toml"))
    assert examples
    for path in examples:
        assert load_sweep(str(path)).runs()
