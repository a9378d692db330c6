"""Fault boundaries: a *foreign* exception (KeyError: no declared error type)
raised where a peer's input is processed ends that connection, stream or task
only. Each test injects it at one boundary and checks the agent keeps serving
(the agent runs in the test's nursery: anything escaping fails the test)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from hostile import (
    attacker_endpoint,
    attacker_session,
    good_client_served,
    make_agent,
    raw_connection,
    request_frame,
)
from keepmesh.agent import node, rpc
from keepmesh.agent.session import ChannelFailed
from keepmesh.agent.transport.quic import ConnectionClosed
from keepmesh.protocol.channel import AttestedChannel, ChannelAccept
from keepmesh.protocol.errors import ProtocolError
from keepmesh.protocol.membership import Membership
from keepmesh.protocol.wire import FrameDecoder, encode_frame


class Injected(KeyError):
    """The foreign exception: not ProtocolError, not VerificationError."""


def raise_once(real: Callable[..., Any]) -> tuple[Callable[..., Any], list[int]]:
    fired: list[int] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not fired:
            fired.append(1)
            raise Injected("injected")
        return real(*args, **kwargs)
    return wrapper, fired


def araise_once(real: Callable[..., Any]) -> tuple[Callable[..., Any], list[int]]:
    fired: list[int] = []

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not fired:
            fired.append(1)
            raise Injected("injected")
        return await real(*args, **kwargs)
    return wrapper, fired


async def test_foreign_exception_in_channel_verification(
        nursery: trio.Nursery, tmp_path: Path, sim_root: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    agent = make_agent(tmp_path, sim_root, "a")
    addr = await nursery.start(agent.run)
    wrapper, fired = raise_once(AttestedChannel.receive)
    monkeypatch.setattr(AttestedChannel, "receive", wrapper)
    ep = await attacker_endpoint(nursery)
    with pytest.raises(ChannelFailed):
        await attacker_session(ep, addr, sim_root)
    assert fired
    await good_client_served(addr, sim_root, tmp_path / "good.key")


async def test_foreign_exception_escaping_session_setup(
        nursery: trio.Nursery, tmp_path: Path, sim_root: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Even if establish() itself raised something undeclared, the accept boundary holds."""
    agent = make_agent(tmp_path, sim_root, "a")
    addr = await nursery.start(agent.run)
    wrapper, fired = araise_once(node.establish)
    monkeypatch.setattr(node, "establish", wrapper)
    ep = await attacker_endpoint(nursery)
    conn = await raw_connection(ep, addr)
    with trio.fail_after(10):
        await conn.closed.wait()
    assert fired and agent.endpoint.counters["accept_errors"] == 1
    await good_client_served(addr, sim_root, tmp_path / "good.key")


async def test_foreign_exception_decoding_an_rpc(
        nursery: trio.Nursery, tmp_path: Path, sim_root: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    agent = make_agent(tmp_path, sim_root, "a")
    addr = await nursery.start(agent.run)
    ep = await attacker_endpoint(nursery)
    sess = await attacker_session(ep, addr, sim_root)
    wrapper, fired = raise_once(rpc.decode_payload)
    monkeypatch.setattr(rpc, "decode_payload", wrapper)
    stream = sess.conn.open_stream()
    stream.send(request_frame("agent.status"), end=True)
    with trio.fail_after(5), pytest.raises(ConnectionClosed):  # that stream is reset
        while await stream.receive_some():
            pass
    assert fired
    assert (await rpc.call(sess, "agent.status", {}, timeout=5))["address"] == addr
    await good_client_served(addr, sim_root, tmp_path / "good.key")


async def test_foreign_exception_on_control_stream_after_establishment(
        nursery: trio.Nursery, tmp_path: Path, sim_root: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    agent = make_agent(tmp_path, sim_root, "a")
    addr = await nursery.start(agent.run)
    ep = await attacker_endpoint(nursery)
    sess = await attacker_session(ep, addr, sim_root)
    wrapper, fired = raise_once(FrameDecoder.feed)
    monkeypatch.setattr(FrameDecoder, "feed", wrapper)  # the agent's decoder already exists
    sess.control.send(encode_frame(ChannelAccept(cached=0)))
    with trio.fail_after(10):
        await sess.conn.closed.wait()  # that connection, and only it, is closed
    assert fired
    await good_client_served(addr, sim_root, tmp_path / "good.key")


async def test_foreign_exception_in_a_per_peer_membership_task(
        nursery: trio.Nursery, tmp_path: Path, sim_root: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Membership's per-peer datagram readers run as guarded tasks (node.TaskGuard)."""
    a = make_agent(tmp_path, sim_root, "a")
    addr_a = await nursery.start(a.run)
    b = make_agent(tmp_path, sim_root, "b", join=[addr_a])
    addr_b = await nursery.start(b.run)
    with trio.fail_after(20):
        while not (a.peers and b.peers):
            await trio.sleep(0.05)
    await trio.sleep(1.0)  # the mesh has formed; probes flow as datagrams
    fired: list[int] = []

    def wrapper(*args: Any, **kwargs: Any) -> None:
        fired.append(1)  # every message, datagram or push-pull, hits the injected bug
        raise Injected("injected")

    monkeypatch.setattr(Membership, "receive", wrapper)
    with trio.fail_after(30):
        while len(fired) < 2:  # both datagram readers hit it
            await trio.sleep(0.05)
    await good_client_served(addr_a, sim_root, tmp_path / "good.key")
    await good_client_served(addr_b, sim_root, tmp_path / "good.key")


async def test_dialling_a_hostile_address_fails_that_dial_only(
        nursery: trio.Nursery, tmp_path: Path, sim_root: Path) -> None:
    """A 64-character DNS label makes name resolution raise UnicodeError."""
    agent = make_agent(tmp_path, sim_root, "a")
    addr = await nursery.start(agent.run)
    for bad in ("a" * 64 + ".example:4433", "\udcff.example:1", "256.1.1.1:1"):
        with pytest.raises((ChannelFailed, ProtocolError)):
            await agent.connect(bad)
    # Below the address parser too: the transport's own resolution fails this dial only.
    for host in ("a" * 64 + ".example", "\udcff.example", "x" * 300):
        with pytest.raises(ConnectionClosed):
            await agent.endpoint.connect(host, 4433)
    await good_client_served(addr, sim_root, tmp_path / "good.key")
