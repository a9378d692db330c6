"""Hostile peers on streams: STOP_SENDING, floods of streams, slow and oversized
frames. Real agents on loopback; the agent runs in the test's nursery, so any
exception escaping its fault boundaries fails the test."""

from __future__ import annotations

import os
import struct
from pathlib import Path

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
from keepmesh.agent import rpc
from keepmesh.agent.session import CONTROL_FRAME_LIMIT
from keepmesh.agent.transport import quic
from keepmesh.protocol.channel import CHANNEL_MESSAGES, ChannelHello, ChannelProof, ChannelReject
from keepmesh.protocol.wire import FrameDecoder, encode_frame


async def test_stop_sending_on_rpc_streams_ends_only_those_streams(
        nursery: trio.Nursery, tmp_path: Path, sim_root: Path) -> None:
    agent = make_agent(tmp_path, sim_root, "a")
    addr = await nursery.start(agent.run)
    ep = await attacker_endpoint(nursery)
    session = await attacker_session(ep, addr, sim_root)
    conn = session.conn
    for _ in range(20):
        # Request and STOP_SENDING leave in one flight: the agent's reply is
        # written to a stream the peer already stopped (aioquic raises there).
        stream = conn.open_stream()
        stream.send(request_frame("agent.status"), end=True)
        conn.quic.stop_stream(stream.stream_id, 0x77)
        conn.transmit()
    await trio.sleep(0.5)
    assert not conn.closed.is_set()  # only the streams ended
    await good_client_served(addr, sim_root, tmp_path / "good.key")
    # The attacker's own connection still works for well-formed calls.
    reply = await rpc.call(session, "agent.status", {}, timeout=5)
    assert reply["identity"] == agent.identity.public_bytes.hex()


async def test_stop_sending_on_control_stream_before_attestation(
        nursery: trio.Nursery, tmp_path: Path, sim_root: Path) -> None:
    agent = make_agent(tmp_path, sim_root, "a")
    addr = await nursery.start(agent.run)
    ep = await attacker_endpoint(nursery)
    for _ in range(5):
        conn = await raw_connection(ep, addr)
        control = conn.open_stream()
        assert control.stream_id == 0
        hello = ChannelHello(role="client", nonce=os.urandom(32), want="any")
        control.send(encode_frame(hello))
        conn.quic.stop_stream(control.stream_id, 0x77)  # the agent answers on a stopped stream
        conn.transmit()
        with trio.fail_after(10):
            await conn.closed.wait()  # the agent closed this connection, nothing more
    await good_client_served(addr, sim_root, tmp_path / "good.key")


async def test_stop_sending_on_control_stream_after_the_agents_proof_fails_the_channel(
        nursery: trio.Nursery, tmp_path: Path, sim_root: Path) -> None:
    """specs/channel.md "Failure": the peer stopping the control stream during setup is a
    failure. The agent had already sent its hello and proof and waited for ours; it used
    to notice only at the 15 s channel timeout."""
    agent = make_agent(tmp_path, sim_root, "a")
    addr = await nursery.start(agent.run)
    ep = await attacker_endpoint(nursery)
    conn = await raw_connection(ep, addr)
    control = conn.open_stream()
    control.send(encode_frame(ChannelHello(role="client", nonce=os.urandom(32), want="any")))
    decoder = FrameDecoder(CONTROL_FRAME_LIMIT, expect=CHANNEL_MESSAGES)
    got: list[object] = []
    with trio.fail_after(10):
        while len(got) < 2:  # the agent's hello and proof
            got += decoder.feed(await control.receive_some())
        conn.quic.stop_stream(control.stream_id, 0x77)
        conn.transmit()
        await conn.closed.wait()
    assert "peer stopped stream" in conn.close_reason  # not "attested channel timed out"
    await good_client_served(addr, sim_root, tmp_path / "good.key")


async def test_a_failed_channel_sends_its_reject_before_the_close(
        nursery: trio.Nursery, tmp_path: Path, sim_root: Path) -> None:
    """specs/channel.md "Failure": the failing side sends chan.reject{reason}, then closes
    with 0x102. The close used to drop the queued reject: the peer saw only the close."""
    agent = make_agent(tmp_path, sim_root, "a")
    addr = await nursery.start(agent.run)
    ep = await attacker_endpoint(nursery)
    conn = await raw_connection(ep, addr)
    control = conn.open_stream()
    arrived = bytearray()  # recorded as delivered: a close drops what is buffered unread
    deliver = control._deliver

    def record(data: bytes, end: bool) -> None:
        arrived.extend(data)
        deliver(data, end)
    control._deliver = record  # type: ignore[method-assign]
    control.send(encode_frame(ChannelHello(role="client", nonce=os.urandom(32), want="any")))
    control.send(encode_frame(ChannelProof(signature=bytes(64))))  # signs nothing
    with trio.fail_after(10):
        await conn.closed.wait()
    msgs = list(FrameDecoder(CONTROL_FRAME_LIMIT, expect=CHANNEL_MESSAGES).feed(bytes(arrived)))
    assert isinstance(msgs[-1], ChannelReject), [m.TYPE for m in msgs]
    assert "signature" in msgs[-1].reason and msgs[-1].reason in conn.close_reason
    await good_client_served(addr, sim_root, tmp_path / "good.key")


