"""Deploy over an attested QUIC channel, end to end through the CLI.

The agent runs in its own thread (its own trio run), the CLI in the test
thread, exactly as a user would drive it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_thread import AgentThread
from cryptography.hazmat.primitives import serialization
from keepmesh.agent.cli import main
from keepmesh.agent.config import AgentConfig
from keepmesh.agent.identity import read_private_key
from keepmesh.agent.startup import build_agent

PAD = 200_000  # a data segment big enough to tell "got the package" from handshakes


def owner_key(tmp: Path) -> tuple[Path, str]:
    path = tmp / "owner.key"
    assert main(["keygen", str(path)]) == 0
    pub = read_private_key(path).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return path, pub.hex()


@pytest.fixture
def workload(tmp_path: Path) -> Path:
    d = tmp_path / "big"
    d.mkdir()
    (d / "big.wat").write_text(
        '(module (import "wasi_snapshot_preview1" "fd_write" '
        '(func $w (param i32 i32 i32 i32) (result i32)))\n'
        '  (memory (export "memory") 8)\n'
        f'  (data (i32.const 16) "{"x" * PAD}")\n'
        '  (func (export "_start") (i32.store (i32.const 0) (i32.const 16))\n'
        '    (i32.store (i32.const 4) (i32.const 3))\n'
        '    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))\n')
    (d / "keepmesh.toml").write_text('name = "big"\nmodule = "big.wat"\n')
    return d


@pytest.fixture
def agent_factory(tmp_path: Path, sim_root: Path) -> Iterator[object]:
    started: list[AgentThread] = []

    def make(owner: str) -> AgentThread:
        agent = build_agent(AgentConfig(listen="127.0.0.1:0", tee="sim", sim_root=sim_root,
                                        data_dir=tmp_path / "agent", owners=[bytes.fromhex(owner)]))
        t = AgentThread(agent)
        started.append(t)
        return t

    yield make
    for t in started:
        t.stop()


def test_deploy_run_logs_and_policy_refusal(tmp_path: Path, sim_root: Path, workload: Path,
                                            agent_factory: object,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    key, pub = owner_key(tmp_path)
    at = agent_factory(pub)  # type: ignore[operator]
    common = ["--agent", at.address, "--key", str(key), "--root", str(sim_root / "ark.pem")]

    # A policy the agent fails (wrong measurement): the CLI refuses before sending a byte of it.
    bad = tmp_path / "bad.toml"
    bad.write_text('allow_sim = true\n[snp]\nmeasurements = ["' + "ab" * 48 + '"]\n')
    before = at.bytes_in
    capsys.readouterr()
    assert main(["deploy", str(workload), "--policy", str(bad), *common]) != 0
    err = capsys.readouterr().err
    assert "snp.measurements" in err and len(err.strip().splitlines()) == 1
    assert at.bytes_in - before < PAD, "agent received the workload despite failing policy"

    # The right policy: deployed, runs, output in the logs.
    good = tmp_path / "good.toml"
    good.write_text("allow_sim = true\n")
    before = at.bytes_in
    assert main(["deploy", str(workload), "--policy", str(good), "--json", *common]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"deployment", "agent", "keep", "state"} <= set(doc)
    assert at.bytes_in - before > PAD
    import time
    for _ in range(50):
        assert main(["logs", doc["keep"], *common]) == 0
        out = capsys.readouterr().out
        if "xxx" in out:
            break
        time.sleep(0.1)
    assert "xxx" in out
    assert main(["keeps", "--json", *common]) == 0
    keeps = json.loads(capsys.readouterr().out)
    assert any(k["keep"] == doc["keep"] for k in keeps["keeps"])


def test_wrong_owner_refused(tmp_path: Path, sim_root: Path, workload: Path,
                             agent_factory: object, capsys: pytest.CaptureFixture[str]) -> None:
    _, pub = owner_key(tmp_path)
    at = agent_factory(pub)  # type: ignore[operator]
    stranger = tmp_path / "stranger.key"
    assert main(["keygen", str(stranger)]) == 0
    good = tmp_path / "good.toml"
    good.write_text("allow_sim = true\n")
    capsys.readouterr()
    rc = main(["deploy", str(workload), "--policy", str(good), "--agent", at.address,
               "--key", str(stranger), "--root", str(sim_root / "ark.pem")])
    assert rc != 0
    assert "owner" in capsys.readouterr().err


def test_message_reaches_workload_on_another_agent(tmp_path: Path, sim_root: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """send() addresses a workload id; the mesh finds the agent that runs it."""
    key, pub = owner_key(tmp_path)
    owners = [bytes.fromhex(pub)]
    a = AgentThread(build_agent(AgentConfig(listen="127.0.0.1:0", tee="sim", sim_root=sim_root,
                                            data_dir=tmp_path / "a", owners=owners)))
    b = AgentThread(build_agent(AgentConfig(listen="127.0.0.1:0", tee="sim", sim_root=sim_root,
                                            data_dir=tmp_path / "b", owners=owners,
                                            join=[a.address])))
    try:
        policy = tmp_path / "p.toml"
        policy.write_text("allow_sim = true\n")
        relay = Path(__file__).resolve().parents[1] / "examples" / "relay"
        keeps = {}
        for at in (a, b):
            flags = ["--agent", at.address, "--key", str(key),
                     "--root", str(sim_root / "ark.pem")]
            capsys.readouterr()
            assert main(["deploy", str(relay), "--policy", str(policy), "--json", *flags]) == 0
            keeps[at.address] = (json.loads(capsys.readouterr().out)["keep"], flags)
        keep_a, flags_a = keeps[a.address]
        keep_b, flags_b = keeps[b.address]
        import time
        deadline = time.monotonic() + 20
        while not a.agent.peers and time.monotonic() < deadline:
            time.sleep(0.1)
        capsys.readouterr()
        assert main(["call", keep_a, keep_b + "hello from a", *flags_a]) == 0
        assert capsys.readouterr().out.strip() == "sent"
        got = ""
        while time.monotonic() < deadline:
            assert main(["call", keep_b, "inbox", *flags_b]) == 0
            got = capsys.readouterr().out.strip()
            if got != "empty":
                break
            time.sleep(0.1)
        assert got == "hello from a"
        # A workload that runs nowhere: send is accepted locally, then dropped by the mesh.
        assert main(["call", keep_a, "f" * 32 + "lost", *flags_a]) == 0
    finally:
        b.stop()
        a.stop()
