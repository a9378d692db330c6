"""Real agent processes on loopback, for the demo, multi-process tests and benchmarks."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

START_TIMEOUT_S = 60.0


class AgentProcess:
    """One `keepmesh agent` child process; its stderr goes to `log_path`."""

    def __init__(self, data_dir: Path, sim_root: Path, *, listen: str = "127.0.0.1:0",
                 join: list[str] | None = None, extra: list[str] | None = None,
                 start_timeout: float = START_TIMEOUT_S) -> None:
        self.data_dir = data_dir
        self.start_timeout = start_timeout
        cmd = [sys.executable, "-m", "keepmesh.agent.cli", "agent", "--tee", "sim",
               "--sim-root", str(sim_root), "--data-dir", str(data_dir), "--listen", listen]
        for seed in join or []:
            cmd += ["--join", seed]
        cmd += extra or []
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir.with_name(data_dir.name + ".log")
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.address = self._read_address()
        threading.Thread(target=self._drain, daemon=True).start()

    def _read_address(self) -> str:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self._log.write(line)
            # "... agent <fingerprint> listening on HOST:PORT (...)", whatever the log format
            if " listening on " in line and "agent " in line:
                return line.split(" listening on ")[1].split()[0]
        self.proc.kill()
        self._log.flush()
        raise RuntimeError(f"agent did not start: {self.log_path.read_text()[-500:]}")

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._log.write(line)
            self._log.flush()

    def kill(self) -> None:
        """kill -9: no leave, no goodbye."""
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 10) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
