"""Serving and calling agent RPC over an attested session.

Server side: each stream the peer opens carries one request; the method's
handler gets an RpcContext (who is calling, with what evidence) and the body.
Handlers raise ProtocolError for bad input; that becomes an error response
and the connection stays up.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from keepmesh.agent import metrics
from keepmesh.agent.session import Session
from keepmesh.agent.transport.limits import RateLimitedLog
from keepmesh.agent.transport.quic import ERR_PROTOCOL, ConnectionClosed, QuicStream
from keepmesh.protocol.attestation.evidence import VerifiedEvidence
from keepmesh.protocol.errors import ProtocolError
from keepmesh.protocol.rpc import (
    ENVELOPE,
    ERROR_CODES,
    LARGE_FRAME,
    MAX_BODY,
    METHOD_HEAD,
    RpcRequest,
    RpcResponse,
    body_limit,
    error_code,
    pack_body,
    request_method_hint,
    unpack_body,
)
from keepmesh.protocol.wire import Message, decode_payload, encode_frame

log = logging.getLogger("keepmesh.rpc")
FRAME_LIMIT = MAX_BODY + 1024
MAX_CONCURRENT_CALLS = 32
CALL_TIMEOUT_S = 120.0
# A request must arrive in full within this (a slow or stalled sender holds a call
# slot and buffer only this long); 24 MiB at 4 MB/s still fits.
REQUEST_READ_TIMEOUT_S = 10.0
# A large admitted request gets longer, at this floor rate: a 16 MiB deploy over a slow edge
# link must not fail at 10 s, while a slow sender still holds its reservation for a bounded time.
MIN_REQUEST_RATE_BPS = 256 * 1024
_LEN = struct.Struct(">I")
_fail_log = RateLimitedLog(log)


@dataclass(frozen=True)
class RpcContext:
    peer_key: bytes
    role: str  # "agent" | "client"
    evidence: VerifiedEvidence | None
    session: Session


Handler = Callable[[RpcContext, dict[str, Any]], Awaitable[dict[str, Any]]]


class RpcError(Exception):
    """The remote side answered with an error; str() is its one-line reason.

    `code` is the typed kind (protocol.rpc.ERROR_CODES; `internal` for local
    failures such as a timeout): callers branch on it, never on the text.
    """

    def __init__(self, reason: str, code: str = "internal", method: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.method = method


class _Refused(Exception):
    """A request turned away before it was read in full (code is an ERROR_CODES name)."""

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


Admit = Callable[[int, bytes], None]


def _admit_any(n: int, head: bytes) -> None:
    return None


async def _read_frame(stream: QuicStream, expect: type[Message], admit: Admit,
                      limit: int = FRAME_LIMIT) -> tuple[Any, int]:
    """Read exactly one frame from `stream`: (message, bytes reserved for it).

    A frame above LARGE_FRAME is buffered only after `admit(length, head)`
    accepted it (raises _Refused otherwise) and its length was reserved from
    the connection's buffer budget; the caller gives the reservation back
    (`stream.conn.release`) when it no longer holds the message. Data after
    the frame is a protocol error: a stream carries one frame.
    """
    buf = bytearray()
    n: int | None = None
    reserved = 0
    try:
        while True:
            if n is None and len(buf) >= _LEN.size:
                (n,) = _LEN.unpack_from(buf)
                if n > limit:
                    raise _Refused(f"frame of {n} bytes exceeds limit {limit}", "invalid")
            if n is not None and n > LARGE_FRAME and not reserved and \
                    len(buf) >= _LEN.size + min(n, METHOD_HEAD):
                admit(n, bytes(buf[_LEN.size:_LEN.size + METHOD_HEAD]))
                if not stream.conn.reserve(n):
                    raise _Refused("agent busy: buffer budget exhausted, retry later", "busy")
                reserved = n
            if n is not None:
                if len(buf) > _LEN.size + n:
                    raise ProtocolError("data after the frame (one frame per stream)")
                if len(buf) == _LEN.size + n:
                    msg = decode_payload(memoryview(buf)[_LEN.size:], n, expect=(expect,))
                    return msg, reserved
            want = (1 << 20) if reserved else LARGE_FRAME
            data = await stream.receive_some(want)
            if not data:
                raise ProtocolError("stream ended before a complete frame")
            buf += data
    except BaseException:
        if reserved:
            stream.conn.release(reserved)
        raise


async def serve_session(session: Session, methods: dict[str, Handler]) -> None:
    """Answer the peer's calls until the connection closes.

    A stream is accepted only when one of MAX_CONCURRENT_CALLS call slots is
    free; until then it waits in the transport's bounded queue (beyond which
    the transport resets new streams). Fault boundary: whatever escapes closes
    this connection, never the agent.
    """
    slots = trio.Semaphore(MAX_CONCURRENT_CALLS)
    ctx = RpcContext(peer_key=session.peer.identity, role=session.peer.role,
                     evidence=session.peer.evidence, session=session)
    try:
        async with trio.open_nursery() as nursery:
            while True:
                await slots.acquire()
                try:
                    stream = await session.conn.accept_stream()
                except ConnectionClosed:
                    break
                nursery.start_soon(_serve_stream, ctx, stream, methods, slots)
    except Exception as err:
        _fail_log.warning("rpc session with %s failed: internal error %s", session.address,
                          type(err).__name__)
        session.conn.close(ERR_PROTOCOL, f"internal error: {type(err).__name__}")


async def _serve_stream(ctx: RpcContext, stream: QuicStream, methods: dict[str, Handler],
                        slots: trio.Semaphore) -> None:
    """One call; a fault boundary: any failure ends this stream with a logged reason."""
    try:
        await _serve_call(ctx, stream, methods)
    except ConnectionClosed:
        pass
    except Exception as err:
        _fail_log.warning("rpc stream from %s failed: internal error %s: %s",
                          ctx.session.address, type(err).__name__, str(err)[:120])
        stream.abort(f"internal error: {type(err).__name__}")
    finally:
        slots.release()


async def _serve_call(ctx: RpcContext, stream: QuicStream, methods: dict[str, Handler]) -> None:
    read_scope = trio.CancelScope(deadline=trio.current_time() + REQUEST_READ_TIMEOUT_S)

    def admit(n: int, head: bytes) -> None:
        method = request_method_hint(head)
        if method is None:
            raise _Refused(f"a request over {LARGE_FRAME} bytes must name its method "
                           "before its body", "invalid")
        if method not in methods:
            raise _Refused(f"unknown method {method[:64]!r}", "unknown_method")
        limit = body_limit(method) + ENVELOPE
        if n > limit:
            raise _Refused(f"{method}: request of {n} bytes exceeds its limit {limit}",
                           "invalid")
        read_scope.deadline += n / MIN_REQUEST_RATE_BPS

    reserved = 0
    try:
        try:
            request: RpcRequest | None = None
            with read_scope:
                request, reserved = await _read_frame(stream, RpcRequest, admit)
            if request is None:
                _refuse(stream, "request not received in time", "invalid")
                return
        except _Refused as err:
            _refuse(stream, err.reason, err.code)
            return
        except ProtocolError as err:
            _fail_log.warning("rpc from %s: %s", ctx.session.address, err.reason)
            _refuse(stream, err.reason, "invalid")
            return
        method = request.method
        handler = methods.get(method)
        if handler is None:
            metrics.count_rpc(method, "unknown_method")
            _respond(stream, RpcResponse(ok=False, body=b"", error=f"unknown method {method!r}",
                                         code="unknown_method"))
            return
        if len(request.body) > body_limit(method):
            _respond(stream, RpcResponse(ok=False, body=b"", code="invalid",
                                         error=f"{method}: body exceeds its limit"))
            return
        try:
            body = unpack_body(request.body)
            del request  # the decoded body is all we keep of a possibly large frame
            result = await handler(ctx, body)
            response = RpcResponse(ok=True, body=pack_body(result))
        except ProtocolError as err:
            response = RpcResponse(ok=False, body=b"", error=err.reason[:300],
                                   code=error_code(err))
        except ConnectionClosed:
            return
        except Exception as err:  # a handler bug fails this call, not the agent
            log.exception("rpc %s failed", method)
            response = RpcResponse(ok=False, body=b"",
                                   error=f"internal error in {method}: "
                                         f"{type(err).__name__}", code="internal")
        outcome = "ok" if response.ok else (response.code or "invalid")
        metrics.count_rpc(method, outcome)
        log.debug("rpc %s from %s: %s", method, ctx.session.address, outcome,
                  extra={"event": "rpc.served",
                         "fields": {"method": method, "outcome": outcome}})
        _respond(stream, response)
    finally:
        if reserved:
            stream.conn.release(reserved)


def _refuse(stream: QuicStream, reason: str, code: str) -> None:
    """Answer with an error and stop reading: the peer need not send the rest."""
    _respond(stream, RpcResponse(ok=False, body=b"", error=reason[:300], code=code))
    stream.stop_reading(reason)


def _respond(stream: QuicStream, response: RpcResponse) -> None:
    try:
        stream.send(encode_frame(response, FRAME_LIMIT), end=True)
    except ProtocolError as err:  # the result does not fit a frame: say so instead
        _respond(stream, RpcResponse(ok=False, body=b"", error=err.reason[:300],
                                     code="internal"))
    except ConnectionClosed:
        pass


async def call(session: Session, method: str, body: dict[str, Any],
               timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
    """Call `method` on the peer; raises RpcError on an error response (and only RpcError:
    a peer that stops or resets the stream, or sends a bad frame, is an error too)."""
    reserved = 0
    stream: QuicStream | None = None
    response: RpcResponse
    try:
        frame = encode_frame(RpcRequest(method=method, body=pack_body(body)), FRAME_LIMIT)
        with trio.fail_after(timeout):
            stream = session.conn.open_stream()
            stream.send(frame, end=True)
            del frame
            response, reserved = await _read_frame(stream, RpcResponse, _admit_any)
    except trio.TooSlowError:
        raise RpcError(f"{method}: no answer within {timeout:g}s", "busy", method) from None
    except _Refused as err:
        raise RpcError(f"{method}: response refused: {err.reason}", err.code, method) from None
    except ProtocolError as err:
        raise RpcError(f"{method}: bad response: {err.reason}", "internal", method) from None
    except ConnectionClosed as err:
        raise RpcError(f"{method}: {err}", "internal", method) from None
    finally:
        if reserved and stream is not None:
            stream.conn.release(reserved)
    if not response.ok:
        code = response.code if response.code in ERROR_CODES else "invalid"
        raise RpcError(response.error or "error", code or "invalid", method)
    try:
        result: dict[str, Any] = unpack_body(response.body)
    except ProtocolError as err:
        raise RpcError(f"{method}: bad response body: {err.reason}", "internal",
                       method) from None
    return result
