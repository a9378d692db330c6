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
- aioquic has no backpressure: every byte a peer makes us hold (stream
  buffers, queued datagrams, RPC frames being assembled) is counted against a
  per-connection and an endpoint-wide Budget (limits.py); a peer exceeding
  its own loses the stream, and when the total runs out the heaviest
  connection is closed, so light (good) peers keep being served.

Fault boundary: nothing a peer sends may raise out of this module's tasks.
Hostile input that makes aioquic raise closes that connection only; writing
to a stream the peer stopped (STOP_SENDING) raises StreamClosed to the writer.

Admission (specs/wire.md "Limits"): garbage Initials create no state (a
connection is kept only if aioquic answered the first datagram); at most
MAX_HANDSHAKES handshakes are in progress (MAX_HANDSHAKES_PER_HOST per source
address), each for at most SERVER_HANDSHAKE_TIMEOUT_S; above RETRY_THRESHOLD
handshakes in progress, Initials must carry a Retry token (QUIC address
validation) before they cost a slot; connections are limited per source
address and in total; sources that keep violating the protocol are banned
for a while.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable

import trio
from aioquic._buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import QuicHeader, QuicPacketType, encode_quic_retry, pull_quic_header
from aioquic.quic.retry import QuicRetryTokenHandler
from keepmesh.agent import metrics
from keepmesh.agent.identity import Identity
from keepmesh.agent.transport.limits import (  # admission defaults: [limits] in the config
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_HOST,
    MAX_DATAGRAM_SIZE,
    MAX_HANDSHAKES,
    MAX_HANDSHAKES_PER_HOST,
    MIN_DATAGRAM_SIZE,
    BanList,
    Budget,
    RateLimitedLog,
    RateWindow,
)
from keepmesh.agent.transport.tls_binding import BoundQuicConnection
from keepmesh.protocol.address import parse_address as _parse_canonical
from keepmesh.protocol.errors import ProtocolError

log = logging.getLogger("keepmesh.transport")

ALPN = "keepmesh/1"
# Unread bytes one stream may hold (its reader drains it into a bounded frame).
MAX_STREAM_BUFFER = 1024 * 1024
# Bytes one connection may make us hold: stream buffers, queued datagrams and
# RPC frames being assembled (one largest RPC frame, 24 MiB + 1 KiB, plus slack).
CONN_BUFFER_LIMIT = 26 * 1024 * 1024
# Bytes all connections together may make us hold.
TOTAL_BUFFER_LIMIT = 48 * 1024 * 1024
MAX_DATAGRAM_QUEUE = 256
# Peer-opened streams waiting for a free call slot; beyond that they are reset.
MAX_PENDING_STREAMS = 64
MAX_TOMBSTONES = 256
# Above this many handshakes in progress, or this many Initials in the last second
# that turned out to hold no ClientHello, new Initials must prove their address
# (Retry) before they cost anything more: processing one costs ~2 ms on a busy
# host, a Retry ~0.05 ms. Healthy handshakes (even many per second) never trigger
# it, so they keep their single round trip.
RETRY_THRESHOLD = 8
GARBAGE_INITIALS_PER_S = 32
SERVER_HANDSHAKE_TIMEOUT_S = 5.0
CLIENT_HANDSHAKE_TIMEOUT_S = 10.0
# Protocol violations on a validated path before the source is ignored, and for how long.
BAN_THRESHOLD = 20
BAN_WINDOW_S = 30.0
BAN_S = 60.0
RECV_BATCH = 64
_IP_MTU, _IPV6_MTU = 14, 24  # Linux getsockopt names (not exported by the socket module)
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


class StreamClosed(ConnectionClosed):
    """This stream is gone (reset, stopped by the peer, over budget); the connection may live.

    A subclass of ConnectionClosed so that every reader and writer that already
    ends its work on a closed connection ends it on a closed stream too.
    """


