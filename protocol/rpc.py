"""Request/response records for agent RPC: one QUIC stream per call.

A call is one `rpc.request` frame from the caller, answered by one
`rpc.response` frame; the body is a msgpack map validated by the method's own
typed records. Keeping the envelope this small lets a hostile caller cost us
at most one bounded frame per stream.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, ClassVar

import msgpack

from .errors import ProtocolError
from .wire import Message, Spec, b, flag, message, s

MAX_BODY = 24 * 1024 * 1024  # big enough for a 16 MiB sealed package plus metadata
METHOD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
# Why an error code beside the text: a client must act on *what kind* of
# failure it got (ask for another key, retry, report a bug) without parsing
# prose, which changes between versions. specs/wire.md lists them.
ERROR_CODES = ("invalid", "not_found", "forbidden", "unknown_method", "internal", "busy",
               "stale_epoch", "unavailable")


class RpcDenied(ProtocolError):
    """The caller is authenticated but not allowed to do this (code `forbidden`)."""

    code = "forbidden"


class RpcNotFound(ProtocolError):
    """The named object does not exist *for this caller* (code `not_found`).

    Also used when it exists but belongs to someone else, so a stranger
    cannot probe which keeps an agent runs.
    """

    code = "not_found"


class RpcUnavailable(ProtocolError):
    """The object exists but the member that holds it is down (dead or left in
    membership, or unreachable) and no other copy can take the request (code
    `unavailable`). Why a code of its own: `busy` says try again soon and `not_found`
    says wrong key, while this says where it ran is gone; a caller should look at where
    it runs now (`keepmesh keeps`) rather than retry blindly, since a request that was
    in flight when the member went down may have been served."""

    code = "unavailable"


def error_code(err: ProtocolError) -> str:
    """The wire code for a handler's ProtocolError: its class's, else `invalid`."""
    code = getattr(err, "code", "invalid")
    return code if code in ERROR_CODES else "invalid"


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
        "ok": flag(), "body": b(MAX_BODY), "error": s(300, optional=True),
        "code": s(32, optional=True)}  # unknown codes (newer peers) read as "invalid"
    ok: bool
    body: bytes
    error: str | None = None
    code: str | None = None


# Frames above LARGE_FRAME are admitted only after their method was read from
# the head of the frame and found callable by this caller, and their length
# reserved against the connection's buffer budget (specs/wire.md "Limits"):
# a declared length is not a licence to buffer it.
LARGE_FRAME = 64 * 1024
# Body limits for methods known to take small bodies; others may use MAX_BODY.
SMALL_BODY = 64 * 1024
MESSAGE_BODY = 1024 * 1024 + 64 * 1024  # a 1 MiB keep message plus its fields
# Methods whose one record is bounded by its schema well below MAX_BODY: the limit is
# the largest body that schema allows (wire.max_fields_size, checked in
# tests/test_wire.py), rounded up. keeps.place {deployment}: a signed Deployment without
# its package, at most 1,663,056 bytes (env and args of 4-byte UTF-8 characters);
# keeps.secret_set {update}: one SecretUpdate, a 64 KiB secret sealed, 66,436 bytes.
PLACE_BODY = 1024 * 1024 + 640 * 1024
SECRET_SET_BODY = 68 * 1024
METHOD_BODY_LIMITS: dict[str, int] = {
    "agent.status": SMALL_BODY, "agent.peers": SMALL_BODY, "members.list": SMALL_BODY,
    "agent.join": SMALL_BODY, "agent.leave": SMALL_BODY, "keeps.list": SMALL_BODY,
    "keeps.logs": SMALL_BODY, "keeps.stop": SMALL_BODY,
    "migrate.where": SMALL_BODY, "agent.drain": SMALL_BODY,  # bodies `{}`, like agent.status
    "migrate.attest": SMALL_BODY,  # {nonce: 32 B}, at most 52 bytes
    "keeps.place": PLACE_BODY, "keeps.secret_set": SECRET_SET_BODY,
    "keeps.call": MESSAGE_BODY, "keeps.deliver": MESSAGE_BODY,
    "swim.stream": 4 * 1024 * 1024 + 64 * 1024,
    # agents' ordered lane (specs/migration.md §10): one record, or a batch of <= 8 MiB
    "migrate.msg": 896 * 1024, "migrate.batch": 8 * 1024 * 1024 + 64 * 1024,
}
# The request envelope around the body: [1, "rpc.request", {"method": m, "body": bin32}].
ENVELOPE = 128
# How many payload bytes are enough to read the method when it precedes the body.
METHOD_HEAD = 128


def body_limit(method: str) -> int:
    """Largest body `method` accepts; the frame limit is this plus ENVELOPE."""
    return METHOD_BODY_LIMITS.get(method, MAX_BODY)


def request_method_hint(head: bytes) -> str | None:
    """The method named by an `rpc.request` payload, read from its first bytes.

    Returns None unless the payload is [1, "rpc.request", {..., "method": str,
    ...}] with `method` before `body` and complete within `head`; the full
    decode still validates everything. Never raises (the input is hostile).
    """
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(head), 1),
                                max_str_len=METHOD_HEAD, max_bin_len=METHOD_HEAD,
                                max_array_len=3, max_map_len=8)
    try:
        unpacker.feed(head)
        if unpacker.read_array_header() != 3 or unpacker.unpack() != 1 or \
                unpacker.unpack() != RpcRequest.TYPE:
            return None
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key == "method":
                value = unpacker.unpack()
                return value if isinstance(value, str) else None
            if key == "body":
                return None
            unpacker.skip()
    except Exception:  # msgpack raises many types on partial or hostile input
        return None
    return None


def refuse_fields(method: str, body: dict[str, Any], known: Collection[str] = ()) -> None:
    """Any field outside `known` (for a method whose body is `{}`: any field) is
    `invalid`, as every method refuses fields it does not know (a misspelt option must
    not be silently ignored)."""
    unknown = sorted(str(k) for k in body if k not in known)
    if unknown:
        raise ProtocolError(f"{method}: unknown field {unknown[0][:64]!r}")


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
