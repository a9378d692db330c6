"""Host functions a workload imports from module "keepmesh" (ABI in specs/keeps.md).

Why a tiny pointer/length ABI: it needs no bindings generator, works from
WAT, C, Rust or Zig, and every pointer the guest hands us is bounds-checked
against its own linear memory before we touch it (a bad pointer traps the
workload, never the agent).

State writes during one invocation go to an overlay and are committed only
when the invocation finishes normally, so a trap, fuel exhaustion or stop
never leaves half an update in durable state.
"""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Callable
from typing import Any

import wasmtime

from .inputs import KeepInputs
from .store import KVState, StateError

MAX_LOG_LINE = 4096
MAX_LOG_LINES = 1000
MAX_INBOX = 256
MAX_OUTBOX = 256
MAX_HOST_MESSAGE = 1024 * 1024
_WORKLOAD_ID = re.compile(rb"^[0-9a-f]{32}\Z")

Router = Callable[[str, str, bytes], bool]
"""(sender id, target workload id, message) -> accepted?"""


class LogBuffer:
    """Bounded ring of (stream, line) so a chatty workload cannot exhaust memory."""

    def __init__(self, lines: list[tuple[str, str]] | None = None) -> None:
        self.lines: collections.deque[tuple[str, str]] = collections.deque(
            lines or [], maxlen=MAX_LOG_LINES)
        # When each line arrived (None for lines restored from disk, which have no time),
        # so `keepmesh logs` can stamp them and `logs -f` can ask for lines after a seq.
        self.times: collections.deque[float | None] = collections.deque(
            [None] * len(self.lines), maxlen=MAX_LOG_LINES)
        self._partial: dict[str, bytes] = {}
        self.seq = 0

    def write(self, stream: str, data: bytes) -> None:
        buf = self._partial.get(stream, b"") + data
        *complete, rest = buf.split(b"\n")
        for line in complete:
            self.add(stream, line)
        if len(rest) > MAX_LOG_LINE:
            self.add(stream, rest)
            rest = b""
        self._partial[stream] = rest

    def flush(self) -> None:
        for stream, rest in list(self._partial.items()):
            if rest:
                self.add(stream, rest)
        self._partial.clear()

    def add(self, stream: str, line: bytes) -> None:
        self.lines.append((stream, line[:MAX_LOG_LINE].decode("utf-8", "replace")))
        self.times.append(time.time())
        self.seq += 1

    def entries(self, tail: int | None = None,
                after: int | None = None) -> list[tuple[int, float | None, str, str]]:
        """(seq, time, stream, line) of buffered lines: those after `after`, the last `tail`.

        seq numbers count lines added since this agent process loaded the keep;
        restored lines get the numbers just below the first new one.
        """
        first = self.seq - len(self.lines) + 1
        out = [(first + i, t, stream, line)
               for i, ((stream, line), t) in enumerate(zip(self.lines, self.times, strict=True))]
        if after is not None:
            out = [e for e in out if e[0] > after]
        if tail is not None:
            out = out[-tail:] if tail > 0 else []
        return out

    def tail(self, n: int | None = None) -> list[tuple[str, str]]:
        items = list(self.lines)
        return items if n is None else items[-n:] if n > 0 else []


class HostContext:
    """Per-keep host state the imported functions act on."""

    def __init__(self, keep_id: str, state: KVState, logs: LogBuffer,
                 router: Router | None = None, inputs: KeepInputs | None = None) -> None:
        self.keep_id = keep_id
        self.state = state
        self.logs = logs
        self.router = router
        self.inputs = inputs or KeepInputs()
        self.inbox: collections.deque[bytes] = collections.deque()
        self.pending: dict[bytes, bytes | None] = {}

    # ------------------------------------------------------------ state txn
    def kv_get(self, key: bytes) -> bytes | None:
        if key in self.pending:
            return self.pending[key]
        return self.state.get(key)

    def kv_put(self, key: bytes, value: bytes | None) -> None:
        if value is not None:
            # Check bounds now so the guest learns at the call, not at commit.
            probe = KVState()
            probe.put(key, value)
        elif not key or len(key) > 256:
            raise StateError("bad key")
        self.pending[key] = value

    def commit(self) -> bool:
        """Apply the overlay; returns True if durable state changed."""
        changed = bool(self.pending)
        try:
            for k, v in self.pending.items():
                if v is None:
                    self.state.delete(k)
                else:
                    self.state.put(k, v)
        finally:
            self.pending.clear()
        return changed

    def rollback(self) -> None:
        self.pending.clear()

    def deliver(self, message: bytes) -> bool:
        if len(self.inbox) >= MAX_INBOX or len(message) > MAX_HOST_MESSAGE:
            return False
        self.inbox.append(message)
        return True


