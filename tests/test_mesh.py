"""Agents on loopback: mutual attestation over real QUIC, and hostile clients."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
import trio

from keepmesh.agent.cli import CommandError
from keepmesh.agent.client import open_client
from keepmesh.agent.config import AgentConfig
from keepmesh.agent.identity import Identity, load_or_create
from keepmesh.agent.node import Agent
from keepmesh.agent.rpc import RpcError, call
from keepmesh.agent.startup import StartupError, build_agent
from keepmesh.agent.transport.quic import ConnectionClosed, QuicEndpoint
from keepmesh.protocol.effects import Leave


def make(tmp: Path, root: Path, name: str, join: list[str] | None = None,
         roots: list[Path] | None = None) -> Agent:
    return build_agent(AgentConfig(listen="127.0.0.1:0", tee="sim", sim_root=root,
                                   data_dir=tmp / name, join=join or [], roots=roots or []))


async def start(nursery: trio.Nursery, agent: Agent) -> str:
    address: str = await nursery.start(agent.run)
    return address


async def wait_peers(agent: Agent, n: int, timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while sum(1 for p in agent.peers.values() if p.session and not p.session.closed.is_set()) < n:
            await trio.sleep(0.05)


async def test_two_and_three_agents_attest_each_other(nursery: trio.Nursery, tmp_path: Path,
                                                      sim_root: Path) -> None:
    a = make(tmp_path, sim_root, "a")
    addr_a = await start(nursery, a)
    b = make(tmp_path, sim_root, "b", join=[addr_a])
    await start(nursery, b)
    await wait_peers(a, 1)
    await wait_peers(b, 1)
    assert b.identity.public_bytes in a.peers and a.identity.public_bytes in b.peers
    c = make(tmp_path, sim_root, "c", join=[addr_a])
    await start(nursery, c)
    for agent in (a, b, c):
        await wait_peers(agent, 2)
    entry = c.peers[b.identity.public_bytes]
    assert entry.evidence is not None and entry.evidence.tee == "sim"
    assert entry.evidence.measurement == c.own_evidence.measurement  # type: ignore[union-attr]
    # The CLI's view of the same thing, from an admitted owner (so agent.leave and
    # agent.drain are reached, not refused as `forbidden`).
    a.admin_keys.add(load_or_create(tmp_path / "op.key").public_bytes)
    client = await open_client(addr_a, roots=[sim_root / "ark.pem"], key_path=tmp_path / "op.key")
    try:
        peers = (await client.call("agent.peers", {}))["peers"]
        assert {p["identity"] for p in peers} == {b.identity.public_bytes.hex(),
                                                 c.identity.public_bytes.hex()}
        assert all(p["tee"] == "sim" and len(p["measurement"]) == 96 for p in peers)
        status = await client.call("agent.status", {})
        assert status["identity"] == a.identity.public_bytes.hex()
        with pytest.raises(CommandError, match="unknown method"):
            await client.call("swim.stream", {"data": b"x"})  # agents only
        # Methods whose body is {} refuse an unknown field like every other method
        # (keeps.list, agent.join): a misspelt option is `invalid`, never ignored, and
        # for agent.leave never stops the agent.
        assert client.session is not None
        for method in ("agent.status", "agent.peers", "members.list", "migrate.where",
                       "agent.drain", "agent.leave"):
            with pytest.raises(RpcError) as refused:
                await call(client.session, method, {"bogus": 1}, timeout=5)
            assert refused.value.code == "invalid", (method, refused.value)
        # a body whose keys mix text and bytes (msgpack allows both) is invalid too; agent.join
        # used to sort them together and answer an internal error
        for method in ("agent.join", "agent.status"):
            with pytest.raises(RpcError) as refused:
                await call(client.session, method, {b"addresses": [], "x": 1}, timeout=5)
            assert refused.value.code == "invalid", (method, refused.value)
        assert (await client.call("agent.status", {}))["identity"] == status["identity"]
        # c gossips a leave but its sessions stay open (as a crashed peer's do until QUIC's
        # idle timeout): a's agent.peers and agent.status agree with members.list at once.
        mesh_c = c.on_leave[0].__self__  # type: ignore[attr-defined]
        mesh_c.node.command(Leave(), mesh_c.now())
        mesh_c.flush()
        c_id = c.identity.public_bytes.hex()
        with trio.move_on_after(5):
            while any(m["node_id"] == c_id and m["state"] == "alive"
                      for m in (await client.call("members.list", {}))["members"]):
                await trio.sleep(0.05)
        assert not a.peers[c.identity.public_bytes].session.closed.is_set()  # type: ignore[union-attr]
        peers = (await client.call("agent.peers", {}))["peers"]
        assert [p["identity"] for p in peers] == [b.identity.public_bytes.hex()]
        assert (await client.call("agent.status", {}))["peers"] == 1
    finally:
        await client.aclose()


async def test_agent_with_untrusted_sim_root_is_not_a_peer(nursery: trio.Nursery, tmp_path: Path,
                                                           sim_root: Path,
                                                           other_sim_root: Path) -> None:
    a = make(tmp_path, sim_root, "a")
    addr_a = await start(nursery, a)
    stranger = make(tmp_path, other_sim_root, "s", join=[addr_a])
    await start(nursery, stranger)
    await trio.sleep(1.0)
    assert not a.peers and not stranger.peers


async def test_client_rejects_agent_without_root(nursery: trio.Nursery, tmp_path: Path,
                                                 sim_root: Path, other_sim_root: Path) -> None:
    a = make(tmp_path, sim_root, "a")
    addr_a = await start(nursery, a)
    with pytest.raises(CommandError, match="chain"):
        await open_client(addr_a, key_path=tmp_path / "op.key")
    with pytest.raises(CommandError):
        await open_client(addr_a, roots=[other_sim_root / "ark.pem"], key_path=tmp_path / "op.key")


async def _raw_quic(nursery: trio.Nursery, addr: str) -> tuple[QuicEndpoint, object]:
    ep = QuicEndpoint(Identity.generate())
    await nursery.start(ep.serve, "127.0.0.1", 0)
    host, port = addr.rsplit(":", 1)
    conn = await ep.connect(host, int(port))
    return ep, conn


@pytest.mark.parametrize("attack", ["garbage", "oversized", "no-channel-rpc"])
async def test_hostile_client_loses_only_its_connection(nursery: trio.Nursery, tmp_path: Path,
                                                        sim_root: Path, attack: str) -> None:
    a = make(tmp_path, sim_root, "a")
    addr_a = await start(nursery, a)
    # Raw UDP garbage at the port first: ignored.
    host, port = addr_a.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x00garbage" * 200, (host, int(port)))
    _, conn = await _raw_quic(nursery, addr_a)
    stream = conn.open_stream()  # type: ignore[attr-defined]
    if attack == "garbage":
        stream.send(struct.pack(">I", 20) + b"\xc1" * 20)
    elif attack == "oversized":
        stream.send(struct.pack(">I", 64 * 1024 * 1024))
    else:
        # Skip the channel: send an RPC request as the very first frame.
        from keepmesh.protocol.rpc import RpcRequest
        from keepmesh.protocol.wire import encode_frame
        stream.send(encode_frame(RpcRequest(method="agent.peers", body=b"\x80")), end=True)
    with trio.fail_after(10):
        await conn.closed.wait()  # type: ignore[attr-defined]
    reason = conn.close_reason  # type: ignore[attr-defined]
    assert reason.startswith("closed by peer")
    if attack != "no-channel-rpc":
        assert ("malformed" in reason) if attack == "garbage" else ("exceeds limit" in reason)
    with pytest.raises(ConnectionClosed):
        conn.open_stream()  # type: ignore[attr-defined]
    # The agent keeps serving others.
    client = await open_client(addr_a, roots=[sim_root / "ark.pem"], key_path=tmp_path / "op.key")
    try:
        assert (await client.call("agent.status", {}))["identity"] == \
            a.identity.public_bytes.hex()
    finally:
        await client.aclose()


async def test_identity_persists_across_restart(tmp_path: Path, sim_root: Path) -> None:
    a1 = make(tmp_path, sim_root, "a")
    with pytest.raises(StartupError, match="in use by another agent"):
        make(tmp_path, sim_root, "a")  # one agent per data dir
    a1.close()
    a2 = make(tmp_path, sim_root, "a")
    assert a1.identity.public_bytes == a2.identity.public_bytes
    key = tmp_path / "a" / "identity.key"
    assert key.stat().st_mode & 0o777 == 0o600


async def test_different_sim_roots_trust_each_other_when_told(nursery: trio.Nursery,
                                                              tmp_path: Path, sim_root: Path,
                                                              other_sim_root: Path) -> None:
    """--root (config `roots`) is how an operator says "also trust that site's sim root"."""
    a = make(tmp_path, sim_root, "a", roots=[other_sim_root / "ark.pem"])
    addr_a = await start(nursery, a)
    b = make(tmp_path, other_sim_root, "b", join=[addr_a], roots=[sim_root / "ark.pem"])
    await start(nursery, b)
    await wait_peers(a, 1)
    await wait_peers(b, 1)
    assert a.peers[b.identity.public_bytes].evidence.tee == "sim"  # type: ignore[union-attr]
    # b restarts (same identity) at another address and connects to a itself: a's entry
    # (agent.peers, and where a would dial it) follows it there, not its previous life.
    b.shutdown()
    with trio.fail_after(10):
        while b.data_dir_lock is not None:
            await trio.sleep(0.02)
    b2 = make(tmp_path, other_sim_root, "b", join=[addr_a], roots=[sim_root / "ark.pem"])
    addr_b2 = await start(nursery, b2)
    assert addr_b2 != b.address
    with trio.move_on_after(10):
        while True:
            entry = a.peers[b2.identity.public_bytes]
            if entry.session is not None and not entry.session.closed.is_set() and \
                    entry.verified_at > b.started_at and entry.address == addr_b2:
                break
            await trio.sleep(0.05)
    assert a.peers[b2.identity.public_bytes].address == addr_b2
    assert a.session_to_address(addr_b2) is not None


async def test_finished_rpc_streams_are_released(nursery: trio.Nursery, tmp_path: Path,
                                                  sim_root: Path) -> None:
    """One RPC is one stream: the per-connection stream table must not grow with calls."""
    from keepmesh.agent.rpc import call
    a = make(tmp_path, sim_root, "a")
    addr_a = await start(nursery, a)
    b = make(tmp_path, sim_root, "b")
    await start(nursery, b)
    session = await b.connect(addr_a)
    for _ in range(200):
        await call(session, "agent.status", {})
    assert len(session.conn._streams) <= 2  # the control stream (and at most one in flight)
    server_side = a.peers[b.identity.public_bytes].session
    assert server_side is not None
    await trio.sleep(0.05)
    assert len(server_side.conn._streams) <= 2
