"""Datagram size of the QUIC transport (agent/transport/quic.py): peers on a loopback
address get LOOPBACK_DATAGRAM_SIZE (aioquic is CPU-bound per packet), every other peer
keeps QUIC's safe 1200 bytes (aioquic does no path-MTU discovery)."""

from __future__ import annotations

import os
import socket

import pytest
import trio
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
from keepmesh.agent.identity import Identity
from keepmesh.agent.transport.quic import (
    LOOPBACK_DATAGRAM_SIZE,
    QuicEndpoint,
    QuicPeerConnection,
    is_loopback,
)


def test_is_loopback_both_ways() -> None:
    for host in ("127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("192.0.2.2", "10.0.0.1", "0.0.0.0", "::", "fd00::2", "::ffff:10.0.0.1",
                 "fe80::1%eth0", "localhost", "example.com", "", "127.0.0.1.evil"):
        assert not is_loopback(host), host


def _local_non_loopback() -> str | None:
    """An address of this host that is not loopback (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.123", 9))
            host: str = s.getsockname()[0]
        except OSError:
            return None
    return None if is_loopback(host) or host == "0.0.0.0" else host


async def _transfer(nursery: trio.Nursery, bind: str, dial: str,
                    size: int) -> tuple[int, int, int]:
    """Send `size` bytes client -> server on one stream: (largest datagram each side sent,
    bytes the server read)."""
    server, client = QuicEndpoint(Identity.generate()), QuicEndpoint(Identity.generate())
    largest = {"server": 0, "client": 0}
    got: list[int] = []
    done = trio.Event()

    def spy(name: str, ep: QuicEndpoint) -> None:
        real = ep.sendto

        def sendto(data: bytes, addr: tuple[str, int]) -> None:
            largest[name] = max(largest[name], len(data))
            real(data, addr)
        ep.sendto = sendto  # type: ignore[method-assign]

    spy("server", server)
    spy("client", client)

    async def on_accept(conn: QuicPeerConnection) -> None:
        await conn.wait_handshake()
        stream = await conn.accept_stream()
        n = 0
        while chunk := await stream.receive_some(1 << 20):
            n += len(chunk)
        got.append(n)
        stream.send(b"ok", end=True)
        done.set()

    server.on_accept = on_accept
    _, port = await nursery.start(server.serve, bind, 0)
    await nursery.start(client.serve, bind, 0)
    conn = await client.connect(dial, port)
    stream = conn.open_stream()
    stream.send(os.urandom(size), end=True)
    with trio.fail_after(30):
        await done.wait()
        assert await stream.receive_some() == b"ok"
    return largest["client"], largest["server"], got[0]


async def test_loopback_peers_use_large_datagrams(nursery: trio.Nursery) -> None:
    client, server, n = await _transfer(nursery, "127.0.0.1", "127.0.0.1", 2 << 20)
    assert n == 2 << 20
    assert SMALLEST_MAX_DATAGRAM_SIZE < client <= LOOPBACK_DATAGRAM_SIZE
    assert server <= LOOPBACK_DATAGRAM_SIZE


async def test_other_peers_keep_1200_byte_datagrams(nursery: trio.Nursery) -> None:
    host = _local_non_loopback()
    if host is None:
        pytest.skip("this host has no non-loopback IPv4 address to dial")
    client, server, n = await _transfer(nursery, "0.0.0.0", host, 256 * 1024)
    assert n == 256 * 1024
    assert client <= SMALLEST_MAX_DATAGRAM_SIZE and server <= SMALLEST_MAX_DATAGRAM_SIZE
