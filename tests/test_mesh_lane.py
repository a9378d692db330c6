"""The ordered per-member lane (agent/membership_service.py): what is queued for a member
leaves together as one `migrate.batch` call (a checkpoint's chunks stream over one QUIC
stream instead of one round trip each), in order, within bounds; a hostile batch is
refused whole."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from keepmesh.agent import membership_service as ms
from keepmesh.agent.cli import CommandError
from keepmesh.agent.client import open_client
from keepmesh.agent.config import AgentConfig
from keepmesh.agent.membership_service import MeshService
from keepmesh.agent.node import Agent
from keepmesh.agent.rpc import RpcError, call
from keepmesh.agent.startup import build_agent
from keepmesh.protocol.migration.messages import MAX_CHUNK


def _mesh(agent: Agent) -> MeshService:
    [svc] = [getattr(s, "__self__", None) for s in agent.services
             if isinstance(getattr(s, "__self__", None), MeshService)]
    assert isinstance(svc, MeshService)
    return svc


async def _pair(nursery: trio.Nursery, tmp: Path, root: Path) -> tuple[Agent, Agent, str]:
    a = build_agent(AgentConfig(listen="127.0.0.1:0", tee="sim", sim_root=root,
                                data_dir=tmp / "a"))
    addr_a: str = await nursery.start(a.run)
    b = build_agent(AgentConfig(listen="127.0.0.1:0", tee="sim", sim_root=root,
                                data_dir=tmp / "b", join=[addr_a]))
    addr_b: str = await nursery.start(b.run)
    with trio.fail_after(30):
        while b.identity.public_bytes not in a.peers or \
                a.peers[b.identity.public_bytes].session is None:
            await trio.sleep(0.05)
    return a, b, addr_b


def _record(monkeypatch: pytest.MonkeyPatch, svc: MeshService) -> list[bytes]:
    """What the node is fed of this test's messages (they start with b"T"; the mesh's own
    gossip, also fed, is encoded records and passes through)."""
    got: list[bytes] = []
    real = svc.feed

    def feed(data: bytes, src: str, src_id: bytes) -> None:
        if data.startswith(b"T"):
            got.append(data)
        else:
            real(data, src, src_id)
    monkeypatch.setattr(svc, "feed", feed)
    return got


def test_lane_bounds_fit_the_rpc_admission_limits() -> None:
    """A frame is refused before it is buffered when it exceeds its method's body limit:
    the lane's largest legitimate message and batch must fit, and not much more."""
    from keepmesh.protocol.rpc import body_limit, pack_body
    one = pack_body({"data": b"x" * ms.MAX_ORDERED_BYTES})
    assert len(one) <= body_limit(ms.ORDERED_METHOD) <= 2 * ms.MAX_ORDERED_BYTES
    per_item = ms.MAX_BATCH_BYTES // ms.MAX_BATCH_ITEMS
    full = pack_body({"data": [b"x" * per_item] * ms.MAX_BATCH_ITEMS})
    assert len(full) <= body_limit(ms.BATCH_METHOD) <= ms.MAX_BATCH_BYTES + 128 * 1024


