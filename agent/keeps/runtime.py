"""One keep = one wasmtime Engine/Store with memory, fuel and wall-clock limits.

Why a thread per invocation (trio.to_thread.run_sync) and not a process per
keep: wasmtime traps, fuel exhaustion, epoch interruption and memory-limit
refusals all surface as Python exceptions and leave the host process intact,
instantiation costs ~33 µs against ~180 ms and ~40 MB for a fresh Python
process (NOTES-platform.md), and trio stays responsive while wasmtime runs
in a worker thread. What a thread does not contain is a bug in wasmtime
itself (a segfault would take the agent down); that is the residual risk,
documented in specs/keeps.md.

Each keep has its own Engine so that bumping its epoch (timeout or stop)
interrupts only that keep. A lock serialises invocations, because a Store is
not thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import wasmtime
from keepmesh.protocol.deployment import MAX_MESSAGE, Manifest

from .hostapi import HostContext, define_host_api

PAGE = 65536
PAUSE_WAIT_S = 60.0
"""A call waits at most this long for a paused (moving) keep before failing."""


class KeepError(Exception):
    """An invocation ended abnormally; `status` is the keep's new terminal status."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def _first_line(err: BaseException) -> str:
    """The cause of a wasmtime error, without its multi-line backtrace."""
    text = str(err)
    if "Caused by:" in text:
        text = text.split("Caused by:", 1)[1]
    for line in text.splitlines():
        line = line.strip()
        if line and not line.lower().startswith(("error while executing", "wasm backtrace")) \
                and not line[:1].isdigit():
            return line.removeprefix("wasm trap: ")[:200]
    return type(err).__name__


TERMINAL_PREFIXES = ("exited", "trapped", "out-of-fuel", "out-of-memory", "timeout",
                     "stopped", "failed", "interrupted")


def is_terminal(status: str) -> bool:
    return status.startswith(TERMINAL_PREFIXES)


