"""Secrets and data end to end: a real agent (QUIC, attested channel, sim TEE) and the CLI.

The agent runs in its own thread with its own trio run; the CLI is driven from
the test thread exactly as a user would run it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_thread import AgentThread
from cryptography.hazmat.primitives import serialization
from keepmesh.agent.cli import main
from keepmesh.agent.config import AgentConfig
from keepmesh.agent.identity import read_private_key
from keepmesh.agent.startup import build_agent

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "secret-digest"
PAD = 300_000  # data big enough to tell "the agent got the inputs" from handshakes


def fnv(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for x in data:
        h = ((h ^ x) * 0x100000001B3) % 2**64
    return f"{h:016x}"


def owner_key(tmp: Path) -> tuple[Path, bytes]:
    path = tmp / "owner.key"
    assert main(["keygen", str(path)]) == 0
    return path, read_private_key(path).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.fixture
def setup(tmp_path: Path, sim_root: Path) -> Iterator[tuple[AgentThread, list[str], Path]]:
    key, pub = owner_key(tmp_path)
    data_dir = tmp_path / "agent"
    at = AgentThread(build_agent(AgentConfig(listen="127.0.0.1:0", tee="sim", sim_root=sim_root,
                                             data_dir=data_dir, owners=[pub])))
    common = ["--agent", at.address, "--key", str(key), "--root", str(sim_root / "ark.pem")]
    try:
        yield at, common, data_dir
    finally:
        at.stop()


def workload(tmp_path: Path, secret: bytes, token: bytes, words: bytes) -> Path:
    w = tmp_path / "w"
    shutil.copytree(EXAMPLE, w)
    (w / "secrets" / "db.txt").write_bytes(secret)
    (w / "secrets" / "token.txt").write_bytes(token)
    (w / "data" / "words.txt").write_bytes(words)
    return w


def grep_dir(root: Path, *needles: bytes) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file():
            blob = p.read_bytes()
            hits += [f"{n!r} in {p}" for n in needles if n in blob]
    return hits


def test_deploy_call_rotate_without_plaintext_anywhere(
        tmp_path: Path, setup: tuple[AgentThread, list[str], Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    at, common, data_dir = setup
    secret = b"pw-" + os.urandom(12).hex().encode()
    token = b"tok-" + os.urandom(12).hex().encode()
    words = b"w-" + os.urandom(16).hex().encode() + b"\n"
    w = workload(tmp_path, secret, token, words)
    policy = tmp_path / "p.toml"
    policy.write_text("allow_sim = true\n")
    capsys.readouterr()
    assert main(["deploy", str(w), "--policy", str(policy), "--json", *common]) == 0
    keep = json.loads(capsys.readouterr().out)["keep"]

    assert main(["call", keep, "digest", *common]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"db_password={fnv(secret)} words={fnv(words)} API_TOKEN={fnv(token)}"

    # Rotation through the CLI: owner-signed, sealed under the deployment key.
    new = tmp_path / "new.txt"
    rotated = b"rotated-" + os.urandom(8).hex().encode()
    new.write_bytes(rotated)
    assert main(["secrets", "set", keep[:12], "db_password", "--file", str(new), "--json",
                 *common]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["keep"] == keep and doc["name"] == "db_password" and doc["serial"] > 0
    assert main(["call", keep, "digest", *common]) == 0
    assert capsys.readouterr().out.strip().startswith(f"db_password={fnv(rotated)} ")

    # An undeclared name is refused by the host with one line; the value is unchanged.
    assert main(["secrets", "set", keep, "nope", "--file", str(new), *common]) == 1
    err = capsys.readouterr().err
    assert "secret 'nope' is not declared" in err and len(err.strip().splitlines()) == 1

    # Nothing in the agent's data dir, `keeps --json` or `logs --json` holds a value.
    assert main(["keeps", "--json", *common]) == 0
    listing = capsys.readouterr().out
    assert main(["logs", keep, "--json", *common]) == 0
    logs = capsys.readouterr().out
    for value in (secret, token, words.strip(), rotated):
        assert value.decode() not in listing and value.decode() not in logs
    assert fnv(rotated) in logs  # the keep printed only the digest
    assert grep_dir(data_dir, secret, token, words.strip(), rotated) == []
    assert (json.loads(listing)["keeps"][0]["secrets"]) == 2


def test_failing_policy_host_gets_no_secret_bytes(
        tmp_path: Path, setup: tuple[AgentThread, list[str], Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    at, common, data_dir = setup
    secret = b"never-" + os.urandom(12).hex().encode()
    words = os.urandom(PAD)  # incompressible: its sealed form is as big as it is
    w = workload(tmp_path, secret, b"t", words)
    bad = tmp_path / "bad.toml"
    bad.write_text('allow_sim = true\n[snp]\nmeasurements = ["' + "ab" * 48 + '"]\n')
    before = at.bytes_in
    capsys.readouterr()
    assert main(["deploy", str(w), "--policy", str(bad), *common]) != 0
    err = capsys.readouterr().err
    assert "snp.measurements" in err and len(err.strip().splitlines()) == 1
    assert at.bytes_in - before < PAD // 2, "agent received sealed inputs despite failing policy"
    assert grep_dir(data_dir, secret) == []
    assert not list(data_dir.glob("keeps/*/deployment.bin"))

    good = tmp_path / "good.toml"
    good.write_text("allow_sim = true\n")
    before = at.bytes_in
    assert main(["deploy", str(w), "--policy", str(good), *common]) == 0
    assert at.bytes_in - before > PAD  # the same inputs do travel to a host that passes
    assert grep_dir(data_dir, secret, words[:64]) == []


def test_missing_input_fails_before_any_connection(
        tmp_path: Path, setup: tuple[AgentThread, list[str], Path],
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    at, common, _ = setup
    w = workload(tmp_path, b"s", b"t", b"w")
    toml = w / "keepmesh.toml"
    toml.write_text(toml.read_text().replace(
        "[data]", 'from_env = { env = "KM_E2E_SECRET" }\n\n[data]'))
    monkeypatch.delenv("KM_E2E_SECRET", raising=False)
    policy = tmp_path / "p.toml"
    policy.write_text("allow_sim = true\n")
    before = at.bytes_in
    capsys.readouterr()
    assert main(["deploy", str(w), "--policy", str(policy), *common]) == 1
    err = capsys.readouterr().err
    assert "secret 'from_env': environment variable KM_E2E_SECRET is not set" in err
    assert len(err.strip().splitlines()) == 1
    assert at.bytes_in == before  # not even a handshake
    missing = tmp_path / "missing.txt"
    assert main(["secrets", "set", "0" * 32, "db_password", "--file", str(missing),
                 *common]) == 1
    assert "no such file" in capsys.readouterr().err and at.bytes_in == before
    monkeypatch.setenv("KM_E2E_SECRET", "from-the-environment")
    assert main(["deploy", str(w), "--policy", str(policy), *common]) == 0


def test_secret_and_rotation_survive_kill_9_of_the_host(
        tmp_path: Path, sim_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Three real agent processes: the keep's host dies; the successor restores it from
    a standby with its secrets, its data and a rotation made after replication, without
    the owner; no agent's data dir ever holds a value."""
    from test_migration_agents import POLICY, Mesh, _ready, wait_for

    m = Mesh(tmp_path, sim_root, 3)
    try:
        secret = b"pw-" + os.urandom(12).hex().encode()
        token = b"tok-" + os.urandom(12).hex().encode()
        words = b"w-" + os.urandom(16).hex().encode() + b"\n"
        w = workload(tmp_path, secret, token, words)
        host, other = m.procs[0], m.procs[1]
        pol = tmp_path / "policy.toml"
        pol.write_text(POLICY)
        rc, out, err = m.cli(capsys, "deploy", str(w), "--policy", str(pol), "--json",
                             *m.flags(host))
        assert rc == 0, err
        keep = json.loads(out)["keep"]
        wait_for(lambda: _ready(m, other, keep, host, checkpoint=True), 40,
                 "a standby and a checkpoint")
        rotated = b"rotated-" + os.urandom(8).hex().encode()
        new = tmp_path / "new.txt"
        new.write_bytes(rotated)
        rc, _, err = m.cli(capsys, "secrets", "set", keep, "db_password", "--file", str(new),
                           *m.flags(host))
        assert rc == 0, err
        seq = m.where(other, keep)["last_checkpoint"]["seq"]  # type: ignore[index]
        wait_for(lambda: _ready(m, other, keep, host) and
                 m.where(other, keep)["last_checkpoint"]["seq"] > seq,  # type: ignore[index]
                 40, "a checkpoint after the rotation")
        host.kill()
        moved = wait_for(lambda: (x := m.where(other, keep)) and x["host"] != host.address
                         and x["state"] == "running" and x, 60, "the keep running elsewhere")
        new_host = m.by_address(moved["host"])
        got = m.call(capsys, new_host, keep, "digest")
        assert got == f"db_password={fnv(rotated)} words={fnv(words)} API_TOKEN={fnv(token)}"
        # Rotate again through an agent that does not run the keep: the CLI finds the
        # host from that agent's migration view and sends the sealed update there.
        via = next(p for p in m.procs if p not in (host, new_host))
        wait_for(lambda: (x := m.where(via, keep)) and x["host"] == new_host.address, 30,
                 "the other agent to know the new location")
        again = tmp_path / "again.txt"
        again.write_bytes(b"second-rotation")
        rc, _, err = m.cli(capsys, "secrets", "set", keep, "db_password", "--file", str(again),
                           *m.flags(via))
        assert rc == 0, err
        assert m.call(capsys, new_host, keep, "digest").startswith(
            f"db_password={fnv(b'second-rotation')} ")
        # A replicated keep (deploy --replicas 2: one copy on each live agent) gets a
        # rotation on every copy; before, only the one the entry agent located did, and
        # calls served by the other copy went on seeing the old value.
        rc, out, err = m.cli(capsys, "deploy", str(w), "--replicas", "2", "--policy", str(pol),
                             "--json", *m.flags(new_host))
        assert rc == 0, err
        placed = json.loads(out)
        hosts = sorted(p["host"] for p in placed["placements"])
        assert len(set(hosts)) == 2
        third = tmp_path / "third.txt"
        third.write_bytes(b"third-rotation")
        rc, out, err = m.cli(capsys, "secrets", "set", placed["keep"], "db_password", "--file",
                             str(third), "--json", *m.flags(new_host))
        assert rc == 0, err
        for h in hosts:
            assert m.call(capsys, m.by_address(h), placed["keep"], "digest").startswith(
                f"db_password={fnv(b'third-rotation')} "), f"copy on {h} has the old value"
        assert sorted(json.loads(out)["hosts"]) == hosts
        for p in m.procs:
            assert grep_dir(p.data_dir, secret, token, words.strip(), rotated) == []
    finally:
        for p in m.procs:
            p.stop()
