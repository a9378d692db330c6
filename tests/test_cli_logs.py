"""`keepmesh logs ID -f` over a keep that moves: each copy of a keep has its own log and
its own `seq` (specs/keeps.md keeps.logs), so when another copy answers (`host_id`) the
CLI follows it from the start of its log, not with the old copy's `after`. The agent is
a fake behind the real AgentClient.call (its `stale_epoch` retry, as `keepmesh call`'s)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from keepmesh.agent import client as client_module
from keepmesh.agent.cli import keeps, main
from keepmesh.agent.client import AgentClient
from keepmesh.agent.rpc import RpcError

A, B = "aa" * 32, "bb" * 32


class _Done(Exception):
    """The user's ^C, once the script has run out."""


def _agent(answers: list[str]) -> tuple[list[dict[str, Any]], Any]:
    """keeps.logs answered by the copy `answers[i]` names ("stale": `stale_epoch`, the
    keep between hosts); A's log has 3 lines, B's 5, each numbered from 1."""
    logs = {A: [f"a{i}" for i in range(1, 4)], B: [f"b{i}" for i in range(1, 6)]}
    bodies: list[dict[str, Any]] = []

    async def call(session: object, method: str, body: dict[str, Any]) -> dict[str, Any]:
        assert method == "keeps.logs"
        if len(bodies) == len(answers):
            raise _Done
        host = answers[len(bodies)]
        bodies.append(dict(body))
        if host == "stale":
            raise RpcError("keep k is moving", "stale_epoch", method)
        after = body.get("after", 0)
        lines = [{"stream": "stdout", "line": text, "seq": seq, "time": 1.0}
                 for seq, text in enumerate(logs[host], 1) if seq > after]
        return {"keep": "k", "state": "running", "seq": len(logs[host]), "lines": lines,
                "host": f"host-{host[:2]}:7400", "host_id": host}

    return bodies, call


def test_follow_restarts_at_the_new_copy_when_the_keep_moves(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A answers, the keep moves (`stale_epoch`, retried), then B answers the old copy's
    `after=3`: B's lines 1-3 used to be skipped (and, had B's log been shorter than A's,
    every line until B passed A's seq). Now the CLI asks B again from its start."""
    bodies, call = _agent([A, A, "stale", B, B, B])
    monkeypatch.setattr(client_module, "call", call)

    def run_call(args: object, go: Any) -> int:
        client = AgentClient.__new__(AgentClient)
        client.session = object()  # type: ignore[assignment]
        try:
            trio.run(go, client, clock=trio.testing.MockClock(autojump_threshold=0))
        except _Done:
            pass
        return 0

    monkeypatch.setattr(keeps, "run_call", run_call)
    assert main(["logs", "k", "-f"]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[-1] for line in out.splitlines()] == [
        "a1", "a2", "a3", "b1", "b2", "b3", "b4", "b5"]
    assert bodies == [{"keep": "k"}, {"keep": "k", "after": 3}, {"keep": "k", "after": 3},
                      {"keep": "k", "after": 3}, {"keep": "k"}, {"keep": "k", "after": 5}]
    assert err.count("\n") == 1 and "host-bb:7400" in err