async def test_control_stream_must_be_stream_zero(nursery: trio.Nursery, tmp_path: Path,
                                                  sim_root: Path) -> None:
    agent = make_agent(tmp_path, sim_root, "a")
    addr = await nursery.start(agent.run)
    ep = await attacker_endpoint(nursery)
    conn = await raw_connection(ep, addr)
    conn.open_stream()  # stream 0 opened but never used
    other = conn.open_stream()
    assert other.stream_id == 4
    other.send(encode_frame(ChannelHello(role="client", nonce=os.urandom(32), want="any")))
    with trio.fail_after(10):
        await conn.closed.wait()
    assert "control stream" in conn.close_reason
    await good_client_served(addr, sim_root, tmp_path / "good.key")


async def test_stream_flood_is_bounded(nursery: trio.Nursery, tmp_path: Path,
                                       sim_root: Path) -> None:
    """Streams that never finish their request: at most MAX_CONCURRENT_CALLS are read,
    MAX_PENDING_STREAMS wait, the rest are reset; buffered bytes stay bounded."""
    agent = make_agent(tmp_path, sim_root, "a")
    addr = await nursery.start(agent.run)
    ep = await attacker_endpoint(nursery)
    session = await attacker_session(ep, addr, sim_root)
    conn = session.conn
    # A frame declaring 60,000 bytes (below LARGE_FRAME: no reservation needed) of
    # which only 50,000 ever arrive: each stream holds its reader until the
    # request read timeout.
    partial = struct.pack(">I", 60_000) + os.urandom(50_000)
    for _ in range(400):
        try:
            stream = conn.open_stream()
            stream.send(partial)
        except Exception:  # aioquic's stream limit: the agent grants streams as it frees them
            break
        if _ % 50 == 0:
            await trio.sleep(0.05)
    await trio.sleep(1.0)
    victim = next(c for c in agent.endpoint.connections if c.addr[0] == "127.0.0.2")
    assert agent.endpoint.counters["streams_refused"] > 0
    assert victim.buffered <= quic.CONN_BUFFER_LIMIT
    assert agent.endpoint.budget.used <= quic.TOTAL_BUFFER_LIMIT
    await good_client_served(addr, sim_root, tmp_path / "good.key")


async def test_slow_request_times_out(nursery: trio.Nursery, tmp_path: Path, sim_root: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rpc, "REQUEST_READ_TIMEOUT_S", 1.0)
    agent = make_agent(tmp_path, sim_root, "a")
    addr = await nursery.start(agent.run)
    ep = await attacker_endpoint(nursery)
    session = await attacker_session(ep, addr, sim_root)
    stream = session.conn.open_stream()
    stream.send(request_frame("agent.status")[:10])  # a few bytes, then nothing
    with trio.fail_after(5):
        reply = await stream.receive_some()
    assert b"not received in time" in reply
    await good_client_served(addr, sim_root, tmp_path / "good.key")


