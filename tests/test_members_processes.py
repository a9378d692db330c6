"""Five real agent processes on loopback: gossip over attested QUIC.

Converge to the same alive set; kill -9 one and everyone reports it dead;
restart it and it is alive again with a higher incarnation; an agent whose
evidence chains to an untrusted root never becomes alive.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from keepmesh.agent.client import open_client
from keepmesh.agent.localmesh import AgentProcess

pytestmark = pytest.mark.slow


def members(address: str, root: Path, key: Path) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        client = await open_client(address, roots=[root / "ark.pem"], key_path=key)
        try:
            return list((await client.call("members.list", {}))["members"])
        finally:
            await client.aclose()
    return trio.run(go)


def wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def states(address: str, root: Path, key: Path) -> dict[str, tuple[str, int]]:
    return {m["address"]: (m["state"], m["incarnation"]) for m in members(address, root, key)}


@pytest.fixture
def mesh(tmp_path: Path, sim_root: Path) -> Iterator[list[AgentProcess]]:
    procs = [AgentProcess(tmp_path / "a0", sim_root)]
    for i in range(1, 5):
        procs.append(AgentProcess(tmp_path / f"a{i}", sim_root, join=[procs[0].address]))
    yield procs
    for p in procs:
        p.stop()


def test_five_agents_converge_detect_crash_and_restart(mesh: list[AgentProcess], tmp_path: Path,
                                                       sim_root: Path,
                                                       other_sim_root: Path) -> None:
    key = tmp_path / "op.key"
    addresses = sorted(p.address for p in mesh)

    def converged() -> bool:
        for p in mesh:
            view = states(p.address, sim_root, key)
            if sorted(a for a, (s, _) in view.items() if s == "alive") != addresses:
                return False
        return True

    wait_for(converged, 60, "5 agents to see the same alive set")
    victim = mesh[4]
    before = states(mesh[0].address, sim_root, key)[victim.address][1]
    victim.kill()

    def dead_everywhere() -> bool:
        return all(states(p.address, sim_root, key).get(victim.address, ("?", 0))[0] == "dead"
                   for p in mesh[:4])

    wait_for(dead_everywhere, 60, "every agent to report the killed one dead")

    # Restart on the same address with the same data dir (same identity).
    mesh[4] = AgentProcess(victim.data_dir, sim_root, listen=victim.address,
                           join=[mesh[0].address])

    def back() -> bool:
        for p in mesh[:4]:
            state, inc = states(p.address, sim_root, key).get(victim.address, ("?", 0))
            if state != "alive" or inc <= before:
                return False
        return True

    wait_for(back, 60, "the restarted agent alive again with a higher incarnation")

    # An agent under another sim root joins: it never becomes alive anywhere.
    stranger = AgentProcess(tmp_path / "stranger", other_sim_root, join=[mesh[0].address])
    try:
        time.sleep(6)
        for p in mesh[:2]:
            view = states(p.address, sim_root, key)
            assert view.get(stranger.address, ("absent", 0))[0] in ("absent", "untrusted")
    finally:
        stranger.stop()
