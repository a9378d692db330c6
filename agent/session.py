"""Glue between a QUIC connection and the sans-IO attested channel.

Only shuttles: control-stream bytes into the channel, its messages out, and
evidence requests to the local attester. On any failure the connection is
closed with ERR_CHANNEL_REJECTED and the one-line reason; the caller logs it.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

import trio
from keepmesh.agent import metrics
from keepmesh.agent.attester import LocalAttester
from keepmesh.agent.identity import Identity, fingerprint
from keepmesh.agent.transport.quic import (
    ERR_CHANNEL_REJECTED,
    ERR_PROTOCOL,
    ConnectionClosed,
    QuicPeerConnection,
    QuicStream,
)
from keepmesh.protocol.channel import (
    CHANNEL_MESSAGES,
    AttestedChannel,
    ChannelAccept,
    ChannelConfig,
    ChannelReject,
    Established,
    EvidenceCache,
    EvidenceNeeded,
    Failed,
    PeerInfo,
)
from keepmesh.protocol.errors import ProtocolError
from keepmesh.protocol.wire import FrameDecoder, encode_frame

log = logging.getLogger("keepmesh.channel")
CONTROL_FRAME_LIMIT = 256 * 1024
CONTROL_STREAM_ID = 0  # the first client-initiated bidirectional stream
CHANNEL_TIMEOUT_S = 15.0


class ChannelFailed(Exception):
    """The attested channel was not established; str() is the one-line reason.

    `kind` is protocol.channel.Failed.kind ("verification", "policy", "protocol")
    or "transport" (timeout, connection lost); `local` is False when the peer
    rejected us. Callers branch on these, never on the text.
    """

    def __init__(self, reason: str, kind: str = "transport", local: bool = True) -> None:
        super().__init__(reason)
        self.kind = kind
        self.local = local


@dataclass
class Session:
    """An attested connection: the peer is known, verified and bound to this session."""

    conn: QuicPeerConnection
    peer: PeerInfo
    control: QuicStream
    address: str  # where the peer can be dialled (agents) or where it came from

    @property
    def closed(self) -> trio.Event:
        event: trio.Event = self.conn.closed
        return event


async def establish(conn: QuicPeerConnection, *, identity: Identity,
                    attester: LocalAttester | None, config: ChannelConfig,
                    cache: EvidenceCache, rng: random.Random,
                    timeout: float = CHANNEL_TIMEOUT_S) -> Session:
    """Run the channel on `conn` (TLS handshake already done). Raises ChannelFailed.

    Every outcome is counted (agent/metrics.py) and logged at debug (`-v`).
    """
    try:
        session = await _establish_bounded(conn, identity, attester, config, cache, rng,
                                           timeout)
    except ChannelFailed as err:
        outcome = err.kind if err.local else "peer_rejected"
        metrics.count_handshake(outcome)
        log.debug("channel with %s failed (%s): %s", conn.peer_address, outcome, err,
                  extra={"event": "channel.failed",
                         "fields": {"peer": conn.peer_address, "outcome": outcome}})
        raise
    metrics.count_handshake("ok")
    log.debug("channel with %s established: %s %s", conn.peer_address, session.peer.role,
              fingerprint(session.peer.identity),
              extra={"event": "channel.established",
                     "fields": {"peer": conn.peer_address, "role": session.peer.role}})
    return session


async def _establish_bounded(conn: QuicPeerConnection, identity: Identity,
                             attester: LocalAttester | None, config: ChannelConfig,
                             cache: EvidenceCache, rng: random.Random,
                             timeout: float) -> Session:
    try:
        with trio.fail_after(timeout):
            return await _establish(conn, identity, attester, config, cache, rng)
    except trio.TooSlowError:
        conn.close(ERR_CHANNEL_REJECTED, "attested channel timed out")
        raise ChannelFailed("attested channel timed out") from None
    except ConnectionClosed as err:
        conn.close(ERR_PROTOCOL, str(err))
        raise ChannelFailed(str(err)) from None
    except ChannelFailed:
        raise
    except Exception as err:
        # Fault boundary: the peer's bytes reached code that raised something
        # undeclared (a verifier bug, a library error). That fails this channel
        # only; it must never reach the accept loop.
        reason = f"internal error during channel setup: {type(err).__name__}"
        conn.close(ERR_PROTOCOL, reason)
        raise ChannelFailed(reason, "protocol") from None


async def _establish(conn: QuicPeerConnection, identity: Identity,
                     attester: LocalAttester | None, config: ChannelConfig,
                     cache: EvidenceCache, rng: random.Random) -> Session:
    await conn.wait_handshake()
    assert conn.peer_identity is not None
    if conn.is_client:
        stream = conn.open_stream()
    else:
        stream = await conn.accept_stream()
        if stream.stream_id != CONTROL_STREAM_ID:
            # The control stream is exactly stream 0 (specs/channel.md): a peer that
            # opens another first is not speaking keepmesh.
            conn.close(ERR_PROTOCOL, f"first stream is {stream.stream_id}, not the control "
                                     f"stream {CONTROL_STREAM_ID}")
            raise ChannelFailed("peer did not open the control stream first")
    chan = AttestedChannel(initiator=conn.is_client, local_identity=identity.public_bytes,
                           sign=identity.sign, peer_identity=conn.peer_identity,
                           exporter=conn.exporter(), config=config, cache=cache, rng=rng)
    decoder = FrameDecoder(CONTROL_FRAME_LIMIT, expect=CHANNEL_MESSAGES)
    chan.start(time.time())

    def flush() -> None:
        msgs = chan.messages_to_send()
        if msgs:
            stream.send(b"".join(encode_frame(m, CONTROL_FRAME_LIMIT) for m in msgs))

    flush()
    while True:
        while (event := chan.next_event()) is not None:
            if isinstance(event, EvidenceNeeded):
                if attester is None:
                    chan.abort("this side has no TEE and cannot present evidence")
                else:
                    try:
                        evidence, issued_at = await attester.evidence(event.nonce)
                    except Exception as err:  # a TEE backend failing must not kill the agent
                        chan.abort(f"could not produce evidence: {err}")
                    else:
                        chan.provide_evidence(evidence, issued_at, time.time())
                flush()
            elif isinstance(event, Established):
                flush()
                return Session(conn=conn, peer=event.peer, control=stream,
                               address=conn.peer_address)
            elif isinstance(event, Failed):
                flush()
                conn.close(ERR_CHANNEL_REJECTED, event.reason)
                raise ChannelFailed(event.reason, event.kind, event.local)
        data = await stream.receive_some(fail_if_stopped=True)
        if not data:
            conn.close(ERR_PROTOCOL, "control stream closed during channel setup")
            raise ChannelFailed("control stream closed during channel setup")
        try:
            for msg in decoder.feed(data):
                chan.receive(msg, time.time())
        except ProtocolError as err:
            chan.abort(err.reason)
        flush()


async def watch_control(session: Session) -> None:
    """After establishment the control stream only carries accept or reject.

    A late `chan.reject` (the peer failed us after we were established) or
    anything malformed closes the connection; the buffer is bounded by the
    frame limit, so a chatty peer cannot grow it.
    """
    decoder = FrameDecoder(CONTROL_FRAME_LIMIT, expect=CHANNEL_MESSAGES)
    conn = session.conn
    try:
        while True:
            data = await session.control.receive_some()
            if not data:
                return
            for msg in decoder.feed(data):
                if isinstance(msg, ChannelReject):
                    conn.close(ERR_CHANNEL_REJECTED, f"peer rejected us: {msg.reason}")
                    return
                if not isinstance(msg, ChannelAccept):
                    conn.close(ERR_PROTOCOL, f"unexpected {msg.TYPE} after establishment")
                    return
    except ProtocolError as err:
        conn.close(ERR_PROTOCOL, err.reason)
    except ConnectionClosed:
        return
    except Exception as err:  # fault boundary: this connection only
        conn.close(ERR_PROTOCOL, f"internal error on control stream: {type(err).__name__}")