def _memory(caller: wasmtime.Caller) -> wasmtime.Memory:
    mem = caller.get("memory")
    if not isinstance(mem, wasmtime.Memory):
        raise wasmtime.Trap("keepmesh host API needs an exported 'memory'")
    return mem


def _read(caller: wasmtime.Caller, ptr: int, length: int, limit: int) -> bytes:
    mem = _memory(caller)
    if ptr < 0 or length < 0 or length > limit or ptr + length > mem.data_len(caller):
        raise wasmtime.Trap(f"keepmesh: guest buffer {ptr}+{length} out of bounds")
    return bytes(mem.read(caller, ptr, ptr + length))


def _write(caller: wasmtime.Caller, ptr: int, data: bytes) -> None:
    mem = _memory(caller)
    if ptr < 0 or ptr + len(data) > mem.data_len(caller):
        raise wasmtime.Trap(f"keepmesh: guest buffer {ptr}+{len(data)} out of bounds")
    mem.write(caller, data, ptr)


def define_host_api(linker: wasmtime.Linker, ctx: HostContext) -> None:
    i32 = wasmtime.ValType.i32()

    def ft(params: int, results: int) -> wasmtime.FuncType:
        return wasmtime.FuncType([i32] * params, [i32] * results)

    def log(caller: wasmtime.Caller, ptr: int, length: int) -> None:
        ctx.logs.add("log", _read(caller, ptr, length, MAX_LOG_LINE))

    def kv_get(caller: wasmtime.Caller, kptr: int, klen: int, vptr: int, vcap: int) -> int:
        value = ctx.kv_get(_read(caller, kptr, klen, 256))
        if value is None:
            return -1
        if len(value) <= vcap:
            _write(caller, vptr, value)
        return len(value)

    def kv_put(caller: wasmtime.Caller, kptr: int, klen: int, vptr: int, vlen: int) -> int:
        key = _read(caller, kptr, klen, 256)
        value = _read(caller, vptr, vlen, 64 * 1024)
        try:
            ctx.kv_put(key, value)
        except StateError:
            return -1
        return 0

    def kv_del(caller: wasmtime.Caller, kptr: int, klen: int) -> int:
        key = _read(caller, kptr, klen, 256)
        existed = ctx.kv_get(key) is not None
        try:
            ctx.kv_put(key, None)
        except StateError:
            return -1
        return 1 if existed else 0

    def send(caller: wasmtime.Caller, iptr: int, ilen: int, mptr: int, mlen: int) -> int:
        target = _read(caller, iptr, ilen, 64)
        message = _read(caller, mptr, mlen, MAX_HOST_MESSAGE)
        if not _WORKLOAD_ID.match(target) or ctx.router is None:
            return -1
        return 0 if ctx.router(ctx.keep_id, target.decode(), message) else -1

    def recv(caller: wasmtime.Caller, ptr: int, cap: int) -> int:
        if not ctx.inbox:
            return -1
        head = ctx.inbox[0]
        if len(head) <= cap:
            _write(caller, ptr, head)
            ctx.inbox.popleft()
        return len(head)

    def self_id(caller: wasmtime.Caller, ptr: int, cap: int) -> int:
        ident = ctx.keep_id.encode()
        if len(ident) <= cap:
            _write(caller, ptr, ident)
        return len(ident)

    def secret_get(caller: wasmtime.Caller, nptr: int, nlen: int, vptr: int, vcap: int) -> int:
        # The name is read, never echoed back in an error; the value only goes to the guest.
        name = _read(caller, nptr, nlen, 64)
        value = ctx.inputs.secret(name.decode("utf-8", "replace"))
        if value is None:
            return -1
        if len(value) <= vcap:
            _write(caller, vptr, value)
        return len(value)

    def data_read(caller: wasmtime.Caller, nptr: int, nlen: int, offset: int, vptr: int,
                  vcap: int) -> int:
        name = _read(caller, nptr, nlen, 64)
        value = ctx.inputs.data_file(name.decode("utf-8", "replace"))
        if value is None or offset < 0:
            return -1
        chunk = value[offset:offset + max(0, vcap)]
        if chunk:
            _write(caller, vptr, chunk)
        return len(value)

    funcs: dict[str, tuple[wasmtime.FuncType, Callable[..., Any]]] = {
        "log": (ft(2, 0), log),
        "kv_get": (ft(4, 1), kv_get),
        "kv_put": (ft(4, 1), kv_put),
        "kv_del": (ft(2, 1), kv_del),
        "send": (ft(4, 1), send),
        "recv": (ft(2, 1), recv),
        "id": (ft(2, 1), self_id),
        "secret_get": (ft(4, 1), secret_get),
        "data_read": (ft(5, 1), data_read),
    }
    for name, (ty, fn) in funcs.items():
        linker.define_func("keepmesh", name, ty, fn, access_caller=True)
