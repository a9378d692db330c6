"""Request/response records for agent RPC: one QUIC stream per call.

A call is one `rpc.request` frame from the caller, answered by one
`rpc.response` frame; the body is a msgpack map validated by the method's own
typed records. Keeping the envelope this small lets a hostile caller cost us
at most one bounded frame per stream.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgpack

from .errors import ProtocolError
from .wire import Message, Spec, b, flag, message, s

MAX_BODY = 24 * 1024 * 1024  # big enough for a 16 MiB sealed package plus metadata
METHOD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")


@message
class RpcRequest(Message):
    TYPE: ClassVar[str] = "rpc.request"
    SCHEMA: ClassVar[dict[str, Spec]] = {"method": s(64), "body": b(MAX_BODY)}
    method: str
    body: bytes

    def validate(self) -> None:
        if not self.method or not set(self.method) <= METHOD_CHARS:
            raise ProtocolError(f"rpc.request: bad method name {self.method[:40]!r}")


@message
class RpcResponse(Message):
    TYPE: ClassVar[str] = "rpc.response"
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "ok": flag(), "body": b(MAX_BODY), "error": s(300, optional=True)}
    ok: bool
    body: bytes
    error: str | None = None


def pack_body(body: dict[str, Any]) -> bytes:
    out: bytes = msgpack.packb(body, use_bin_type=True)
    return out


def unpack_body(data: bytes) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=MAX_BODY,
                              max_str_len=MAX_BODY)
    except Exception as err:
        raise ProtocolError(f"rpc body is not msgpack: {type(err).__name__}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("rpc body is not a map")
    return obj
