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


async def test_a_replicated_keep_lists_one_row_per_running_copy() -> None:
    """`deploy --replicas 3` then `keeps --json`: three rows, each with its own host,
    host_id and epoch (placement's rows; migration does not track replicated keeps). They
    used to collapse to one row, so a user saw one copy of three. A keep migration tracks
    still lists once: its stopped local copy beside the running one is not a replica."""
    rep = "r" * 32
    rows = [{"keep": rep, "state": "running", "host": "127.0.0.1:1", "host_id": "01" * 32,
             "epoch": 1, "name": "counter"},
            {"keep": rep, "state": "running", "host": "127.0.0.1:2", "host_id": "02" * 32,
             "epoch": 1, "remote": True},
            {"keep": rep, "state": "running", "host": "127.0.0.1:3", "host_id": "03" * 32,
             "epoch": 1, "remote": True},
            {"keep": "k1", "state": "stopped", "host_id": "bb" * 32},
            {"keep": "k1", "state": "running", "host_id": HOST, "remote": True}]
    listed = await with_locations(FakeClient("running"), [dict(r) for r in rows])
    copies = [k for k in listed if k["keep"] == rep]
    assert sorted(k["host_id"] for k in copies) == ["01" * 32, "02" * 32, "03" * 32]
    assert all(k["state"] == "running" and k["epoch"] == 1 and k["host"] for k in copies)
    [k1] = [k for k in listed if k["keep"] == "k1"]
    assert k1["state"] == "running" and k1["host_id"] == HOST
