"""Serving and calling agent RPC over an attested session.

Server side: each stream the peer opens carries one request; the method's
handler gets an RpcContext (who is calling, with what evidence) and the body.
Handlers raise ProtocolError for bad input; that becomes an error response
and the connection stays up.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from keepmesh.agent.session import Session
from keepmesh.agent.transport.quic import ConnectionClosed, QuicStream
from keepmesh.protocol.attestation.evidence import VerifiedEvidence
from keepmesh.protocol.errors import ProtocolError
from keepmesh.protocol.rpc import MAX_BODY, RpcRequest, RpcResponse, pack_body, unpack_body
from keepmesh.protocol.wire import FrameDecoder, encode_frame

log = logging.getLogger("keepmesh.rpc")
FRAME_LIMIT = MAX_BODY + 1024
MAX_CONCURRENT_CALLS = 32
CALL_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class RpcContext:
    peer_key: bytes
    role: str  # "agent" | "client"
    evidence: VerifiedEvidence | None
    session: Session


Handler = Callable[[RpcContext, dict[str, Any]], Awaitable[dict[str, Any]]]


class RpcError(Exception):
    """The remote side answered with an error; str() is its one-line reason."""


async def _read_one(stream: QuicStream, expect: type) -> Any:
    decoder = FrameDecoder(FRAME_LIMIT, expect=(expect,))
    while True:
        data = await stream.receive_some(1 << 20)
        if not data:
            raise ProtocolError("stream ended before a complete frame")
        for msg in decoder.feed(data):
            return msg


async def serve_session(session: Session, methods: dict[str, Handler]) -> None:
    """Answer the peer's calls until the connection closes."""
    limiter = trio.CapacityLimiter(MAX_CONCURRENT_CALLS)
    ctx = RpcContext(peer_key=session.peer.identity, role=session.peer.role,
                     evidence=session.peer.evidence, session=session)
    async with trio.open_nursery() as nursery:
        while True:
            try:
                stream = await session.conn.accept_stream()
            except ConnectionClosed:
                break
            nursery.start_soon(_serve_stream, ctx, stream, methods, limiter)


async def _serve_stream(ctx: RpcContext, stream: QuicStream, methods: dict[str, Handler],
                        limiter: trio.CapacityLimiter) -> None:
    async with limiter:
        try:
            request: RpcRequest = await _read_one(stream, RpcRequest)
        except ProtocolError as err:
            log.warning("rpc from %s: %s", ctx.session.address, err.reason)
            _respond(stream, RpcResponse(ok=False, body=b"", error=err.reason))
            return
        except ConnectionClosed:
            return
        handler = methods.get(request.method)
        if handler is None:
            _respond(stream, RpcResponse(ok=False, body=b"",
                                         error=f"unknown method {request.method!r}"))
            return
        try:
            body = unpack_body(request.body)
            result = await handler(ctx, body)
            response = RpcResponse(ok=True, body=pack_body(result))
        except ProtocolError as err:
            response = RpcResponse(ok=False, body=b"", error=err.reason[:300])
        except ConnectionClosed:
            return
        except Exception as err:  # a handler bug fails this call, not the agent
            log.exception("rpc %s failed", request.method)
            response = RpcResponse(ok=False, body=b"",
                                   error=f"internal error in {request.method}: "
                                         f"{type(err).__name__}")
        _respond(stream, response)


def _respond(stream: QuicStream, response: RpcResponse) -> None:
    try:
        stream.send(encode_frame(response, FRAME_LIMIT), end=True)
    except (ConnectionClosed, ProtocolError):
        pass


async def call(session: Session, method: str, body: dict[str, Any],
               timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
    """Call `method` on the peer; raises RpcError on an error response."""
    stream = session.conn.open_stream()
    stream.send(encode_frame(RpcRequest(method=method, body=pack_body(body)), FRAME_LIMIT),
                end=True)
    try:
        with trio.fail_after(timeout):
            response: RpcResponse = await _read_one(stream, RpcResponse)
    except trio.TooSlowError:
        raise RpcError(f"{method}: no answer within {timeout:g}s") from None
    except ProtocolError as err:
        raise RpcError(f"{method}: bad response: {err.reason}") from None
    except ConnectionClosed as err:
        raise RpcError(f"{method}: {err}") from None
    if not response.ok:
        raise RpcError(response.error or "error")
    try:
        return unpack_body(response.body)
    except ProtocolError as err:
        raise RpcError(f"{method}: bad response body: {err.reason}") from None
