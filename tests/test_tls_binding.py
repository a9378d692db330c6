"""QUIC transport, client-certificate enforcement and the tls-exporter binding."""

from __future__ import annotations

import ssl

import pytest
import trio
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from keepmesh.agent.identity import Identity
from keepmesh.agent.transport.quic import ConnectionClosed, QuicEndpoint, QuicPeerConnection
from keepmesh.agent.transport.tls_binding import BoundQuicConnection


async def _pair(nursery: trio.Nursery) -> tuple[QuicEndpoint, QuicEndpoint, list[QuicPeerConnection]]:
    a, b = QuicEndpoint(Identity.generate()), QuicEndpoint(Identity.generate())
    accepted: list[QuicPeerConnection] = []
    got = trio.Event()

    async def on_accept(conn: QuicPeerConnection) -> None:
        await conn.wait_handshake()
        accepted.append(conn)
        got.set()
        stream = await conn.accept_stream()
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
        stream.send(data[::-1], end=True)

    b.on_accept = on_accept
    await nursery.start(a.serve, "127.0.0.1", 0)
    await nursery.start(b.serve, "127.0.0.1", 0)
    return a, b, accepted


async def test_mutual_identities_exporter_and_stream(nursery: trio.Nursery) -> None:
    a, b, accepted = await _pair(nursery)
    conn = await a.connect(*b.local_address)
    stream = conn.open_stream()
    stream.send(b"hello keepmesh", end=True)
    reply = b""
    while chunk := await stream.receive_some():
        reply += chunk
    assert reply == b"hsempeek olleh"
    server_side = accepted[0]
    assert conn.peer_identity == b.identity.public_bytes
    assert server_side.peer_identity == a.identity.public_bytes
    assert len(conn.exporter()) == 32
    assert conn.exporter() == server_side.exporter()
    # A second session has a different binding value.
    conn2 = await a.connect(*b.local_address)
    assert conn2.exporter() != conn.exporter()


async def test_client_without_certificate_is_refused(nursery: trio.Nursery) -> None:
    """aioquic's server would accept an empty Certificate; keepmesh must not."""
    _, b, accepted = await _pair(nursery)
    host, port = b.local_address
    cfg = QuicConfiguration(is_client=True, alpn_protocols=["keepmesh/1"], verify_mode=ssl.CERT_NONE)
    client = QuicConnection(configuration=cfg)  # no certificate configured
    import socket
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    client.connect((host, port), now=trio.current_time())
    terminated = None
    with trio.move_on_after(3):
        while terminated is None:
            for data, addr in client.datagrams_to_send(now=trio.current_time()):
                await sock.sendto(data, addr)
            with trio.move_on_after(0.05):
                data, addr = await sock.recvfrom(65536)
                client.receive_datagram(data, addr, now=trio.current_time())
            timer = client.get_timer()
            if timer is not None and timer <= trio.current_time():
                client.handle_timer(trio.current_time())
            while (ev := client.next_event()) is not None:
                if type(ev).__name__ == "ConnectionTerminated":
                    terminated = ev
    assert terminated is not None, "server kept a client without certificate"
    assert terminated.error_code == 0x101
    assert not accepted


def test_exporter_unavailable_before_handshake() -> None:
    cfg = QuicConfiguration(is_client=True)
    quic = BoundQuicConnection(configuration=cfg)
    from keepmesh.protocol.errors import ProtocolError
    with pytest.raises(ProtocolError):
        quic.tls_exporter()


async def test_connect_to_nothing_times_out(nursery: trio.Nursery) -> None:
    a = QuicEndpoint(Identity.generate(), handshake_timeout=0.5)
    await nursery.start(a.serve, "127.0.0.1", 0)
    with pytest.raises(ConnectionClosed):
        await a.connect("127.0.0.1", 9)
