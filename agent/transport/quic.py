"""aioquic's sans-IO QuicConnection driven by trio: one UDP socket, many peers.

The loop only shuttles bytes, timers and events: datagrams from the socket go
to the connection owning their destination connection ID; each connection has
a timer task sleeping until aioquic's deadline on trio's clock (so tests can
use MockClock); aioquic events become stream data, datagrams and state.

Traps from ../shared/NOTES-platform.md applied here:
- a non-blocking stdlib socket with wait_readable and batched receives
  (trio.socket per datagram costs 3x in bulk);
- `handle_timer(trio.current_time())`, never `max(now, deadline)`;
- client certificates are demanded and enforced (tls_binding.py);
- aioquic has no backpressure: per-stream receive buffers and the datagram
  queue are bounded here, and a peer exceeding them loses the stream/packets.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable

import trio
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import QuicPacketType, pull_quic_header
from keepmesh.agent.identity import Identity
from keepmesh.agent.transport.tls_binding import BoundQuicConnection
from keepmesh.protocol.errors import ProtocolError

ALPN = "keepmesh/1"
MAX_STREAM_BUFFER = 4 * 1024 * 1024
MAX_DATAGRAM_QUEUE = 1024
MAX_PENDING_STREAMS = 64
RECV_BATCH = 64
# Scheduling rounds a flush waits so that tasks woken by the same packet (stream
# reader -> RPC dispatcher -> handler) can add their reply to it.
FLUSH_YIELDS = 3

# Application error codes carried in CONNECTION_CLOSE (specs/channel.md).
ERR_NONE = 0
ERR_NO_CLIENT_CERT = 0x101
ERR_CHANNEL_REJECTED = 0x102
ERR_PROTOCOL = 0x103
ERR_TOO_MANY = 0x104
ERR_SHUTDOWN = 0x105


class ConnectionClosed(Exception):
    """The QUIC connection is gone; `reason` says why."""


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ProtocolError(f"address {text!r} is not HOST:PORT")
    host = host.strip("[]")
    try:
        port_n = int(port)
    except ValueError:
        raise ProtocolError(f"address {text!r}: port is not a number") from None
    if not 0 <= port_n <= 65535:
        raise ProtocolError(f"address {text!r}: port out of range")
    return host, port_n


class QuicStream:
    """One bidirectional stream with a bounded receive buffer."""

    def __init__(self, conn: QuicPeerConnection, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self._buf = bytearray()
        self._eof = False
        self._sent_fin = False
        self._reset: str | None = None
        self._lot = trio.lowlevel.ParkingLot()

    def _maybe_release(self) -> None:
        """Forget the stream once both directions ended (one RPC = one stream, so
        keeping them would grow the connection's table without bound)."""
        if (self._sent_fin and self._eof) or self._reset is not None:
            self.conn._streams.pop(self.stream_id, None)

    def _deliver(self, data: bytes, end: bool) -> None:
        self._buf += data
        self._eof = self._eof or end
        if len(self._buf) > MAX_STREAM_BUFFER:
            self._reset = "receive buffer limit exceeded"
            self._buf.clear()
            self.conn.reset_stream(self.stream_id)
        self._lot.unpark_all()
        self._maybe_release()

    def _fail(self, reason: str) -> None:
        self._reset = reason
        self._lot.unpark_all()
        self._maybe_release()

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        """Next chunk; b"" at end of stream. Raises ConnectionClosed on reset/close."""
        while not self._buf:
            if self._reset is not None:
                raise ConnectionClosed(self._reset)
            if self._eof:
                return b""
            if self.conn.closed.is_set():
                raise ConnectionClosed(self.conn.close_reason)
            await self._lot.park()
        data = bytes(self._buf[:max_bytes])
        del self._buf[:max_bytes]
        return data

    def send(self, data: bytes, end: bool = False) -> None:
        if self.conn.closed.is_set():
            raise ConnectionClosed(self.conn.close_reason)
        self.conn.quic.send_stream_data(self.stream_id, data, end_stream=end)
        self.conn.transmit()
        if end:
            self._sent_fin = True
            self._maybe_release()


class QuicPeerConnection:
    """One QUIC connection (either side) and the streams and datagrams on it."""

    def __init__(self, endpoint: QuicEndpoint, quic: BoundQuicConnection,
                 addr: tuple[str, int], is_client: bool) -> None:
        self.endpoint = endpoint
        self.quic = quic
        self.addr = addr
        self.is_client = is_client
        self.handshake_done = trio.Event()
        self.closed = trio.Event()
        self._settled = trio.Event()
        self.close_reason = "connection closed"
        self.peer_identity: bytes | None = None
        self._streams: dict[int, QuicStream] = {}
        send, recv = trio.open_memory_channel[QuicStream](MAX_PENDING_STREAMS)
        self._new_streams_send, self._new_streams = send, recv
        dsend, drecv = trio.open_memory_channel[bytes](MAX_DATAGRAM_QUEUE)
        self._dgram_send, self._dgram_recv = dsend, drecv
        self._timer_lot = trio.lowlevel.ParkingLot()
        self._tx_pending = False
        self.on_close: list[Callable[[QuicPeerConnection], None]] = []

    @property
    def peer_address(self) -> str:
        return f"{self.addr[0]}:{self.addr[1]}"

    def exporter(self) -> bytes:
        return self.quic.tls_exporter()

    # ------------------------------------------------------------ app API
    def open_stream(self) -> QuicStream:
        if self.closed.is_set():
            raise ConnectionClosed(self.close_reason)
        sid = self.quic.get_next_available_stream_id()
        stream = QuicStream(self, sid)
        self._streams[sid] = stream
        return stream

    async def accept_stream(self) -> QuicStream:
        try:
            return await self._new_streams.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ConnectionClosed(self.close_reason) from None

    def send_datagram(self, data: bytes) -> None:
        if self.closed.is_set():
            raise ConnectionClosed(self.close_reason)
        self.quic.send_datagram_frame(data)
        self.transmit()

    async def receive_datagram(self) -> bytes:
        try:
            return await self._dgram_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ConnectionClosed(self.close_reason) from None

    def reset_stream(self, stream_id: int, code: int = ERR_PROTOCOL) -> None:
        try:
            self.quic.reset_stream(stream_id, code)
            self.quic.stop_stream(stream_id, code)
        except Exception:  # stream already finished in that direction
            pass
        self.transmit()

    def close(self, code: int = ERR_NONE, reason: str = "") -> None:
        """Close with an application error code; the reason goes on the wire (one line)."""
        if self.closed.is_set():
            return
        self.quic.close(error_code=code, reason_phrase=reason[:200])
        self._flush()
        self._terminate(reason or "closed locally")

    async def wait_handshake(self) -> None:
        with trio.fail_after(self.endpoint.handshake_timeout):
            await self._settled.wait()  # handshake done or connection closed, one wake-up
        if self.closed.is_set():
            raise ConnectionClosed(self.close_reason)

    # ------------------------------------------------------------ engine
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.quic.receive_datagram(data, addr, trio.current_time())
        self._process_events()
        self.transmit()

    def transmit(self) -> None:
        """Ask for a flush. Deferred to the connection's task so that everything
        produced in one scheduling tick (an ACK and the reply it acknowledges,
        several sends) leaves in as few packets as possible."""
        if not self._tx_pending:
            self._tx_pending = True
            self._timer_lot.unpark_all()

    def _flush(self) -> None:
        self._tx_pending = False
        now = trio.current_time()
        for data, addr in self.quic.datagrams_to_send(now=now):
            self.endpoint.sendto(data, addr)

    async def timer_loop(self) -> None:
        while not self.closed.is_set():
            if self._tx_pending:
                # Let tasks woken by the same event (a reader about to reply) run first.
                for _ in range(FLUSH_YIELDS):
                    await trio.lowlevel.cancel_shielded_checkpoint()
                self._flush()
                continue
            deadline = self.quic.get_timer()
            if deadline is None:
                await self._timer_lot.park()
                continue
            with trio.move_on_at(deadline):
                await self._timer_lot.park()
                continue
            self.quic.handle_timer(trio.current_time())
            self._process_events()
            self._flush()

    def _process_events(self) -> None:
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                stream = self._streams.get(event.stream_id)
                if stream is None:
                    stream = QuicStream(self, event.stream_id)
                    self._streams[event.stream_id] = stream
                    try:
                        self._new_streams_send.send_nowait(stream)
                    except trio.WouldBlock:
                        del self._streams[event.stream_id]
                        self.reset_stream(event.stream_id, ERR_TOO_MANY)
                        continue
                stream._deliver(event.data, event.end_stream)
            elif isinstance(event, events.DatagramFrameReceived):
                try:
                    self._dgram_send.send_nowait(event.data)
                except trio.WouldBlock:
                    pass  # datagrams are lossy by contract; drop under load
            elif isinstance(event, events.HandshakeCompleted):
                try:
                    self.peer_identity = self.quic.peer_identity()
                except ProtocolError as err:
                    self.close(ERR_NO_CLIENT_CERT, err.reason)
                    return
                self.handshake_done.set()
                self._settled.set()
            elif isinstance(event, events.StreamReset):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream._fail(f"stream reset by peer (code {event.error_code})")
            elif isinstance(event, events.ConnectionIdIssued):
                self.endpoint._register_cid(event.connection_id, self)
            elif isinstance(event, events.ConnectionIdRetired):
                self.endpoint._unregister_cid(event.connection_id)
            elif isinstance(event, events.ConnectionTerminated):
                reason = event.reason_phrase or f"error code {event.error_code:#x}"
                self._terminate(f"closed by peer: {reason}")
                return

    def _terminate(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        self._settled.set()
        for stream in list(self._streams.values()):
            stream._fail(reason)
        self._new_streams_send.close()
        self._dgram_send.close()
        self._timer_lot.unpark_all()
        self.endpoint._forget(self)
        for cb in self.on_close:
            cb(self)


class QuicEndpoint:
    """One UDP socket serving inbound and outbound QUIC connections."""

    def __init__(self, identity: Identity, *, max_connections: int = 512,
                 idle_timeout: float = 60.0, handshake_timeout: float = 10.0) -> None:
        self.identity = identity
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.sock: socket.socket | None = None
        self._cids: dict[bytes, QuicPeerConnection] = {}
        self._conns: set[QuicPeerConnection] = set()
        self._nursery: trio.Nursery | None = None
        self.on_accept: Callable[[QuicPeerConnection], Awaitable[None]] | None = None
        self.dropped_datagrams = 0

    def _configuration(self, is_client: bool) -> QuicConfiguration:
        import ssl
        cfg = QuicConfiguration(
            is_client=is_client, alpn_protocols=[ALPN], idle_timeout=self.idle_timeout,
            max_datagram_frame_size=65536, verify_mode=ssl.CERT_NONE,
        )
        cfg.certificate = self.identity.certificate
        cfg.private_key = self.identity.private_key
        return cfg

    @property
    def local_address(self) -> tuple[str, int]:
        assert self.sock is not None
        host, port = self.sock.getsockname()[:2]
        return host, port

    async def serve(self, host: str, port: int, *,
                    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.bind((host, port))
        except OSError as err:
            sock.close()
            raise ProtocolError(f"cannot listen on {host}:{port}: {err.strerror}") from None
        self.sock = sock
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started(self.local_address)
                await self._receive_loop()
        finally:
            for conn in list(self._conns):
                conn.close(ERR_SHUTDOWN, "endpoint shutting down")
            sock.close()

    async def _receive_loop(self) -> None:
        assert self.sock is not None
        sock = self.sock
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(RECV_BATCH):
                try:
                    data, addr = sock.recvfrom(65536)
                except BlockingIOError:
                    break
                except OSError:
                    continue  # e.g. ICMP port unreachable surfaced as ECONNREFUSED
                self._datagram_received(data, addr[:2])

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.sock is not None
        try:
            self.sock.sendto(data, addr)
        except BlockingIOError:
            self.dropped_datagrams += 1  # QUIC loss recovery retransmits
        except OSError as err:
            if err.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                raise

    def _datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=8)
        except ValueError:
            return
        conn = self._cids.get(header.destination_cid)
        if conn is None:
            if header.packet_type != QuicPacketType.INITIAL or len(data) < 1200:
                return
            if len(self._conns) >= self.max_connections:
                return
            quic = BoundQuicConnection(
                configuration=self._configuration(False),
                original_destination_connection_id=header.destination_cid,
            )
            conn = self._adopt(quic, addr, is_client=False)
            self._cids[header.destination_cid] = conn
            assert self._nursery is not None
            if self.on_accept is not None:
                self._nursery.start_soon(self._run_accept, conn)
        try:
            conn.datagram_received(data, addr)
        except Exception as err:  # aioquic bug or hostile input: lose this connection only
            conn.close(ERR_PROTOCOL, f"internal error: {type(err).__name__}")

    async def _run_accept(self, conn: QuicPeerConnection) -> None:
        assert self.on_accept is not None
        try:
            await self.on_accept(conn)
        except ConnectionClosed:
            pass

    def _adopt(self, quic: BoundQuicConnection, addr: tuple[str, int],
               is_client: bool) -> QuicPeerConnection:
        conn = QuicPeerConnection(self, quic, addr, is_client)
        self._conns.add(conn)
        self._cids[quic.host_cid] = conn
        assert self._nursery is not None
        self._nursery.start_soon(conn.timer_loop)
        return conn

    async def connect(self, host: str, port: int) -> QuicPeerConnection:
        """Open a connection and wait for the TLS handshake (not yet attested)."""
        if self._nursery is None:
            raise RuntimeError("endpoint is not serving")
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as err:
            raise ConnectionClosed(f"cannot resolve {host}: {err}") from None
        addr: tuple[str, int] = infos[0][4][:2]  # type: ignore[assignment]
        if self.sock is not None and self.sock.family == socket.AF_INET and ":" in addr[0]:
            raise ConnectionClosed(f"cannot reach IPv6 address {addr[0]} from an IPv4 socket")
        quic = BoundQuicConnection(configuration=self._configuration(True))
        conn = self._adopt(quic, addr, is_client=True)
        quic.connect(addr, now=trio.current_time())
        conn.transmit()
        try:
            await conn.wait_handshake()
        except trio.TooSlowError:
            conn.close(ERR_PROTOCOL, "handshake timeout")
            raise ConnectionClosed(f"handshake with {host}:{port} timed out") from None
        return conn

    def _register_cid(self, cid: bytes, conn: QuicPeerConnection) -> None:
        self._cids[cid] = conn

    def _unregister_cid(self, cid: bytes) -> None:
        self._cids.pop(cid, None)

    def _forget(self, conn: QuicPeerConnection) -> None:
        self._conns.discard(conn)
        for cid in [c for c, v in self._cids.items() if v is conn]:
            del self._cids[cid]

    @property
    def connections(self) -> set[QuicPeerConnection]:
        return set(self._conns)


