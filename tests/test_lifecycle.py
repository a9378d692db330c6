"""Agent lifecycle: start-up failures are one line and a non-zero exit; one agent
per data dir; SIGTERM/SIGINT and `keepmesh leave` gossip a leave and exit 0
within a few seconds (peers see "left", not "dead"); a second SIGINT exits at
once without a traceback."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from agent_proc import AgentProc
from cryptography.hazmat.primitives import serialization
from hostile import make_agent
from keepmesh.agent.cli import main
from keepmesh.agent.client import open_client
from keepmesh.agent.identity import read_private_key

EXIT_BUDGET_S = 5.0


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """`keepmesh agent` configures the root logger for its process; run in process
    here, that must not outlive the test (pytest's own handlers included)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def one_line_failure(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("keepmesh agent: ") and "Traceback" not in err
    return err


def agent_argv(tmp: Path, root: Path, name: str, *extra: str,
               listen: str = "127.0.0.1:0") -> list[str]:
    return ["agent", "--tee", "sim", "--sim-root", str(root), "--data-dir", str(tmp / name),
            "--listen", listen, *extra]


def test_start_up_failures_are_one_line(tmp_path: Path, sim_root: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    try:
        err = one_line_failure(capsys, agent_argv(tmp_path, sim_root, "a",
                                                  listen=f"127.0.0.1:{port}"))
        assert "in use" in err
    finally:
        busy.close()
    err = one_line_failure(capsys, agent_argv(tmp_path, sim_root, "b", listen="192.0.2.1:4433"))
    assert "cannot listen" in err  # TEST-NET address: not on this host
    one_line_failure(capsys, agent_argv(tmp_path, sim_root, "c",
                                        listen="no-such-host.invalid:4433"))
    bad_profile = tmp_path / "profile.toml"
    bad_profile.write_text('profile = "bogus"\n')
    err = one_line_failure(capsys, agent_argv(tmp_path, sim_root, "d", "--config",
                                              str(bad_profile)))
    assert "profile" in err
    unreadable = tmp_path / "unreadable.toml"
    unreadable.mkdir()  # a directory: reading it fails even as root
    one_line_failure(capsys, agent_argv(tmp_path, sim_root, "e", "--config", str(unreadable)))
    storage = tmp_path / "f" / "keeps" / "keeps"
    storage.mkdir(parents=True)
    os.chmod(tmp_path / "f", 0o700)
    (storage / "storage.key").write_bytes(b"short")
    err = one_line_failure(capsys, agent_argv(tmp_path, sim_root, "f"))
    assert "storage key" in err
    (tmp_path / "g").mkdir(mode=0o700)
    (tmp_path / "g" / "identity.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nMC4C")
    os.chmod(tmp_path / "g" / "identity.key", 0o600)
    one_line_failure(capsys, agent_argv(tmp_path, sim_root, "g"))


def test_one_agent_per_data_dir(tmp_path: Path, sim_root: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    first = make_agent(tmp_path, sim_root, "a")
    try:
        err = one_line_failure(capsys, agent_argv(tmp_path, sim_root, "a"))
        assert "in use by another agent" in err and str(os.getpid()) in err
    finally:
        first.close()
    second = make_agent(tmp_path, sim_root, "a")  # free again once the first is gone
    second.close()


async def member_state(address: str, root: Path, key: Path, node_id: str) -> str | None:
    client = await open_client(address, roots=[root / "ark.pem"], key_path=key)
    try:
        rows = (await client.call("members.list", {}))["members"]
    finally:
        await client.aclose()
    return next((r["state"] for r in rows if r["node_id"] == node_id), None)


async def wait_state(address: str, root: Path, key: Path, node_id: str, want: str,
                     timeout: float = 20.0) -> None:
    with trio.fail_after(timeout):
        while await member_state(address, root, key, node_id) != want:
            await trio.sleep(0.3)


async def wait_exit(agent: AgentProc, budget: float = EXIT_BUDGET_S) -> tuple[int, float]:
    t0 = time.monotonic()
    while agent.proc.poll() is None and time.monotonic() - t0 < budget + 5:
        await trio.sleep(0.05)
    assert agent.proc.poll() is not None, "agent still running"
    return agent.proc.returncode, time.monotonic() - t0


@pytest.mark.slow
async def test_signals_gossip_a_leave_and_exit_zero(tmp_path: Path, sim_root: Path) -> None:
    """SIGTERM to one member, SIGINT to another: both exit 0 within the budget and
    the remaining member lists both as "left" (a leave, not a failure)."""
    a = AgentProc(tmp_path / "a", sim_root)
    others = {name: AgentProc(tmp_path / name, sim_root, join=[a.address])
              for name in ("b", "c")}
    key = tmp_path / "op.key"
    try:
        ids = {name: p.node_id() for name, p in others.items()}
        for node_id in ids.values():
            await wait_state(a.address, sim_root, key, node_id, "alive")
        for name, sig in (("b", signal.SIGTERM), ("c", signal.SIGINT)):
            p = others[name]
            p.proc.send_signal(sig)
            code, took = await wait_exit(p)
            assert code == 0 and took < EXIT_BUDGET_S, (sig, code, took, p.log()[-1500:])
            assert "Traceback" not in p.log()
            await wait_state(a.address, sim_root, key, ids[name], "left", timeout=5)
    finally:
        for p in others.values():
            p.stop()
        a.stop()


@pytest.mark.slow
async def test_second_interrupt_exits_at_once(tmp_path: Path, sim_root: Path) -> None:
    a = AgentProc(tmp_path / "a", sim_root)
    try:
        a.proc.send_signal(signal.SIGINT)  # starts a leave (at least a second of gossip)
        await trio.sleep(0.05)
        a.proc.send_signal(signal.SIGINT)
        code, took = await wait_exit(a, budget=1.0)
        assert took < 1.0 and code in (0, 130), (code, took)
        assert "Traceback" not in a.log()
    finally:
        a.stop()


@pytest.mark.slow
async def test_leave_verb_stops_the_process(tmp_path: Path, sim_root: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    owner = tmp_path / "owner.key"
    assert main(["keygen", str(owner)]) == 0
    pub = read_private_key(owner).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    a = AgentProc(tmp_path / "a", sim_root, "--owner", pub)
    try:
        code = await trio.to_thread.run_sync(
            main, ["leave", "--agent", a.address, "--key", str(owner),
                   "--root", str(sim_root / "ark.pem")])
        assert code == 0, capsys.readouterr().err
        code, took = await wait_exit(a)
        assert code == 0 and took < EXIT_BUDGET_S, (code, took)
    finally:
        a.stop()


@pytest.mark.slow
async def test_sigterm_before_ready_exits_zero_with_one_line(tmp_path: Path,
                                                             sim_root: Path) -> None:
    """A supervisor stopping an agent that is still starting gets exit 0 and one line,
    as after it was ready (it was: killed by the default handler, exit 143). Two
    moments: while the command starts (its SIGTERM handler is installed, arguments
    not yet parsed or the agent not yet built) and while the agent is being built
    (the data dir's identity key exists, "listening on" not yet logged)."""
    moments = {
        "starting": lambda p: p.catches(signal.SIGTERM),
        "building": lambda p: (tmp_path / p.name / "identity.key").exists(),
    }
    for moment, reached in moments.items():
        for attempt in range(3):  # a fast machine may be ready before the signal lands
            p = AgentProc(tmp_path / f"{moment}{attempt}", sim_root, ready=False)
            try:
                deadline = time.monotonic() + 60
                while not reached(p) and p.alive and time.monotonic() < deadline:
                    await trio.sleep(0.005)
                p.send(signal.SIGTERM)
                code = await trio.to_thread.run_sync(p.wait_exit, 60)  # building may be slow
            finally:
                p.stop()
            log = p.log()
            if "listening on" in log:
                continue  # ready first: that is the other test's case
            assert code == 0, (moment, code, log[-1500:])
            stops = [line for line in log.splitlines() if "stopped by SIGTERM" in line]
            assert len(stops) == 1 and "before it was ready" in stops[0], (moment, log)
            assert "Traceback" not in log
            break
        else:
            pytest.fail(f"{moment}: the agent was always ready before SIGTERM landed")
