"""Migration between real agent processes on loopback (issue 11).

A stateful counter survives kill -9 of its host (value >= its last
checkpoint); a drain moves every keep with nothing lost; a host whose sim TCB
is lowered below one deployment's min_tcb loses that keep to a compliant peer
and keeps the other. Calls go to wherever `migrate.where` (from any agent)
says the keep runs.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from agent_proc import AgentProc
from keepmesh.agent.cli import main
from keepmesh.agent.client import open_client
from test_keeps_e2e import owner_key

pytestmark = pytest.mark.slow
COUNTER = Path(__file__).resolve().parents[1] / "examples" / "counter"
POLICY = 'allow_sim = true\nallowed_tee = ["sim"]\n'
STRICT = POLICY + "[snp]\nmin_tcb = { microcode = 210 }\n"


class Mesh:
    def __init__(self, tmp: Path, root: Path, n: int) -> None:
        self.tmp, self.root = tmp, root
        self.key, pub = owner_key(tmp)
        self.owner = pub
        self.procs = [AgentProc(tmp / "a0", root, "--owner", pub)]
        for i in range(1, n):
            self.procs.append(AgentProc(tmp / f"a{i}", root, "--owner", pub,
                                        join=[self.procs[0].address]))
        for p in self.procs:
            wait_for(lambda p=p: self._up(p), 60, f"agent {p.address} to answer")

    def _up(self, p: AgentProc) -> bool:
        assert p.alive, p.log()[-2000:]  # AgentProc, or the partition test's NsAgent
        try:
            self.rpc(p, "agent.status")
        except Exception:
            return False
        return True

    def flags(self, p: AgentProc) -> list[str]:
        return ["--agent", p.address, "--key", str(self.key), "--root",
                str(self.root / "ark.pem")]

    def cli(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main(list(argv))
        got = capsys.readouterr()
        return rc, got.out, got.err

    def rpc(self, p: AgentProc, method: str) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            client = await open_client(p.address, roots=[self.root / "ark.pem"],
                                       key_path=self.key)
            try:
                return dict(await client.call(method, {}))
            finally:
                await client.aclose()
        return trio.run(go)

    def where(self, p: AgentProc, keep: str) -> dict[str, Any] | None:
        for k in self.rpc(p, "migrate.where")["keeps"]:
            if k["keep"] == keep:
                return dict(k)
        return None

    def deploy(self, capsys: pytest.CaptureFixture[str], at: AgentProc,
               policy: str, migration: str = "") -> str:
        """Deploy the counter; `migration` is a `[migration]` table body for its toml."""
        tag = time.monotonic_ns()
        pol = self.tmp / f"policy-{tag}.toml"
        pol.write_text(policy)
        workload = COUNTER
        if migration:
            workload = self.tmp / f"counter-{tag}"
            shutil.copytree(COUNTER, workload)
            toml = workload / "keepmesh.toml"
            toml.write_text(toml.read_text() + "\n[migration]\n" + migration + "\n")
        rc, out, err = self.cli(capsys, "deploy", str(workload), "--policy", str(pol),
                                "--json", *self.flags(at))
        assert rc == 0, err
        return str(json.loads(out)["keep"])

    def call(self, capsys: pytest.CaptureFixture[str], at: AgentProc, keep: str,
             msg: str) -> str:
        rc, out, err = self.cli(capsys, "call", keep, msg, *self.flags(at))
        assert rc == 0, err
        return out.strip()

    def by_address(self, address: str) -> AgentProc:
        return next(p for p in self.procs if p.address == address)


def wait_for(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _mesh(tmp_path: Path, sim_root: Path, n: int) -> Iterator[Mesh]:
    m = Mesh(tmp_path, sim_root, n)
    yield m
    for p in m.procs:
        p.stop()


@pytest.fixture
def mesh3(tmp_path: Path, sim_root: Path) -> Iterator[Mesh]:
    yield from _mesh(tmp_path, sim_root, 3)


def _ready(m: Mesh, viewer: AgentProc, keep: str, host: AgentProc,
           checkpoint: bool = False) -> dict[str, Any] | None:
    w = m.where(viewer, keep)
    if w is None or w["host"] != host.address or not w["standbys"]:
        return None
    if checkpoint and w["last_checkpoint"]["seq"] < 1:
        return None
    return w


def test_counter_survives_kill_9_of_its_host(mesh3: Mesh,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    m = mesh3
    host, other = m.procs[0], m.procs[1]
    # the signed [migration] table is used: both other agents are standbys, 1 s period
    keep = m.deploy(capsys, host, POLICY, migration="standbys = 2\ncheckpoint_s = 1")
    for _ in range(3):
        m.call(capsys, host, keep, "inc")
    written = time.time()  # the host's clock (same machine): a checkpoint after the writes
    w = wait_for(lambda: (x := _ready(m, other, keep, host, checkpoint=True))
                 and len(x["standbys"]) == 2 and x["last_checkpoint"]["at"] > written and x,
                 30, "two standbys and a checkpoint acknowledged after the writes")
    assert w["epoch"] == 1
    killed_at = time.monotonic()
    host.kill()
    moved = wait_for(lambda: (x := m.where(other, keep)) and x["host"] != host.address
                     and x["state"] == "running" and x, 60, "the keep running elsewhere")
    took = time.monotonic() - killed_at
    assert moved["epoch"] == 2
    new_host = m.by_address(moved["host"])
    assert int(m.call(capsys, new_host, keep, "get")) >= 3   # >= its last checkpoint
    assert int(m.call(capsys, new_host, keep, "inc")) >= 4
    # `keeps --json` through any agent shows where it runs now
    rc, out, err = m.cli(capsys, "keeps", "--json", *m.flags(m.procs[2]))
    assert rc == 0, err
    [listed] = [k for k in json.loads(out)["keeps"] if k["keep"] == keep]
    assert listed["host"] == new_host.address and listed["epoch"] == 2
    assert listed["last_checkpoint"]["seq"] >= 1 and isinstance(listed["standbys"], list)
    # the move is in the new host's log and in its migration events
    rc, out, err = m.cli(capsys, "status", "--json", *m.flags(new_host))
    assert rc == 0, err
    events = json.loads(out)["events"]
    assert any(e["event"] == "KeepMoved" and e["trigger"] == "dead" and e["keep"] == keep
               for e in events)
    assert "moved to" in new_host.log()
    print(f"crash -> running elsewhere: {took:.1f} s")


def test_drain_moves_every_keep_with_no_loss(mesh3: Mesh,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    m = mesh3
    host = m.procs[0]
    keeps = [m.deploy(capsys, host, POLICY) for _ in range(2)]
    for i, k in enumerate(keeps):
        for _ in range(i + 2):
            m.call(capsys, host, k, "inc")
    for k in keeps:
        wait_for(lambda k=k: _ready(m, host, k, host), 30, "standbys")  # type: ignore[misc]
    m.call(capsys, host, keeps[0], "inc")     # after any periodic checkpoint: must not be lost
    rc, out, err = m.cli(capsys, "drain", "--json", *m.flags(host))
    assert rc == 0, err
    moved = json.loads(out)["moved"]
    assert sorted(x["keep"] for x in moved) == sorted(keeps)
    for x in moved:
        assert x["from"] == host.address and x["to"] != host.address and x["epoch"] == 2
    values = {x["keep"]: m.call(capsys, m.by_address(x["to"]), x["keep"], "get") for x in moved}
    assert values == {keeps[0]: "3", keeps[1]: "3"}          # nothing lost
    # Through the old host the call reaches the new copy (it carries epoch 2 and its
    # signed record); the old copy never answers again.
    assert m.call(capsys, host, keeps[0], "inc") == "4"
    assert m.call(capsys, m.by_address([x for x in moved if x["keep"] == keeps[0]][0]["to"]),
                  keeps[0], "get") == "4"


def test_tcb_below_one_policy_moves_only_that_keep(mesh3: Mesh, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    m = mesh3
    host = m.procs[0]
    strict = m.deploy(capsys, host, STRICT)
    loose = m.deploy(capsys, host, POLICY)
    for k in (strict, loose):
        m.call(capsys, host, k, "inc")
        wait_for(lambda k=k: _ready(m, host, k, host), 30, "standbys")  # type: ignore[misc]
    rc, _, err = m.cli(capsys, "sim", "set-tcb", str(host.data_dir), "microcode=200")
    assert rc == 0, err
    moved = wait_for(lambda: (x := m.where(m.procs[2], strict)) and x["host"] != host.address
                     and x["state"] == "running" and x, 30, "the strict keep to move")
    assert m.call(capsys, m.by_address(moved["host"]), strict, "get") == "1"
    time.sleep(3)
    w = m.where(m.procs[2], loose)
    assert w is not None and w["host"] == host.address and w["epoch"] == 1
    assert m.call(capsys, host, loose, "get") == "1"


@pytest.fixture
def mesh2(tmp_path: Path, sim_root: Path) -> Iterator[Mesh]:
    yield from _mesh(tmp_path, sim_root, 2)


def test_a_keep_returns_to_a_host_that_once_ran_it(mesh2: Mesh,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    m = mesh2
    a, b = m.procs
    keep = m.deploy(capsys, a, POLICY)
    m.call(capsys, a, keep, "inc")
    wait_for(lambda: _ready(m, a, keep, a, checkpoint=True), 30, "a standby on b")
    a.kill()
    wait_for(lambda: (x := m.where(b, keep)) and x["host"] == b.address
             and x["epoch"] == 2 and x, 60, "the keep running on b")
    m.call(capsys, b, keep, "inc")
    # a comes back with its stopped epoch-1 copy on disk (fenced at once if it restarts
    # it), becomes b's standby ...
    again = AgentProc(a.data_dir, m.root, "--owner", m.owner, listen=a.address,
                      join=[b.address])
    m.procs[0] = again
    wait_for(lambda: _ready(m, b, keep, b), 60, "the restarted agent as b's standby")
    # ... and takes the keep back at epoch 3 with every write when b is drained
    rc, out, err = m.cli(capsys, "drain", "--json", *m.flags(b))
    assert rc == 0, err
    assert [(x["to"], x["epoch"]) for x in json.loads(out)["moved"]] == [(again.address, 3)]
    assert m.call(capsys, again, keep, "get") == "2"
    w = m.where(b, keep)
    assert w is not None and w["host"] == again.address and w["epoch"] == 3
