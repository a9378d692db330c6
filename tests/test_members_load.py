"""Stable membership under CPU load (issue 9, Lifeguard local health), with real agents.

Agents join one by one into a mesh that has run a while while busy-loop processes
saturate the CPU the agents run on (pinned to one core, so the rest of the machine
keeps working). Before the fix, starved agents fired their probe timers late and
accused healthy peers (4 newcomers in a row declared dead within 5-12 s; a 4-agent
mesh flapped at 9-17 suspicions per agent per minute). The promise kept here: zero
"dead" declarations about live members, and every agent sees every other alive once
the load stops. The deterministic part is tests/test_membership_local_health.py.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from keepmesh.agent.client import open_client
from keepmesh.agent.localmesh import AgentProcess

pytestmark = pytest.mark.slow

BUSY_LOOPS = 6
BASE = 3
NEWCOMERS = 2
JOIN_GAP_S = 6.0
# the false deaths this guards against came 5-12 s after a join: the last newcomer is
# watched 15 s, the one before JOIN_GAP_S + 15 s
TAIL_S = 15.0


def _busy() -> None:
    while True:
        pass


def _members(address: str, root: Path) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        client = await open_client(address, roots=[root / "ark.pem"],
                                   key_path=root.parent / "operator.key")
        try:
            return list((await client.call("members.list", {}))["members"])
        finally:
            await client.aclose()
    return trio.run(go)


def _pin(pid: int, cpus: set[int]) -> None:
    try:
        os.sched_setaffinity(pid, cpus)
    except (AttributeError, OSError):
        pass  # not Linux, or the process is gone: the load is then machine-wide


def test_newcomers_are_not_declared_dead_on_a_saturated_cpu(tmp_path: Path,
                                                            sim_root: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    core = {cpus[-1]}
    procs = [AgentProcess(tmp_path / "a0", sim_root)]
    for i in range(1, BASE):
        procs.append(AgentProcess(tmp_path / f"a{i}", sim_root, join=[procs[0].address]))
    loops: list[multiprocessing.Process] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = _members(procs[0].address, sim_root)
            if sum(r["state"] == "alive" for r in rows) == BASE:
                break
            time.sleep(0.5)
        else:
            pytest.fail("base mesh did not converge")
        for p in procs:
            _pin(p.proc.pid, core)
        ctx = multiprocessing.get_context("fork")
        loops = [ctx.Process(target=_busy, daemon=True) for _ in range(BUSY_LOOPS)]
        for loop in loops:
            loop.start()
            assert loop.pid is not None
            _pin(loop.pid, core)
        for j in range(NEWCOMERS):
            time.sleep(JOIN_GAP_S)
            p = AgentProcess(tmp_path / f"a{BASE + j}", sim_root, join=[procs[0].address])
            _pin(p.proc.pid, core)
            procs.append(p)
        time.sleep(TAIL_S)
        logs = {p.log_path.name: p.log_path.read_text() for p in procs}
    finally:
        for loop in loops:
            loop.kill()
    try:
        dead = {name: re.findall(r"member \S+ dead", text) for name, text in logs.items()}
        suspicions = sum(len(re.findall(r"member \S+ suspect", t)) for t in logs.values())
        assert not any(dead.values()), f"false deaths under load: {dead}"
        # once the load is gone every agent sees everyone alive
        n = len(procs)
        deadline = time.monotonic() + 30
        states: dict[str, int] = {}
        while time.monotonic() < deadline:
            states = {p.address: sum(r["state"] == "alive" for r in _members(p.address, sim_root))
                      for p in procs}
            if all(v == n for v in states.values()):
                break
            time.sleep(1)
        assert all(v == n for v in states.values()), states
        print(f"suspicions under load: {suspicions} across {n} agents")
    finally:
        for p in procs:
            p.stop()
