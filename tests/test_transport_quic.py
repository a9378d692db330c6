"""Datagram size of the QUIC transport (agent/transport/quic.py): loopback peers get up to
MAX_DATAGRAM_SIZE (aioquic is CPU-bound per packet), other peers QUIC's 1200 unless the
operator vouches for a size ([transport] max_datagram_size), capped by the first hop's MTU
(aioquic does no path-MTU discovery)."""

from __future__ import annotations

import os
import sys

import pytest
import trio
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
from keepmesh.agent.config import config_from_dict
from keepmesh.agent.identity import Identity
from keepmesh.agent.transport.limits import MAX_DATAGRAM_SIZE, LimitsError, TransportSettings
from keepmesh.agent.transport.quic import (
    QuicEndpoint,
    QuicPeerConnection,
    datagram_size,
    is_loopback,
    route_mtu,
)
from keepmesh.protocol.errors import ProtocolError


def test_is_loopback_both_ways() -> None:
    for host in ("127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("192.0.2.2", "10.0.0.1", "0.0.0.0", "::", "fd00::2", "::ffff:10.0.0.1",
                 "fe80::1%eth0", "localhost", "example.com", "", "127.0.0.1.evil"):
        assert not is_loopback(host), host


def test_datagram_size_loopback_large_others_1200_unless_vouched() -> None:
    assert datagram_size("127.0.0.1", 65535) == MAX_DATAGRAM_SIZE  # capped
    assert datagram_size("::1", None) == MAX_DATAGRAM_SIZE  # loopback MTU >= 16384
    assert datagram_size("127.0.0.1", 9000) == 9000 - 28  # a smaller loopback MTU caps it
    # not loopback: the first hop's MTU says nothing of the rest of the path
    assert datagram_size("192.0.2.9", 9000) == SMALLEST_MAX_DATAGRAM_SIZE
    assert datagram_size("192.0.2.9", None) == SMALLEST_MAX_DATAGRAM_SIZE
    # ... unless the operator vouches for its network; still capped by the first hop
    assert datagram_size("192.0.2.9", 1500, vouched=1472) == 1472
    assert datagram_size("192.0.2.9", 1400, vouched=1472) == 1372
    assert datagram_size("fd00::9", 1500, vouched=9000) == 1452  # IPv6 headers: 48
    assert datagram_size("192.0.2.9", None, vouched=4000) == 4000
    assert datagram_size("192.0.2.9", 1220, vouched=4000) == SMALLEST_MAX_DATAGRAM_SIZE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="IP_MTU is Linux's")
def test_route_mtu_from_the_kernel() -> None:
    mtu = route_mtu("127.0.0.1")
    assert mtu is not None and mtu >= 16384  # lo: 65536 (65535 for IPv4)
    assert route_mtu("localhost") is None and route_mtu("not an address") is None


async def _transfer(nursery: trio.Nursery, bind: str, dial: str, size: int,
                    vouched: int | None = None) -> tuple[int, int, int]:
    """Send `size` bytes client -> server on one stream: (largest datagram each side sent,
    bytes the server read)."""
    server, client = QuicEndpoint(Identity.generate()), QuicEndpoint(Identity.generate())
    server.vouched_datagram_size = client.vouched_datagram_size = vouched
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
    assert SMALLEST_MAX_DATAGRAM_SIZE < client <= MAX_DATAGRAM_SIZE
    assert server <= MAX_DATAGRAM_SIZE


async def test_other_peers_get_1200_byte_datagrams(
        nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    from keepmesh.agent.transport import quic
    monkeypatch.setattr(quic, "is_loopback", lambda host: False)  # as if a remote peer
    client, server, n = await _transfer(nursery, "127.0.0.1", "127.0.0.1", 256 * 1024)
    assert n == 256 * 1024
    assert client <= SMALLEST_MAX_DATAGRAM_SIZE and server <= SMALLEST_MAX_DATAGRAM_SIZE


async def test_vouched_size_applies_to_other_peers(
        nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    from keepmesh.agent.transport import quic
    monkeypatch.setattr(quic, "is_loopback", lambda host: False)
    client, server, n = await _transfer(nursery, "127.0.0.1", "127.0.0.1", 256 * 1024,
                                        vouched=4000)
    assert n == 256 * 1024
    assert SMALLEST_MAX_DATAGRAM_SIZE < client <= 4000 and server <= 4000


def test_transport_settings_bounded_both_ways() -> None:
    assert TransportSettings.from_table({}, "f").max_datagram_size is None
    assert TransportSettings.from_table({"max_datagram_size": 1472}, "f").max_datagram_size \
        == 1472
    for bad in ({"max_datagram_size": 1199}, {"max_datagram_size": 16001},
                {"max_datagram_size": "1472"}, {"max_datagram_size": True},
                {"mtu": 1500}):
        with pytest.raises(LimitsError, match="transport"):
            TransportSettings.from_table(bad, "f")
    cfg = config_from_dict({"transport": {"max_datagram_size": 9000}}, "agent.toml")
    assert cfg.transport.max_datagram_size == 9000
    with pytest.raises(ProtocolError, match="transport.max_datagram_size"):
        config_from_dict({"transport": {"max_datagram_size": 70000}}, "agent.toml")
