"""`keepmesh agent` as a real process, for tests of what an operator sees.

One helper for every test that needs an agent in its own process (its own
RSS, its own signals, its exit code, its log): started with the venv's
interpreter (`python -m keepmesh.agent.cli agent --tee sim ...`), stdout and
stderr both captured to `<data_dir>.log`, which `wait_for(text)` polls.

By default the constructor returns once the agent logged "listening on
HOST:PORT" (`address` is then the bound address, so port 0 is fine and no
port is raced for); `ready=False` returns at once, for tests of what happens
before the agent is ready (start-up failures, early signals).

The in-process agent helpers (`build_agent` in a trio nursery) live in
hostile.py (`make_agent`) and agent_thread.py (`AgentThread`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT_S = 60.0
_LISTENING = re.compile(r"listening on (\S+?:\d+)")


class AgentProc:
    """One `keepmesh agent --tee sim --sim-root SIM_ROOT --data-dir DATA_DIR` process.

    `extra` are more `keepmesh agent` flags; `join` adds `--join` seeds.
    """

    def __init__(self, data_dir: Path, sim_root: Path, *extra: str,
                 listen: str = "127.0.0.1:0", join: list[str] | tuple[str, ...] = (),
                 ready: bool = True, timeout: float = START_TIMEOUT_S) -> None:
        self.data_dir = data_dir
        self.name = data_dir.name
        self.address = listen
        self.log_path = data_dir.with_name(data_dir.name + ".log")
        workdir = data_dir.parent
        # The agent never needs the user's home; a CLI run from a test must not touch it.
        env = dict(os.environ, PYTHONUNBUFFERED="1", HOME=str(workdir),
                   XDG_CONFIG_HOME=str(workdir / ".config"),
                   XDG_DATA_HOME=str(workdir / ".local"))
        argv = [sys.executable, "-m", "keepmesh.agent.cli", "agent", "--tee", "sim",
                "--sim-root", str(sim_root), "--data-dir", str(data_dir), "--listen", listen]
        for seed in join:
            argv += ["--join", seed]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([*argv, *extra], stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, env=env, cwd=workdir)
        if ready:
            self.wait_ready(timeout)

    # ------------------------------------------------------------ observing
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = START_TIMEOUT_S) -> str:
        """Poll the log until `text` appears; fails if the agent exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.log()
            if text in out:
                return out
            if self.proc.poll() is not None:
                raise AssertionError(f"agent {self.name} exited {self.proc.returncode} before "
                                     f"logging {text!r}: {out[-2000:]}")
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not logged within {timeout}s: {self.log()[-2000:]}")

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> str:
        """Wait for "listening on HOST:PORT"; sets and returns `address`."""
        m = _LISTENING.search(self.wait_for("listening on ", timeout))
        assert m is not None
        self.address = m.group(1)
        return self.address

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mb(self) -> float:
        """Resident set size in MB (0 once the process is gone)."""
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return 0.0
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0  # a zombie has no VmRSS line

    def catches(self, sig: signal.Signals) -> bool:
        """Whether the process has a handler for `sig` installed right now (SigCgt)."""
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return False
        mask = next((int(line.split()[1], 16) for line in text.splitlines()
                     if line.startswith("SigCgt:")), 0)
        return bool(mask >> (int(sig) - 1) & 1)

    def node_id(self) -> str:
        """Hex Ed25519 public key of the agent's identity (its membership node id)."""
        from cryptography.hazmat.primitives import serialization
        from keepmesh.agent.identity import read_private_key
        key = read_private_key(self.data_dir / "identity.key")
        return key.public_key().public_bytes(serialization.Encoding.Raw,
                                             serialization.PublicFormat.Raw).hex()

    # ------------------------------------------------------------ ending
    def send(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or None if still running after `timeout` seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """kill -9: no leave, no goodbye."""
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Stop gracefully with `sig` (a leave), kill -9 if still running after
        `timeout`; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode
