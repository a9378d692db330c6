"""Run the shell commands of a Markdown page literally, as a newcomer would.

Used by tests/test_readme.py and tests/test_docs.py. Why literal: docs rot
when a test runs its own copy of the commands; here the commands come out of
the page itself. Only the listening ports (substituted by free ones) and the
working directory (a temp dir with the repository's .venv, examples/ and
simulations/ linked in) differ. `keepmesh agent ...` commands run in the
background (they are "terminal 1/2" in the page) and must print their
"listening" line; every other command runs, in order, in one bash session
(so `KEEP=$(...)` carries over) and must exit 0.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINKED = (".venv", "examples", "simulations", "packaging")
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)
HEREDOC = re.compile(r"<<-?\s*'?\"?(\w+)'?\"?")


def sh_blocks(markdown: str) -> list[str]:
    """The bodies of the page's ```sh blocks, in order."""
    return [m.group(1) for m in SH_BLOCK.finditer(markdown)]


def commands(block: str) -> list[str]:
    """Split a block into commands: `\\` continuations joined, heredocs kept whole."""
    out: list[str] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cmd = line
        while cmd.rstrip().endswith("\\") and i < len(lines):
            cmd = cmd.rstrip()[:-1].rstrip() + " " + lines[i].strip()
            i += 1
        m = HEREDOC.search(cmd)
        if m:
            end = m.group(1)
            body = []
            while i < len(lines) and lines[i].strip() != end:
                body.append(lines[i])
                i += 1
            i += 1
            cmd = "\n".join([cmd, *body, end])
        out.append(cmd)
    return out


def free_port() -> int:
    """A UDP port nobody is bound to right now (the agents use QUIC over UDP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Result:
    command: str
    rc: int
    stdout: str
    stderr: str


@dataclass
class Walkthrough:
    """One temp working dir, one bash session, background agents; close() stops all."""

    workdir: Path
    ports: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 90.0
    agents: list[subprocess.Popen[bytes]] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in LINKED:
            if (REPO / name).exists() and not (self.workdir / name).exists():
                (self.workdir / name).symlink_to(REPO / name)
        self.env = dict(os.environ)
        self.env["PATH"] = f"{REPO / '.venv' / 'bin'}:{self.env.get('PATH', '')}"
        self.env.pop("KEEPMESH_AGENT", None)
        self.env["HOME"] = str(self.workdir / "home")  # client keys land here, not in ~
        self.env["XDG_CONFIG_HOME"] = str(self.workdir / "home" / ".config")
        self.env["XDG_DATA_HOME"] = str(self.workdir / "home" / ".local" / "share")
        self.bash = subprocess.Popen(["bash", "--noprofile", "--norc"], cwd=self.workdir,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=self.env)
        self.n = 0

    def substitute(self, cmd: str) -> str:
        for old, new in self.ports.items():
            cmd = cmd.replace(old, new)
        return cmd

    def run(self, command: str) -> Result:
        cmd = self.substitute(command)
        if cmd.lstrip().startswith("keepmesh agent "):
            return self._start_agent(command, cmd)
        self.n += 1
        out, err = self.workdir / f".out.{self.n}", self.workdir / f".err.{self.n}"
        assert self.bash.stdin is not None and self.bash.stdout is not None
        script = f"{{\n{cmd}\n}} >{out} 2>{err}\necho __RC__$?\n"
        self.bash.stdin.write(script.encode())
        self.bash.stdin.flush()
        deadline = time.monotonic() + self.timeout_s
        line = b""
        while not line.startswith(b"__RC__"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.bash.stdout], [], [], max(left, 0))
            if not ready:
                raise TimeoutError(f"no result within {self.timeout_s}s: {command}")
            line = self.bash.stdout.readline()
            if not line:
                raise RuntimeError(f"bash exited during: {command}")
        result = Result(command, int(line[6:]), out.read_text(errors="replace"),
                        err.read_text(errors="replace"))
        self.results.append(result)
        return result

    def _start_agent(self, command: str, cmd: str) -> Result:
        self.n += 1
        err = self.workdir / f".agent.{self.n}.log"
        with open(err, "wb") as log:
            proc = subprocess.Popen(["bash", "-c", "exec " + cmd], cwd=self.workdir,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=self.env, start_new_session=True)
        self.agents.append(proc)
        deadline = time.monotonic() + 60
        # An agent that joins is "up" for the reader once it says it joined (its
        # membership line), as a user watching terminal 2 would wait for.
        ready = "member " if " --join " in f" {cmd} " else "listening on"
        while time.monotonic() < deadline:
            text = err.read_text(errors="replace")
            if ready in text:
                result = Result(command, 0, "", text)
                self.results.append(result)
                return result
            if proc.poll() is not None:
                result = Result(command, proc.returncode or 1, "", text)
                self.results.append(result)
                return result
            time.sleep(0.1)
        return Result(command, -1, "", err.read_text(errors="replace") + "\n(no listening line)")

    def agent_log(self, i: int) -> str:
        logs = sorted(self.workdir.glob(".agent.*.log"), key=lambda p: int(p.name.split(".")[2]))
        return logs[i].read_text(errors="replace")

    def close(self) -> None:
        for proc in self.agents:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.agents:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.bash.poll() is None:
            assert self.bash.stdin is not None
            self.bash.stdin.close()
            try:
                self.bash.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.bash.kill()


def run_page(markdown: str, workdir: Path, ports: dict[str, str],
             skip: tuple[str, ...] = ()) -> Walkthrough:
    """Run every command of every sh block; raise AssertionError at the first failure."""
    walk = Walkthrough(workdir, ports)
    try:
        for block in sh_blocks(markdown):
            for command in commands(block):
                if any(command.lstrip().startswith(s) for s in skip):
                    continue
                result = walk.run(command)
                assert result.rc == 0, (f"command failed (exit {result.rc}): {command}\n"
                                        f"stdout: {result.stdout[-2000:]}\n"
                                        f"stderr: {result.stderr[-2000:]}")
    except BaseException:
        walk.close()
        raise
    return walk