async def test_a_lane_call_waits_as_long_as_its_callee_lets_the_request_arrive(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The callee grants a large request 10 s + 1 s per 256 KiB to arrive (specs/wire.md);
    a caller that gave up after a fixed 10 s could never deliver a full batch over a link
    slower than 0.8 MiB/s, and every resend would fail the same way."""
    from keepmesh.agent import rpc
    waited: dict[str, float] = {}

    async def fake_call(session: Any, method: str, body: Any, timeout: float) -> Any:
        waited[method] = timeout
        return {}
    monkeypatch.setattr(ms, "call", fake_call)
    svc = MeshService.__new__(MeshService)  # _lane_send uses no state of its own
    full = [b"x" * (MAX_CHUNK + 100)] * (ms.MAX_BATCH_BYTES // (MAX_CHUNK + 100))
    await svc._lane_send(None, full)
    await svc._lane_send(None, [b"x" * 100])
    size = sum(map(len, full))
    assert waited[ms.BATCH_METHOD] >= rpc.REQUEST_READ_TIMEOUT_S + size / rpc.MIN_REQUEST_RATE_BPS
    assert waited[ms.BATCH_METHOD] > 30  # about 40 s for 7.5 MiB
    assert ms.LANE_TIMEOUT_S <= waited[ms.ORDERED_METHOD] < ms.LANE_TIMEOUT_S + 1


@pytest.mark.slow
async def test_queued_messages_leave_as_few_batches_in_order(
        nursery: trio.Nursery, tmp_path: Path, sim_root: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "keepmesh.membership")  # why a batch failed, if one does
    a, b, addr_b = await _pair(nursery, tmp_path, sim_root)
    got = _record(monkeypatch, _mesh(b))
    sender = _mesh(a)
    sent: list[int] = []
    real = sender._lane_send

    async def spy(session: Any, batch: list[bytes]) -> None:
        sent.append(len(batch))
        await real(session, batch)
    monkeypatch.setattr(sender, "_lane_send", spy)
    msgs = [b"T" + os.urandom(MAX_CHUNK + 99) for _ in range(14)]
    msgs += [b"T-small-%d" % i for i in range(5)]
    for m in msgs:
        sender.send_ordered(b.identity.public_bytes, addr_b, m)
    with trio.move_on_after(60):
        while len(got) < len(msgs):
            await trio.sleep(0.05)
    assert got == msgs, f"{len(got)} of {len(msgs)} arrived; batches sent: {sent}"
    assert sum(sent) == len(msgs) and len(sent) <= 3  # not one call per message
    per_batch = ms.MAX_BATCH_BYTES // (MAX_CHUNK + 100)
    assert sent[0] == per_batch  # the first batch is full up to the byte bound


@pytest.mark.slow
async def test_a_lane_whose_task_died_on_a_bug_is_started_anew(
        nursery: trio.Nursery, tmp_path: Path, sim_root: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug that ends a member's lane task (its guard logs it) must not leave every later
    ordered message to that member failing or lost: the next one starts a new lane."""
    a, b, addr_b = await _pair(nursery, tmp_path, sim_root)
    got = _record(monkeypatch, _mesh(b))
    sender = _mesh(a)
    real = sender._lane_send
    bugs = [RuntimeError("a bug in the lane")]

    async def buggy(session: Any, batch: list[bytes]) -> None:
        if bugs:
            raise bugs.pop()
        await real(session, batch)
    monkeypatch.setattr(sender, "_lane_send", buggy)
    sender.send_ordered(b.identity.public_bytes, addr_b, b"T-lost")
    with trio.fail_after(10):
        while bugs:
            await trio.sleep(0.01)
    await trio.sleep(0.1)  # the dead lane's task has ended
    sender.send_ordered(b.identity.public_bytes, addr_b, b"T-one")
    sender.send_ordered(b.identity.public_bytes, addr_b, b"T-two")
    with trio.fail_after(30):
        while len(got) < 2:
            await trio.sleep(0.05)
    assert got == [b"T-one", b"T-two"]


@pytest.mark.slow
async def test_hostile_batches_are_refused_whole(
        nursery: trio.Nursery, tmp_path: Path, sim_root: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, addr_b = await _pair(nursery, tmp_path, sim_root)
    got = _record(monkeypatch, _mesh(b))
    session = a.peers[b.identity.public_bytes].session
    assert session is not None
    big = ms.MAX_ORDERED_BYTES
    bad: list[Any] = [
        b"Tnot a list", [], [b"Tx"] * (ms.MAX_BATCH_ITEMS + 1), [b"Tok", b"T" * (big + 1)],
        [b"T" * big] * (ms.MAX_BATCH_BYTES // big + 1), [b"Tok", "text"],
    ]
    for data in bad:
        with pytest.raises(RpcError) as err:
            await call(session, ms.BATCH_METHOD, {"data": data})
        assert err.value.code == "invalid"
    assert got == []  # nothing of a refused batch was fed, not even its first items
    await call(session, ms.BATCH_METHOD, {"data": [b"Tone", b"Ttwo"]})  # and it still serves
    assert got == [b"Tone", b"Ttwo"]
    client = await open_client(addr_b, roots=[sim_root / "ark.pem"],
                               key_path=tmp_path / "client.key")
    try:
        with pytest.raises(CommandError, match="unknown method"):  # clients never reach it
            await client.call(ms.BATCH_METHOD, {"data": [b"Tx"]})
    finally:
        await client.aclose()
    assert got == [b"Tone", b"Ttwo"]


def _spy_lane_ends(monkeypatch: pytest.MonkeyPatch, svc: MeshService) -> list[bytes]:
    """The node ids whose lane task has ended, in order."""
    ended: list[bytes] = []
    real = svc._lane

    async def spy(node_id: bytes, *args: Any) -> None:
        try:
            await real(node_id, *args)
        finally:
            ended.append(node_id)
    monkeypatch.setattr(svc, "_lane", spy)
    return ended


@pytest.mark.slow
async def test_a_departed_members_lane_ends_and_a_rejoined_one_gets_a_new_lane(
        nursery: trio.Nursery, tmp_path: Path, sim_root: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A lane is an idle task and a queue: kept for every member that ever left, a
    long-lived agent in a churning mesh would grow without bound. A member that comes
    back gets a new lane."""
    from keepmesh.protocol.effects import Leave
    a, b, addr_b = await _pair(nursery, tmp_path, sim_root)
    b_id = b.identity.public_bytes
    got = _record(monkeypatch, _mesh(b))
    sender = _mesh(a)
    ended = _spy_lane_ends(monkeypatch, sender)
    sender.send_ordered(b_id, addr_b, b"T-before")
    with trio.fail_after(10):
        while got != [b"T-before"]:
            await trio.sleep(0.02)
    assert b_id in sender._lanes and ended == []
    mesh_b = _mesh(b)
    assert mesh_b.node is not None
    mesh_b.node.command(Leave(), mesh_b.now())  # what `keepmesh leave` gossips
    mesh_b.flush()
    with trio.fail_after(10):
        while b_id in sender._lanes or ended != [b_id]:
            await trio.sleep(0.02)
    old = a.peers[b_id].session
    b.shutdown()
    with trio.fail_after(10):
        while b.data_dir_lock is not None:  # released when its run ends
            await trio.sleep(0.02)
    again = build_agent(AgentConfig(listen="127.0.0.1:0", tee="sim", sim_root=sim_root,
                                    data_dir=tmp_path / "b", join=[a.address]))
    got_again = _record(monkeypatch, _mesh(again))
    addr_again: str = await nursery.start(again.run)
    with trio.fail_after(10):
        while (entry := a.peers.get(b_id)) is None or entry.session in (None, old) \
                or entry.session.closed.is_set():  # the restarted agent's own session
            await trio.sleep(0.02)
    sender.send_ordered(b_id, addr_again, b"T-after")
    with trio.fail_after(10):
        while got_again != [b"T-after"]:
            await trio.sleep(0.02)
    assert b_id in sender._lanes and ended == [b_id]  # a new lane, still running


@pytest.mark.slow
async def test_an_idle_lane_ends_and_the_next_message_starts_a_new_one(
        nursery: trio.Nursery, tmp_path: Path, sim_root: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A lane to a node id whose departure we never hear of must not live for ever."""
    monkeypatch.setattr(ms, "LANE_IDLE_S", 0.2)
    a, b, addr_b = await _pair(nursery, tmp_path, sim_root)
    b_id = b.identity.public_bytes
    got = _record(monkeypatch, _mesh(b))
    sender = _mesh(a)
    ended = _spy_lane_ends(monkeypatch, sender)
    sender.send_ordered(b_id, addr_b, b"T-one")
    with trio.fail_after(10):
        while b_id in sender._lanes or ended != [b_id]:
            await trio.sleep(0.02)
    sender.send_ordered(b_id, addr_b, b"T-two")
    with trio.fail_after(10):
        while len(got) < 2:
            await trio.sleep(0.02)
    assert got == [b"T-one", b"T-two"]