async def test_large_admitted_request_gets_time_by_its_length(
        nursery: trio.Nursery, tmp_path: Path, sim_root: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A large body over a slow link is not cut at the base timeout (a 16 MiB deploy at
    under 1.6 MiB/s was), but only for the time its declared length earns."""
    monkeypatch.setattr(rpc, "REQUEST_READ_TIMEOUT_S", 1.0)
    monkeypatch.setattr(rpc, "MIN_REQUEST_RATE_BPS", 256 * 1024)  # 1 MiB earns 4 s
    agent = make_agent(tmp_path, sim_root, "a")
    addr = await nursery.start(agent.run)
    ep = await attacker_endpoint(nursery)
    session = await attacker_session(ep, addr, sim_root)
    frame = request_frame("keeps.deploy", {"data": b"\0" * (1 << 20)})
    slow = session.conn.open_stream()
    slow.send(frame[:128 * 1024])
    await trio.sleep(2.0)  # past the base timeout, within what the length earns
    slow.send(frame[128 * 1024:], end=True)
    with trio.fail_after(10):
        reply = await slow.receive_some()
    assert b"rpc.response" in reply and b"not received in time" not in reply, reply[:200]
    assert b"exceeds its limit" not in reply, reply[:200]  # admitted, then judged
    stalled = session.conn.open_stream()
    stalled.send(frame[:128 * 1024])  # and then nothing: refused once the earned time is up
    with trio.fail_after(10):
        reply = await stalled.receive_some()
    assert b"not received in time" in reply, reply[:200]
    await good_client_served(addr, sim_root, tmp_path / "good.key")


async def test_large_frame_refused_before_buffering(nursery: trio.Nursery, tmp_path: Path,
                                                    sim_root: Path) -> None:
    """A 24 MiB declared frame for a method the caller may not call, or that takes
    small bodies, is answered from its first bytes; nothing like its length is held."""
    agent = make_agent(tmp_path, sim_root, "a")
    addr = await nursery.start(agent.run)
    ep = await attacker_endpoint(nursery)
    session = await attacker_session(ep, addr, sim_root)
    for method, expect in (("swim.stream", b"unknown method"),  # agents only
                           ("agent.status", b"exceeds its limit"),  # small-body method
                           ("migrate.where", b"exceeds its limit"),  # {} bodies, as status
                           ("agent.drain", b"exceeds its limit"),
                           ("no.such", b"unknown method")):
        frame = request_frame(method, {"data": b"\0" * (20 << 20)})
        stream = session.conn.open_stream()
        stream.send(frame[:256 * 1024])  # the head, then the attacker would keep going
        with trio.fail_after(5):
            reply = await stream.receive_some()
        assert expect in reply, reply[:200]
    assert agent.endpoint.budget.used < 4 << 20
    await good_client_served(addr, sim_root, tmp_path / "good.key")


async def test_bounded_methods_take_a_body_at_their_limit_and_refuse_one_above(
        nursery: trio.Nursery, tmp_path: Path, sim_root: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """keeps.place, keeps.secret_set and migrate.attest carry one schema-bounded record
    (specs/wire.md "Large RPC frames"): a body of exactly the method's limit reaches the
    handler, one byte more is refused, and a head declaring more than limit + envelope
    is answered from its first bytes, before the rest is sent. They used to admit 24 MiB."""
    from keepmesh.protocol.rpc import ENVELOPE, RpcRequest, body_limit
    agent = make_agent(tmp_path, sim_root, "a")
    methods_for = agent._methods_for
    # migrate.attest is offered to agents only: give this client session the agent's
    # handler (which then answers "agents only" once the body was admitted)
    monkeypatch.setattr(agent, "_methods_for", lambda session: {
        **methods_for(session), "migrate.attest": agent.methods["migrate.attest"]})
    addr = await nursery.start(agent.run)
    ep = await attacker_endpoint(nursery)
    session = await attacker_session(ep, addr, sim_root)

    async def ask(frame: bytes, send: int | None = None) -> bytes:
        stream = session.conn.open_stream()
        stream.send(frame[:send], end=send is None)
        with trio.fail_after(10):
            return bytes(await stream.receive_some())

    for method in ("keeps.place", "keeps.secret_set", "migrate.attest"):
        limit = body_limit(method)
        assert limit <= 2 << 20, (method, limit)
        at = await ask(encode_frame(RpcRequest(method=method, body=b"\0" * limit), 32 << 20))
        assert b"not msgpack" in at, (method, at[:200])  # admitted, reached the handler
        above = await ask(encode_frame(RpcRequest(method=method, body=b"\0" * (limit + 1)),
                                       32 << 20))
        assert b"body exceeds its limit" in above, (method, above[:200])
        head = struct.pack(">I", limit + ENVELOPE + 1) + \
            encode_frame(RpcRequest(method=method, body=b"\0" * (limit + 1)), 32 << 20)[4:]
        early = await ask(head, send=64 * 1024)  # only the head: the rest is never sent
        assert b"exceeds its limit" in early and b"invalid" in early, (method, early[:200])
    assert agent.endpoint.budget.used < 4 << 20


async def test_repeated_violations_ban_the_source_for_a_while(
        nursery: trio.Nursery, tmp_path: Path, sim_root: Path) -> None:
    from keepmesh.agent.transport.limits import BanList
    from keepmesh.agent.transport.quic import ConnectionClosed
    agent = make_agent(tmp_path, sim_root, "a")
    agent.endpoint.bans = BanList(threshold=3, window_s=30, ban_s=2.0)  # shortened
    addr = await nursery.start(agent.run)
    ep = await attacker_endpoint(nursery)
    ep.handshake_timeout = 0.5
    for _ in range(3):  # a protocol violation on a validated path, three times
        conn = await raw_connection(ep, addr)
        conn.open_stream()
        conn.open_stream().send(b"\0\0\0\1x")  # data on stream 4 first
        with trio.fail_after(10):
            await conn.closed.wait()
    assert agent.endpoint.counters["bans"] == 1
    with pytest.raises(ConnectionClosed):  # banned: its Initials are dropped
        await raw_connection(ep, addr)
    await good_client_served(addr, sim_root, tmp_path / "good.key")  # others unaffected
    await trio.sleep(2.0)
    conn = await raw_connection(ep, addr)  # the ban expired
    conn.close()
