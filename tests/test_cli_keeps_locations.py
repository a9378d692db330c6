"""`keepmesh keeps` merges an agent's keep list with its migration view (agent/cli/drain.py
`with_locations`): the view's word on where a keep runs, and on whether its host is gone."""

from __future__ import annotations

from typing import Any

from keepmesh.agent.cli.drain import with_locations

HOST = "aa" * 32


class FakeClient:
    """Answers migrate.where as an agent whose view holds `state` for keep k1."""

    peer_key = bytes.fromhex("bb" * 32)

    def __init__(self, state: str) -> None:
        self.state = state

    async def call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        assert method == "migrate.where"
        return {"keeps": [{"keep": "k1", "host": "127.0.0.1:1", "host_id": HOST, "epoch": 3,
                           "standbys": [], "state": self.state,
                           "last_checkpoint": {"seq": 1, "at": 0.0}}], "events": []}


async def test_a_keep_whose_host_is_gone_is_not_listed_running() -> None:
    """A keeps.list row for a keep placed elsewhere says `running`; when this agent's view
    holds the host dead or left, `orphaned` (or `moving`) is what the user must see. It
    used to be dropped: an orphaned keep read `running` at a dead host."""
    row = {"keep": "k1", "state": "running", "remote": True}
    for state in ("orphaned", "moving"):
        [k] = await with_locations(FakeClient(state), [dict(row)])
        assert k["state"] == state and k["host_id"] == HOST and k["epoch"] == 3
    [k] = await with_locations(FakeClient("running"), [dict(row)])
    assert k["state"] == "running"