def parse_address(text: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT via the one canonical parser (keepmesh.protocol.address):
    IP literal or valid DNS name, so a hostile name never reaches the resolver (a
    64-character label raised UnicodeError there). Port 0 is accepted because listen
    addresses come here too; addresses from the network (records) never carry it."""
    addr = _parse_canonical(text, listen=True)
    return addr.host, addr.port


def route_mtu(host: str) -> int | None:
    """The MTU the kernel uses for packets to `host` (the interface its route leaves by, or
    a smaller path MTU the kernel learned), read from a connected probe socket: nothing
    is sent. None where the OS does not tell (not Linux) or `host` is not an IP literal."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    v6 = ip.version == 6
    try:
        with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            mtu = s.getsockopt(socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP,
                               _IPV6_MTU if v6 else _IP_MTU)
    except OSError:
        return None
    return int(mtu) if mtu > 0 else None


def datagram_size(host: str, mtu: int | None, vouched: int | None = None) -> int:
    """Largest UDP payload to send to `host`, whose route MTU is `mtu` (None: unknown).

    aioquic does no path-MTU discovery and costs CPU per packet (specs/wire.md "Datagram
    size"). A loopback path never leaves the host, so its MTU is known: up to
    MAX_DATAGRAM_SIZE. Any other path may have a smaller MTU past the first hop, so it
    gets QUIC's 1200 unless the operator vouches for a size on its network
    ([transport] max_datagram_size); that is still capped by the first hop's MTU."""
    headers = 48 if ":" in host else 28  # IPv6 or IPv4 header + UDP header
    if is_loopback(host):
        size = MAX_DATAGRAM_SIZE
    elif vouched is not None:
        size = min(vouched, MAX_DATAGRAM_SIZE)
    else:
        return MIN_DATAGRAM_SIZE
    if mtu is not None:
        size = min(size, mtu - headers)
    return max(MIN_DATAGRAM_SIZE, size)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback: the path never leaves this host."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class QuicStream:
    """One bidirectional stream with a bounded receive buffer."""

    def __init__(self, conn: QuicPeerConnection, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self._buf = bytearray()
        self._eof = False
        self._sent_fin = False
        self._reset: str | None = None
        self._send_stopped: str | None = None
        self._lot = trio.lowlevel.ParkingLot()

    def _maybe_release(self) -> None:
        """Forget the stream once both directions ended (one RPC = one stream, so
        keeping them would grow the connection's table without bound)."""
        if (self._sent_fin and self._eof) or self._reset is not None or \
                (self._send_stopped is not None and self._eof):
            self.conn._streams.pop(self.stream_id, None)

    def _deliver(self, data: bytes, end: bool) -> None:
        if self._reset is not None:
            return  # already given up on; late data is dropped
        if data:
            if len(self._buf) + len(data) > MAX_STREAM_BUFFER:
                self.abort("receive buffer limit exceeded", ERR_TOO_MANY)
                return
            if not self.conn._take(len(data)):
                self.abort("connection buffer budget exceeded", ERR_TOO_MANY)
                return
            self._buf += data
        self._eof = self._eof or end
        self._lot.unpark_all()
        self._maybe_release()

    def _drop_buffer(self) -> None:
        if self._buf:
            self.conn.budget.give(len(self._buf))
            self._buf.clear()

    def _fail(self, reason: str) -> None:
        self._reset = reason
        self._drop_buffer()
        self._lot.unpark_all()
        self._maybe_release()

    def abort(self, reason: str, code: int = ERR_PROTOCOL) -> None:
        """Give up on this stream both ways (RESET_STREAM + STOP_SENDING with `code`)."""
        if self._reset is None:
            self.conn.reset_stream(self.stream_id, code)
            self.conn._tombstone(self.stream_id)
            self._fail(reason)

    def stop_reading(self, reason: str, code: int = ERR_PROTOCOL) -> None:
        """We will read no more (STOP_SENDING); what is buffered is dropped. Sending
        (an error reply already queued) is unaffected."""
        if self._reset is None:
            try:
                self.conn.quic.stop_stream(self.stream_id, code)
            except Exception:  # unknown to aioquic or already finished: nothing to stop
                pass
            self.conn.transmit()
            self.conn._tombstone(self.stream_id)
            self._fail(reason)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    async def receive_some(self, max_bytes: int = 65536, *,
                           fail_if_stopped: bool = False) -> bytes:
        """Next chunk; b"" at end of stream. Raises StreamClosed/ConnectionClosed.

        `fail_if_stopped`: the peer's STOP_SENDING ends the wait too (StreamClosed). A
        stream that must carry our answer (the control stream during channel setup)
        is useless once the peer will not read it; an RPC stream may still be read."""
        while not self._buf:
            if self._reset is not None:
                raise StreamClosed(self._reset)
            if fail_if_stopped and self._send_stopped is not None:
                raise StreamClosed(self._send_stopped)
            if self._eof:
                return b""
            if self.conn.closed.is_set():
                raise ConnectionClosed(self.conn.close_reason)
            await self._lot.park()
        data = bytes(self._buf[:max_bytes])
        del self._buf[:max_bytes]
        self.conn.budget.give(len(data))
        return data

    def send(self, data: bytes, end: bool = False) -> None:
        """Queue data; raises StreamClosed if the peer stopped or reset this stream.

        aioquic raises a bare RuntimeError when writing to a stream the peer
        sent STOP_SENDING for (and ValueError/others for ids it discarded):
        that is peer input, so it must end this stream, not the caller's task.
        """
        if self.conn.closed.is_set():
            raise ConnectionClosed(self.conn.close_reason)
        if self._send_stopped is not None:
            raise StreamClosed(self._send_stopped)
        try:
            self.conn.quic.send_stream_data(self.stream_id, data, end_stream=end)
        except Exception as err:  # aioquic: stopped, reset, or unknown stream
            self._send_stopped = f"cannot send on stream {self.stream_id}: {err}"[:200]
            raise StreamClosed(self._send_stopped) from None
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
        self.budget = Budget(CONN_BUFFER_LIMIT, endpoint.budget)
        self.validated = False  # source address proven (Retry token or completed handshake)
        self.created_at = trio.current_time()
        self.handshake_deadline: float | None = None
        self._holds_handshake_slot = False
        self._streams: dict[int, QuicStream] = {}
        self._aborted: dict[int, None] = {}  # peer streams we reset (bounded tombstones)
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
        value: bytes = self.quic.tls_exporter()
        return value

    # ------------------------------------------------------------ app API
    def open_stream(self) -> QuicStream:
        if self.closed.is_set():
            raise ConnectionClosed(self.close_reason)
        sid = self.quic.get_next_available_stream_id()
        # aioquic allocates the id only once the stream exists on its side; create it
        # now (an empty write sends nothing) so two opens never share an id.
        self.quic.send_stream_data(sid, b"")
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
            data = await self._dgram_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ConnectionClosed(self.close_reason) from None
        self.budget.give(len(data))
        return data

    def reset_stream(self, stream_id: int, code: int = ERR_PROTOCOL) -> None:
        for op in (self.quic.reset_stream, self.quic.stop_stream):
            try:
                op(stream_id, code)
            except Exception:  # already finished in that direction, or unknown to aioquic
                pass
        self.transmit()

    def close(self, code: int = ERR_NONE, reason: str = "") -> None:
        """Close with an application error code; the reason goes on the wire (one line)."""
        if self.closed.is_set():
            return
        if code == ERR_PROTOCOL and self.validated and not self.is_client:
            self.endpoint._violation(self.addr[0])
        try:
            if self._tx_pending:
                # What was queued just before (a chan.reject, a last answer) leaves ahead of
                # the CONNECTION_CLOSE: once closing, aioquic sends nothing but the close.
                self._flush()
            self.quic.close(error_code=code, reason_phrase=reason[:200])
            self._flush()
        except Exception:  # closing must never fail the caller; the peer will time out
            pass
        self._terminate(reason or "closed locally")

    @property
    def buffered(self) -> int:
        """Bytes this connection makes us hold (streams, datagrams, frames being read)."""
        used: int = self.budget.used
        return used

    def reserve(self, n: int) -> bool:
        """Reserve `n` bytes of this connection's buffer budget for a frame being
        assembled above the transport (give them back with `release`)."""
        return self._take(n)

    def release(self, n: int) -> None:
        self.budget.give(n)

    def _take(self, n: int) -> bool:
        """Charge `n` buffered bytes to this connection; when the endpoint's total is
        exhausted, the heaviest connection is closed to make room (if it is not us)."""
        if self.budget.take(n):
            return True
        if self.budget.used + n > self.budget.limit:
            return False  # our own limit: our stream pays
        return self.endpoint._make_room(n, self) and self.budget.take(n)

    async def wait_handshake(self) -> None:
        with trio.fail_after(self.endpoint.handshake_timeout):
            await self._settled.wait()  # handshake done or connection closed, one wake-up
        if self.closed.is_set():
            raise ConnectionClosed(self.close_reason)

    # ------------------------------------------------------------ engine
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """Feed one datagram; anything it makes aioquic or us raise closes this connection."""
        try:
            self.quic.receive_datagram(data, addr, trio.current_time())
            self._process_events()
        except Exception as err:  # aioquic bug or hostile input: lose this connection only
            self.close(ERR_PROTOCOL, f"internal error: {type(err).__name__}")
            return
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
        try:
            out = self.quic.datagrams_to_send(now=now)
        except Exception as err:  # aioquic failed on state a peer shaped: drop the connection
            self._terminate(f"internal error: {type(err).__name__}")
            return
        for data, addr in out:
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
            try:
                self.quic.handle_timer(trio.current_time())
                self._process_events()
            except Exception as err:  # see datagram_received: this connection only
                self.close(ERR_PROTOCOL, f"internal error: {type(err).__name__}")
                return
            self._flush()

    def _process_events(self) -> None:
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                stream = self._streams.get(event.stream_id)
                if stream is None:
                    stream = self._new_peer_stream(event.stream_id)
                    if stream is None:
                        continue
                stream._deliver(event.data, event.end_stream)
            elif isinstance(event, events.DatagramFrameReceived):
                if not self._take(len(event.data)):
                    continue  # datagrams are lossy by contract; drop over budget
                try:
                    self._dgram_send.send_nowait(event.data)
                except (trio.WouldBlock, trio.ClosedResourceError):
                    self.budget.give(len(event.data))  # lossy: drop under load
            elif isinstance(event, events.HandshakeCompleted):
                try:
                    self.peer_identity = self.quic.peer_identity()
                except ProtocolError as err:
                    self.close(ERR_NO_CLIENT_CERT, err.reason)
                    return
                self.validated = True
                self.endpoint._handshake_settled(self)
                self.handshake_done.set()
                self._settled.set()
            elif isinstance(event, events.StreamReset):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream._fail(f"stream reset by peer (code {event.error_code})")
            elif isinstance(event, events.StopSendingReceived):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream._send_stopped = f"peer stopped stream (code {event.error_code})"
                    stream._lot.unpark_all()  # a reader waiting with fail_if_stopped
                    stream._maybe_release()
            elif isinstance(event, events.ConnectionIdIssued):
                self.endpoint._register_cid(event.connection_id, self)
            elif isinstance(event, events.ConnectionIdRetired):
                self.endpoint._unregister_cid(event.connection_id)
            elif isinstance(event, events.ConnectionTerminated):
                reason = event.reason_phrase or f"error code {event.error_code:#x}"
                self._terminate(f"closed by peer: {reason}")
                return

    def _new_peer_stream(self, stream_id: int) -> QuicStream | None:
        """A stream id we hold no state for: a new peer-opened bidirectional stream is
        queued for accept_stream (at most MAX_PENDING_STREAMS, then reset); anything
        else (unidirectional, ours but already released, a peer id we already saw)
        is refused or ignored, so a peer cannot make us answer on a stream we
        cannot write to or resurrect a finished one."""
        peer_bit = 0 if not self.is_client else 1
        if stream_id & 2:  # unidirectional: keepmesh uses none
            self.reset_stream(stream_id, ERR_PROTOCOL)
            return None
        if stream_id & 1 != peer_bit or stream_id in self._aborted:
            return None  # ours and released, or a late frame for one we gave up on
        stream = QuicStream(self, stream_id)
        try:
            self._new_streams_send.send_nowait(stream)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.endpoint.counters["streams_refused"] += 1
            self.reset_stream(stream_id, ERR_TOO_MANY)
            self._tombstone(stream_id)
            return None
        self._streams[stream_id] = stream
        return stream

    def _tombstone(self, stream_id: int) -> None:
        """Remember a stream we reset so data the peer sent before seeing our
        STOP_SENDING is not taken for a new stream (bounded: oldest forgotten)."""
        self._aborted[stream_id] = None
        if len(self._aborted) > MAX_TOMBSTONES:
            del self._aborted[next(iter(self._aborted))]

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
        while True:  # queued streams and datagrams nobody will read give their bytes back
            try:
                queued = self._new_streams.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            queued._fail(reason)
        while True:
            try:
                self.budget.give(len(self._dgram_recv.receive_nowait()))
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        self.budget.close()  # whatever its readers still hold is no longer ours to count
        self.endpoint._handshake_settled(self)
        self._timer_lot.unpark_all()
        self.endpoint._forget(self)
        for cb in self.on_close:
            cb(self)


class QuicEndpoint:
    """One UDP socket serving inbound and outbound QUIC connections."""

    def __init__(self, identity: Identity, *, max_connections: int = MAX_CONNECTIONS,
                 max_connections_per_host: int = MAX_CONNECTIONS_PER_HOST,
                 max_handshakes: int = MAX_HANDSHAKES,
                 max_handshakes_per_host: int = MAX_HANDSHAKES_PER_HOST,
                 idle_timeout: float = 60.0,
                 handshake_timeout: float = CLIENT_HANDSHAKE_TIMEOUT_S,
                 server_handshake_timeout: float = SERVER_HANDSHAKE_TIMEOUT_S,
                 retry_threshold: int = RETRY_THRESHOLD,
                 buffer_limit: int = TOTAL_BUFFER_LIMIT) -> None:
        self.identity = identity
        self.max_connections = max_connections
        self.max_connections_per_host = max_connections_per_host
        self.max_handshakes_per_host = max_handshakes_per_host
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.server_handshake_timeout = server_handshake_timeout
        self.retry_threshold = retry_threshold
        self.budget = Budget(buffer_limit)
        self.handshakes = Budget(max_handshakes)
        self.bans = BanList(BAN_THRESHOLD, BAN_WINDOW_S, BAN_S)
        self.sock: socket.socket | None = None
        self._cids: dict[bytes, QuicPeerConnection] = {}
        self._conns: set[QuicPeerConnection] = set()
        self._per_host: dict[str, int] = {}
        self._handshakes_per_host: dict[str, int] = {}
        self._retry = QuicRetryTokenHandler()
        self._versions = frozenset(QuicConfiguration(is_client=False).supported_versions)
        self._garbage = RateWindow()
        self._nursery: trio.Nursery | None = None
        self.on_accept: Callable[[QuicPeerConnection], Awaitable[None]] | None = None
        self.dropped_datagrams = 0
        # What the admission and budget rules turned away (for tests, metrics and
        # the rate-limited log); keys are stable names, values only grow.
        self.counters: dict[str, int] = {
            "initials_ignored": 0, "retries_sent": 0, "bad_tokens": 0,
            "handshake_slots_full": 0, "handshake_timeouts": 0, "connections_refused": 0,
            "banned_drops": 0, "bans": 0, "streams_refused": 0, "budget_closes": 0,
            "accept_errors": 0,
        }
        self.failure_log = RateLimitedLog(log)
        # [transport] max_datagram_size: the size the operator vouches for on paths that
        # are not loopback (None: 1200 to them; see datagram_size).
        self.vouched_datagram_size: int | None = None

    def _configuration(self, is_client: bool, peer: tuple[str, int]) -> QuicConfiguration:
        import ssl
        cfg = QuicConfiguration(
            is_client=is_client, alpn_protocols=[ALPN], idle_timeout=self.idle_timeout,
            max_datagram_frame_size=65536, verify_mode=ssl.CERT_NONE,
        )
        cfg.max_datagram_size = datagram_size(peer[0], route_mtu(peer[0]),
                                              self.vouched_datagram_size)
        cfg.certificate = self.identity.certificate
        cfg.private_key = self.identity.private_key
        return cfg

    @property
    def local_address(self) -> tuple[str, int]:
        assert self.sock is not None
        host, port = self.sock.getsockname()[:2]
        return host, port

    def bind(self, host: str, port: int) -> tuple[str, int]:
        """Open and bind the UDP socket now, so start-up errors (port in use, address
        not on this host, bad host name) surface before the agent reports ready.
        Raises ProtocolError with a one-line reason."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except (OSError, UnicodeError) as err:
            raise ProtocolError(f"cannot listen on {host}:{port}: cannot resolve {host!r}: "
                                f"{getattr(err, 'strerror', None) or err}") from None
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.bind(sockaddr)
        except OSError as err:
            sock.close()
            raise ProtocolError(f"cannot listen on {host}:{port}: {err.strerror}") from None
        self.sock = sock
        return self.local_address

    async def serve(self, host: str, port: int, *,
                    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        if self.sock is None:
            self.bind(host, port)
        assert self.sock is not None
        sock = self.sock
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
                metrics.count_bytes("in", len(data))
                try:
                    self._datagram_received(data, addr[:2])
                except Exception as err:  # the receive loop is every peer's: never let one end it
                    self.failure_log.warning("datagram from %s dropped: internal error %s",
                                             addr[0], type(err).__name__)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.sock is not None
        try:
            self.sock.sendto(data, addr)
            metrics.count_bytes("out", len(data))
        except BlockingIOError:
            self.dropped_datagrams += 1  # QUIC loss recovery retransmits
        except OSError:
            # Unreachable, refused, or an address the peer chose that we cannot send
            # to: the packet is lost, as it would be on the network.
            self.dropped_datagrams += 1

    def _datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=8)
        except ValueError:
            return
        conn = self._cids.get(header.destination_cid)
        if conn is None:
            self._admit(data, header, addr)
        else:
            conn.datagram_received(data, addr)

    def _admit(self, data: bytes, header: QuicHeader, addr: tuple[str, int]) -> None:
        """Decide whether an unknown-CID datagram may start a connection.

        Cheap refusals first (not an Initial, banned source, full tables), then
        address validation under load, and finally a connection is kept only if
        aioquic produced an answer to this first datagram: garbage never holds
        a slot.
        """
        host = addr[0]
        if header.packet_type != QuicPacketType.INITIAL or len(data) < 1200 or \
                header.version not in self._versions:
            self.counters["initials_ignored"] += 1
            return
        now = trio.current_time()
        if self.bans.banned(host, now):
            self.counters["banned_drops"] += 1
            return
        if not self._room_for_connection(host, evict=False):
            self.counters["connections_refused"] += 1
            self.failure_log.warning("refusing connection from %s: connection limit", host)
            return
        if not self.handshakes.fits(1) or \
                self._handshakes_per_host.get(host, 0) >= self.max_handshakes_per_host:
            self.counters["handshake_slots_full"] += 1
            self.failure_log.warning("refusing handshake from %s: handshake slots full", host)
            return
        odcid = header.destination_cid
        retry_scid: bytes | None = None
        validated = False
        if header.token:
            try:
                odcid = self._retry.validate_token(address=addr,
                                                   destination_cid=header.destination_cid,
                                                   token=header.token, now=now)
            except ValueError:
                self.counters["bad_tokens"] += 1
                return
            retry_scid = header.destination_cid
            validated = True
        elif self.handshakes.used >= self.retry_threshold or \
                self._garbage.rate(now) >= GARBAGE_INITIALS_PER_S:
            self._send_retry(header, addr, now)
            return
        quic = BoundQuicConnection(configuration=self._configuration(False, addr),
                                   original_destination_connection_id=odcid,
                                   retry_source_connection_id=retry_scid)
        try:
            quic.receive_datagram(data, addr, now)
            answer = quic.datagrams_to_send(now=now)
        except Exception:
            answer = []
        if not answer:  # not a real ClientHello: forget it, it cost one decryption
            self.counters["initials_ignored"] += 1
            self._garbage.hit(now)
            return
        if not self._room_for_connection(host, evict=True):  # only a real one evicts
            self.counters["connections_refused"] += 1
            return
        conn = self._adopt(quic, addr, is_client=False)
        conn.validated = validated
        self._cids[header.destination_cid] = conn
        self._per_host[host] = self._per_host.get(host, 0) + 1
        self.handshakes.take(1)
        self._handshakes_per_host[host] = self._handshakes_per_host.get(host, 0) + 1
        conn._holds_handshake_slot = True
        try:
            conn._process_events()
        except Exception as err:
            conn.close(ERR_PROTOCOL, f"internal error: {type(err).__name__}")
            return
        for datagram, dst in answer:
            self.sendto(datagram, dst)
        assert self._nursery is not None
        self._nursery.start_soon(self._handshake_watchdog, conn)
        if self.on_accept is not None:
            self._nursery.start_soon(self._run_accept, conn)

    def _send_retry(self, header: QuicHeader, addr: tuple[str, int], now: float) -> None:
        assert header.version is not None
        scid = os.urandom(8)
        token = self._retry.create_token(address=addr,
                                         original_destination_connection_id=header.destination_cid,
                                         retry_source_connection_id=scid, now=now)
        self.counters["retries_sent"] += 1
        self.sendto(encode_quic_retry(version=header.version, source_cid=scid,
                                      destination_cid=header.source_cid,
                                      original_destination_cid=header.destination_cid,
                                      retry_token=token), addr)

    def _room_for_connection(self, host: str, *, evict: bool) -> bool:
        """Per-source and total connection limits. When the table is full, a source
        holding many more connections than this one gives up its newest, so one
        address (or a few) cannot lock everybody else out. With `evict` False this
        only says whether there is (or could be made) room: nobody is closed
        before the newcomer's Initial proved to be a real ClientHello."""
        mine = self._per_host.get(host, 0)
        if mine >= self.max_connections_per_host:
            return False
        if len(self._conns) < self.max_connections:
            return True
        heavy = max(self._per_host.items(), key=lambda kv: kv[1], default=None)
        if heavy is None or heavy[1] <= mine + 1:
            return False
        victims = [c for c in self._conns if c.addr[0] == heavy[0] and not c.is_client]
        if not victims:
            return False
        if not evict:
            return True
        newest = max(victims, key=lambda c: c.created_at)
        newest.close(ERR_TOO_MANY, "too many connections from your address")
        return len(self._conns) < self.max_connections

    async def _handshake_watchdog(self, conn: QuicPeerConnection) -> None:
        """An inbound handshake holds a slot for at most server_handshake_timeout."""
        with trio.move_on_after(self.server_handshake_timeout):
            await conn._settled.wait()
        if not conn._settled.is_set():
            self.counters["handshake_timeouts"] += 1
            self.failure_log.warning("handshake from %s timed out", conn.peer_address)
            if conn.validated:
                self._violation(conn.addr[0])
            conn.close(ERR_TOO_MANY, "handshake timeout")

    def _handshake_settled(self, conn: QuicPeerConnection) -> None:
        if conn._holds_handshake_slot:
            conn._holds_handshake_slot = False
            self.handshakes.give(1)
            host = conn.addr[0]
            left = self._handshakes_per_host.get(host, 1) - 1
            if left > 0:
                self._handshakes_per_host[host] = left
            else:
                self._handshakes_per_host.pop(host, None)

    def _violation(self, host: str) -> None:
        """A validated source broke the protocol; enough of that bans it for a while."""
        if self.bans.failure(host, trio.current_time()):
            self.counters["bans"] += 1
            log.warning("ignoring %s for %.0f s: %d protocol violations in %.0f s",
                        host, self.bans.ban_s, self.bans.threshold, self.bans.window_s)
            for conn in list(self._conns):
                if conn.addr[0] == host and not conn.is_client:
                    conn.close(ERR_TOO_MANY, "banned for repeated protocol violations")

    def _make_room(self, n: int, asking: QuicPeerConnection) -> bool:
        """The endpoint-wide buffer budget is exhausted: close the connection holding
        the most (unless that is the one asking, which then pays itself)."""
        while not self.budget.fits(n):
            heavy = max(self._conns, key=lambda c: c.buffered, default=None)
            if heavy is None or heavy is asking or heavy.buffered == 0:
                return False
            self.counters["budget_closes"] += 1
            self.failure_log.warning("closing %s: holds %d buffered bytes, total budget full",
                                     heavy.peer_address, heavy.buffered)
            heavy.close(ERR_TOO_MANY, "buffer budget exceeded")  # returns its budget
        return True

    async def _run_accept(self, conn: QuicPeerConnection) -> None:
        """Fault boundary for one inbound connection: whatever its handler raises
        (the peer's input reached code that failed) closes this connection only."""
        assert self.on_accept is not None
        try:
            await self.on_accept(conn)
        except ConnectionClosed:
            pass
        except Exception as err:
            self.counters["accept_errors"] += 1
            self.failure_log.warning("connection from %s failed: internal error %s: %s",
                                     conn.peer_address, type(err).__name__, str(err)[:120])
            conn.close(ERR_PROTOCOL, f"internal error: {type(err).__name__}")

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
        except (OSError, UnicodeError) as err:
            raise ConnectionClosed(f"cannot resolve {host[:80]}: {err}") from None
        if not infos:
            raise ConnectionClosed(f"cannot resolve {host[:80]}: no address")
        addr: tuple[str, int] = infos[0][4][:2]  # type: ignore[assignment]
        if self.sock is not None and self.sock.family == socket.AF_INET and ":" in addr[0]:
            raise ConnectionClosed(f"cannot reach IPv6 address {addr[0]} from an IPv4 socket")
        quic = BoundQuicConnection(configuration=self._configuration(True, addr))
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
        if conn not in self._conns:
            return
        self._conns.discard(conn)
        if not conn.is_client:
            host = conn.addr[0]
            left = self._per_host.get(host, 1) - 1
            if left > 0:
                self._per_host[host] = left
            else:
                self._per_host.pop(host, None)
        for cid in [c for c, v in self._cids.items() if v is conn]:
            del self._cids[cid]

    @property
    def connections(self) -> set[QuicPeerConnection]:
        return set(self._conns)