class KeepRuntime:
    """Runs one module; all methods but `stop` must be called from a worker thread."""

    def __init__(self, keep_id: str, manifest: Manifest, module_bytes: bytes,
                 ctx: HostContext) -> None:
        self.keep_id = keep_id
        self.manifest = manifest
        self.ctx = ctx
        config = wasmtime.Config()
        config.consume_fuel = True
        config.epoch_interruption = True
        self.engine = wasmtime.Engine(config)
        try:
            self.module = wasmtime.Module(self.engine, module_bytes)
        except wasmtime.WasmtimeError as err:
            raise KeepError(f"failed: invalid module: {_first_line(err)}") from None
        exports = {e.name for e in self.module.exports}
        if "handle" in exports:
            self.kind = "service"
            if not {"alloc", "memory"} <= exports:
                raise KeepError("failed: a service must export 'memory', 'alloc' and 'handle'")
        elif "_start" in exports:
            self.kind = "command"
        else:
            raise KeepError("failed: module exports neither 'handle' nor '_start'")
        self.status = "created"
        self.invocations = 0
        self._lock = threading.Lock()
        self._open = threading.Event()  # cleared while a migration pauses the keep
        self._open.set()
        self._stopping = False
        self._gen = 0
        self._gen_lock = threading.Lock()
        self._store: wasmtime.Store | None = None
        self._instance: wasmtime.Instance | None = None
        self._env_version = -1

    def _wasi(self) -> wasmtime.WasiConfig:
        """WASI for this keep: argv, manifest env plus the secrets marked as_env."""
        wasi = wasmtime.WasiConfig()
        wasi.argv = [self.manifest.name, *self.manifest.args]
        self._env_version = self.ctx.inputs.version
        wasi.env = list(self.manifest.env.items()) + self.ctx.inputs.env_items()
        logs = self.ctx.logs
        wasi.stdout_custom = lambda data: logs.write("stdout", data)
        wasi.stderr_custom = lambda data: logs.write("stderr", data)
        return wasi

    # ------------------------------------------------------------ limits
    def _arm(self) -> threading.Timer:
        assert self._store is not None
        self._store.set_fuel(self.manifest.fuel)
        self._store.set_epoch_deadline(1)
        with self._gen_lock:
            self._gen += 1
            gen = self._gen

        def fire() -> None:
            with self._gen_lock:
                if gen == self._gen:
                    self.engine.increment_epoch()

        timer = threading.Timer(self.manifest.timeout_ms / 1000.0, fire)
        timer.daemon = True
        timer.start()
        return timer

    def _disarm(self, timer: threading.Timer) -> None:
        timer.cancel()
        with self._gen_lock:
            self._gen += 1

    def _memory_full(self) -> bool:
        if self._store is None or self._instance is None:
            return False
        mem = self._instance.exports(self._store).get("memory")
        if not isinstance(mem, wasmtime.Memory):
            return False
        return bool(mem.data_len(self._store) + PAGE > self.manifest.memory_limit)

    def _classify(self, err: BaseException) -> str:
        if isinstance(err, wasmtime.ExitTrap):
            return f"exited: {err.code}"
        if self._stopping:
            return "stopped"
        if isinstance(err, wasmtime.Trap):
            code = err.trap_code
            if code == wasmtime.TrapCode.OUT_OF_FUEL:
                return "out-of-fuel"
            if code == wasmtime.TrapCode.INTERRUPT:
                return f"timeout: exceeded {self.manifest.timeout_ms} ms"
            if self._memory_full():
                return f"out-of-memory: {_first_line(err)}"
            return f"trapped: {_first_line(err)}"
        text = _first_line(err)
        if "memory" in text and ("limit" in text or "minimum" in text or "exceed" in text):
            return f"out-of-memory: {text}"
        return f"failed: {text}"

    def _invoke(self, fn: Callable[[], Any]) -> Any:
        timer = self._arm()
        try:
            result = fn()
        except (wasmtime.WasmtimeError, wasmtime.Trap) as err:
            self.ctx.rollback()
            self.status = self._classify(err)
            if not self.status.startswith("exited"):
                raise KeepError(self.status) from None
            return None
        finally:
            self._disarm(timer)
            self.invocations += 1
            self.ctx.logs.flush()
        return result

    # ------------------------------------------------------------ lifecycle
    def start(self) -> str:
        """Instantiate; a command runs to completion, a service runs `_initialize`."""
        with self._lock:
            if self._stopping:
                self.status = "stopped"
                return self.status
            store = wasmtime.Store(self.engine)
            store.set_limits(memory_size=self.manifest.memory_limit)
            store.set_wasi(self._wasi())
            self._store = store
            linker = wasmtime.Linker(self.engine)
            linker.define_wasi()
            define_host_api(linker, self.ctx)
            try:
                self._instance = self._invoke(lambda: linker.instantiate(store, self.module))
            except KeepError:
                return self.status
            if self._instance is None:  # proc_exit during a start function
                self.ctx.commit()
                return self.status
            exports = self._instance.exports(store)
            entry = "_start" if self.kind == "command" else "_initialize"
            fn = exports.get(entry)
            if isinstance(fn, wasmtime.Func):
                try:
                    self.status = "running"
                    self._invoke(lambda: fn(store))
                except KeepError:
                    return self.status
            if self.kind == "command":
                if not self.status.startswith("exited"):
                    self.status = "exited: 0"
                self.ctx.commit()
            else:
                self.ctx.commit()
                self.status = "running"
            return self.status

    def call(self, message: bytes) -> bytes:
        """Deliver one message to `handle` and return its reply (KeepError if it fails).

        While the keep is paused (a hand-over's final checkpoint) the call waits; if
        the keep stops meanwhile (it moved) it fails, so the client retries at the
        new host: a call is never answered by two copies.
        """
        if not self._open.wait(PAUSE_WAIT_S):
            raise KeepError("paused: the keep is moving, retry")
        if self._stopping:
            raise KeepError("stopped")
        with self._lock:
            if self.kind != "service":
                raise KeepError(self.status) if is_terminal(self.status) else KeepError(
                    "failed: not a service")
            if self.status != "running" or self._store is None or self._instance is None:
                raise KeepError(self.status)
            store = self._store
            if self._env_version != self.ctx.inputs.version and self.ctx.inputs.as_env:
                store.set_wasi(self._wasi())  # a rotated as_env secret, seen from this call on
            exports = self._instance.exports(store)
            alloc, handle, mem = exports.get("alloc"), exports.get("handle"), exports.get("memory")
            if not (isinstance(alloc, wasmtime.Func) and isinstance(handle, wasmtime.Func)
                    and isinstance(mem, wasmtime.Memory)):
                raise KeepError("failed: service exports have the wrong kinds")

            def run() -> bytes:
                ptr = alloc(store, len(message))
                if not isinstance(ptr, int) or ptr < 0 or ptr + len(message) > mem.data_len(store):
                    raise wasmtime.WasmtimeError("alloc returned an out-of-bounds pointer")
                mem.write(store, message, ptr)
                packed = handle(store, ptr, len(message))
                if not isinstance(packed, int):
                    raise wasmtime.WasmtimeError("handle must return i64 (ptr << 32 | len)")
                packed &= (1 << 64) - 1
                rptr, rlen = packed >> 32, packed & 0xFFFFFFFF
                if rlen > MAX_MESSAGE or rptr + rlen > mem.data_len(store):
                    raise wasmtime.WasmtimeError(f"reply {rptr}+{rlen} out of bounds or too large")
                return bytes(mem.read(store, rptr, rptr + rlen))

            reply: bytes = self._invoke(run)
            self.ctx.commit()
            return reply

    def state_snapshot(self) -> bytes:
        """The committed durable state, serialised between invocations (a checkpoint
        never sees half of a call's writes). Blocking: waits for a running call."""
        with self._lock:
            return self.ctx.state.to_bytes()

    def pause(self) -> None:
        """Hold new calls (they wait in `call`) ahead of a final checkpoint."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def stop(self) -> None:
        """Interrupt any running invocation (thread-safe, returns at once)."""
        self._stopping = True
        self._open.set()  # waiting calls wake up and see the stop
        self.engine.increment_epoch()

    def finish_stop(self) -> str:
        """Wait for an interrupted invocation to unwind, then mark stopped."""
        with self._lock:
            self.status = "stopped"
            self._instance = None
            self._store = None
        return self.status
