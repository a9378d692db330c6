"""The CLI's one-line advice for the failures users hit, against a real agent.

Each message is chosen from a typed code (RPC error code, channel failure
kind), never from error text: wrong key on a keep, a key that is not an
admitted owner, an agent whose evidence needs a --root. Also: keep logs carry
timestamps and `logs -f` follows.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_thread import AgentThread
from keepmesh.agent.cli import main
from keepmesh.agent.config import AgentConfig
from keepmesh.agent.startup import build_agent


@pytest.fixture
def owned_agent(tmp_path: Path, sim_root: Path) -> Iterator[tuple[AgentThread, Path]]:
    owner = tmp_path / "owner.key"
    assert main(["keygen", str(owner)]) == 0
    from keepmesh.agent.identity import read_private_key
    pub = read_private_key(owner).public_key().public_bytes_raw()
    a = AgentThread(build_agent(AgentConfig(listen="127.0.0.1:0", tee="sim", sim_root=sim_root,
                                            data_dir=tmp_path / "a", owners=[pub])))
    yield a, owner
    a.stop()


def one_line(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 1) -> str:
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_advice(owned_agent: tuple[AgentThread, Path], tmp_path: Path, sim_root: Path,
                capsys: pytest.CaptureFixture[str]) -> None:
    a, owner = owned_agent
    root = ["--agent", a.address, "--root", str(sim_root / "ark.pem")]
    capsys.readouterr()
    assert main(["deploy", "examples/counter", "-q", *root, "--key", str(owner)]) == 0
    keep = capsys.readouterr().out.strip()
    assert len(keep) >= 16

    stranger = ["--key", str(tmp_path / "stranger.key")]
    err = one_line(capsys, ["call", keep, "inc", *root, *stranger])
    assert f"keep {keep} is not yours or does not exist; pass the owner's --key" in err
    err = one_line(capsys, ["logs", "0123456789abcdef", *root, "--key", str(owner)])
    assert "is not yours or does not exist" in err  # absent and foreign look the same
    err = one_line(capsys, ["join", "127.0.0.1:9", *root, *stranger])
    assert "this key is not an admitted owner of the agent" in err
    err = one_line(capsys, ["peers", "--agent", a.address, *stranger])
    assert "--root" in err  # a sim agent's evidence chains to a root we were not given

    # Owner: logs with timestamps, JSON lines when following.
    assert main(["call", keep, "inc", *root, "--key", str(owner)]) == 0
    capsys.readouterr()
    assert main(["logs", keep, *root, "--key", str(owner)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out and all(line[:4].isdigit() and "T" in line[:11] for line in out)
    assert main(["logs", keep, "--json", *root, "--key", str(owner)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert all(isinstance(x["time"], float) and isinstance(x["seq"], int) for x in doc["lines"])


def test_logs_follow_prints_new_lines(owned_agent: tuple[AgentThread, Path], sim_root: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    import _thread

    a, owner = owned_agent
    root = ["--agent", a.address, "--root", str(sim_root / "ark.pem"), "--key", str(owner)]
    assert main(["deploy", "examples/counter", "-q", *root]) == 0
    keep = capsys.readouterr().out.strip()

    returned = threading.Event()

    def call_then_stop() -> None:
        try:
            time.sleep(2.0)
            main(["call", keep, "inc", *root])
            main(["call", keep, "inc", *root])
            time.sleep(2.5)
        finally:
            # Ctrl-C ends `logs -f`, exit 0. Sent even if a call above raised, and again
            # if `logs -f` has not returned 5 s later: a simulated Ctrl-C is only seen
            # when the main thread next runs Python code (once, a full-suite run hung).
            _thread.interrupt_main()
            while not returned.wait(5.0):
                _thread.interrupt_main()

    # trio turns Ctrl-C into KeyboardInterrupt only if SIGINT has Python's default
    # handler when trio.run starts. Two full-suite runs hung here with the Ctrl-C
    # ignored; a handler left by an earlier test is the suspected (unproven) cause.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    t = threading.Thread(target=call_then_stop)
    t.start()
    try:
        code = main(["logs", keep, "-f", "--json", *root])
    finally:
        returned.set()
        signal.signal(signal.SIGINT, previous)
    t.join()
    assert code == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    seqs = [x["seq"] for x in lines]
    assert len(lines) >= 2 and seqs == sorted(set(seqs))  # each line once, in order
