"""Placement between real agents on loopback, driven through the CLI as a user would:
deploy through one agent lands where the signed requirements say; replicas on distinct
hosts; a host that fails the deployment's policy never receives the package; keeps,
call and stop work from an agent that does not host the keep."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from agent_thread import AgentThread
from cryptography.hazmat.primitives import serialization
from keepmesh.agent.cli import main
from keepmesh.agent.config import AgentConfig, HostCapacity
from keepmesh.agent.identity import read_private_key
from keepmesh.agent.startup import build_agent
from keepmesh.protocol.effects import Leave

pytestmark = pytest.mark.slow


@pytest.fixture
def owner(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "owner.key"
    assert main(["keygen", str(path)]) == 0
    pub = read_private_key(path).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return path, pub


@pytest.fixture
def mesh(tmp_path: Path, sim_root: Path, owner: tuple[Path, bytes]
         ) -> Iterator[list[AgentThread]]:
    """Three agents: a (no labels), b (zone=factory-3), c (zone=office); b and c join a."""
    _, pub = owner
    started: list[AgentThread] = []
    labels = [{}, {"zone": "factory-3"}, {"zone": "office"}]
    for i, lab in enumerate(labels):
        join = [started[0].address] if started else []
        cfg = AgentConfig(listen="127.0.0.1:0", tee="sim", sim_root=sim_root,
                          data_dir=tmp_path / f"agent{i}", owners=[pub], join=join,
                          labels=dict(lab), capacity=HostCapacity(memory=256 << 20, keeps=4))
        started.append(AgentThread(build_agent(cfg)))
    common = ["--root", str(sim_root / "ark.pem"), "--json"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # every view has every member alive and trusted
        if all(_alive(a, common) == 3 for a in started):
            break
        time.sleep(0.3)
    else:
        pytest.fail("mesh did not converge")
    yield started
    for t in started:
        t.stop()


def _alive(a: AgentThread, common: list[str]) -> int:
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        if main(["members", "--agent", a.address, *common]) != 0:
            return 0
    doc = json.loads(buf.getvalue())
    rows = doc["members"] if isinstance(doc, dict) else doc
    return sum(1 for m in rows if m["state"] == "alive")


def _workload(tmp_path: Path, extra: str) -> Path:
    d = tmp_path / f"counter{abs(hash(extra)) % 10000}"
    shutil.copytree("examples/counter", d)
    toml = d / "keepmesh.toml"
    toml.write_text(toml.read_text() + extra)
    return d


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_deploy_lands_on_the_labelled_agent_and_is_reachable_from_anywhere(
        mesh: list[AgentThread], owner: tuple[Path, bytes], tmp_path: Path, sim_root: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    a, b, c = mesh
    key, pub = owner
    flags = ["--key", str(key), "--root", str(sim_root / "ark.pem")]
    w = _workload(tmp_path, '\n[placement]\nlabels = { zone = "factory-3" }\n')
    code, out, err = _run(capsys, ["deploy", str(w), "--agent", a.address, "--json", *flags])
    assert code == 0, err
    doc = json.loads(out)
    keep = doc["keep"]
    assert [p["host"] for p in doc["placements"]] == [b.address]
    assert doc["placements"][0]["host_id"] == b.agent.identity.public_bytes.hex()
    assert doc["placements"][0]["epoch"] == 1

    # call from a (not the host): forwarded to b
    code, out, err = _run(capsys, ["call", keep, "inc", "--agent", a.address, *flags])
    assert code == 0, err
    # keeps from c lists it with its host, once the location has gossiped
    deadline = time.monotonic() + 30
    row = None
    while time.monotonic() < deadline and row is None:
        code, out, err = _run(capsys, ["keeps", "--agent", c.address, "--json", *flags])
        assert code == 0, err
        listed = json.loads(out)
        rows = listed["keeps"] if isinstance(listed, dict) else listed
        row = next((r for r in rows if r["keep"] == keep), None)
        time.sleep(0.2)
    assert row is not None, "location never reached agent c"
    assert row["host"] == b.address and row["host_id"] == b.agent.identity.public_bytes.hex()
    assert row["epoch"] == 1 and row["state"] == "running"
    # logs from c (not the host): forwarded to b, which says it answered
    code, out, err = _run(capsys, ["logs", keep, "--agent", c.address, "--json", *flags])
    assert code == 0, err
    logs = json.loads(out)
    assert logs["keep"] == keep and logs["host_id"] == b.agent.identity.public_bytes.hex()
    assert logs["host"] == b.address and isinstance(logs["lines"], list)
    # stop from c
    code, out, err = _run(capsys, ["stop", keep, "--agent", c.address, *flags])
    assert code == 0, err

    # nothing fits: one line naming what could not be met, non-zero exit
    w2 = _workload(tmp_path, '\n[placement]\nlabels = { zone = "mars" }\n')
    code, out, err = _run(capsys, ["deploy", str(w2), "--agent", a.address, *flags])
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "zone=mars" in err and "MiB" in err


def test_replicas_land_on_distinct_hosts(mesh: list[AgentThread], owner: tuple[Path, bytes],
                                         tmp_path: Path, sim_root: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    a = mesh[0]
    key, _ = owner
    flags = ["--key", str(key), "--root", str(sim_root / "ark.pem")]
    w = _workload(tmp_path, "")
    code, out, err = _run(capsys, ["deploy", str(w), "--agent", a.address, "--replicas", "3",
                                   "--json", *flags])
    assert code == 0, err
    doc = json.loads(out)
    hosts = [p["host"] for p in doc["placements"]]
    assert sorted(hosts) == sorted(t.address for t in mesh)
    # `keeps` lists every copy, and each row names the workload as the local copy's does
    deadline = time.monotonic() + 30
    while True:
        code, out, err = _run(capsys, ["keeps", "--agent", a.address, "--json", *flags])
        assert code == 0, err
        rows = [r for r in json.loads(out)["keeps"] if r["keep"] == doc["keep"]]
        if len(rows) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted(r["host"] for r in rows) == sorted(hosts)
    assert {(r.get("name"), r.get("kind")) for r in rows} == {("counter", "service")}, rows
    # a location names its host's address when it was made; a host that restarted
    # elsewhere (same copy, same epoch) is listed where its membership record says it is
    b = mesh[1]
    placement = a.agent.methods["keeps.list"].__self__  # type: ignore[attr-defined]
    key = (doc["keep"], b.agent.identity.public_bytes)
    table = next(t for t in (placement.machine.locations, placement.machine.placed)
                 if key in t)  # gossiped, or what a placed as the entry
    table[key] = dataclasses.replace(table[key], host="127.0.0.1:9")  # its previous life's
    code, out, err = _run(capsys, ["keeps", "--agent", a.address, "--json", *flags])
    assert code == 0, err
    assert sorted(r["host"] for r in json.loads(out)["keeps"]
                  if r["keep"] == doc["keep"]) == sorted(hosts)
    # c leaves the mesh (its copy is not stopped): a's listing must not say that copy
    # runs at a host membership holds gone (keeps.list: `orphaned`, nobody takes it
    # over; `keepmesh keeps` lists running copies only)
    c = mesh[2]
    mesh_c = c.agent.on_leave[0].__self__  # type: ignore[attr-defined]

    def leave() -> None:
        mesh_c.node.command(Leave(), mesh_c.now())
        mesh_c.flush()
    trio.from_thread.run_sync(leave, trio_token=c._token)
    deadline = time.monotonic() + 10
    while True:
        code, out, err = _run(capsys, ["keeps", "--agent", a.address, "--json", *flags])
        states = {r["host"]: r["state"] for r in json.loads(out)["keeps"]
                  if r["keep"] == doc["keep"]}
        if states.get(c.address) != "running" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert states == {a.address: "running", mesh[1].address: "running"}, states
    # a fourth replica has no distinct host left
    w2 = _workload(tmp_path, "\n# again\n")
    code, out, err = _run(capsys, ["deploy", str(w2), "--agent", a.address, "--replicas", "4",
                                   *flags])
    assert code != 0 and "4 replicas need 4 distinct hosts" in err


def test_host_failing_policy_never_receives_the_package(
        mesh: list[AgentThread], owner: tuple[Path, bytes], tmp_path: Path, sim_root: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    a = mesh[0]
    key, _ = owner
    flags = ["--key", str(key), "--root", str(sim_root / "ark.pem")]
    w = _workload(tmp_path, '\n[placement]\nreplicas = 1\n')
    pad = 200_000
    wat = w / "counter.wat"
    text = wat.read_text()
    # make the package big enough to tell "got the package" from handshakes
    wat.write_text(text.rstrip()[:-1] + f'\n  (data (i32.const 60000) "{"x" * pad}"))\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('allow_sim = true\n[snp]\nmeasurements = ["' + "ab" * 48 + '"]\n')
    before = [t.bytes_in for t in mesh]
    code, out, err = _run(capsys, ["deploy", str(w), "--policy", str(bad), "--agent",
                                   a.address, *flags])
    assert code != 0 and len(err.strip().splitlines()) == 1
    for t, b0 in zip(mesh, before, strict=True):
        assert t.bytes_in - b0 < pad, "a host failing the policy received the workload"
