"""`keepmesh agent` as a real process, for tests of what an operator sees.

Started with the venv's interpreter (`python -m keepmesh.agent.cli agent ...`),
its stderr captured to a file; `wait_for(text)` polls that file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from walkthrough import free_port


class AgentProc:
    def __init__(self, workdir: Path, name: str, sim_root: Path, *extra: str,
                 listen: str | None = None) -> None:
        self.port = free_port()
        self.address = listen or f"127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}.log"
        env = dict(os.environ, HOME=str(workdir), XDG_CONFIG_HOME=str(workdir / ".config"),
                   XDG_DATA_HOME=str(workdir / ".local"))
        argv = [sys.executable, "-m", "keepmesh.agent.cli", "agent", "--tee", "sim",
                "--sim-root", str(sim_root), "--data-dir", str(workdir / name),
                "--listen", self.address, *extra]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=env, cwd=workdir)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.log()
            if text in out:
                return out
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {out[-2000:]}")
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not logged within {timeout}s: {self.log()[-2000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
