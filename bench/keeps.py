"""Keep overheads, manager-level and local (no network): prints one JSON document.

deploy: KeepManager.admit + start (verify signature, open sealed package,
check digest, compile, write encrypted files, instantiate) vs bare wasmtime
compile + instantiate of the same module.
call: KeepManager.call round trip through a worker thread (alloc, copy in,
handle, copy out, state commit, encrypted persist) vs a bare call of the same
export on a bare instance. The over-QUIC variant is measured elsewhere.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import nacl.signing
import trio
import wasmtime
from keepmesh.agent.keeps.manager import KeepManager
from keepmesh.agent.keeps.package import load_workload
from keepmesh.agent.keeps.sealing import seal_package
from keepmesh.protocol.deployment import make_deployment

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "counter"
OWNER, IDENTITY = bytes([1] * 32), bytes([2] * 32)


def _pub(seed: bytes) -> bytes:
    return bytes(nacl.signing.SigningKey(seed).verify_key.encode())


def bare_instantiate(module_bytes: bytes) -> float:
    t = time.perf_counter()
    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, module_bytes)
    store = wasmtime.Store(engine)
    linker = wasmtime.Linker(engine)
    linker.define_unknown_imports_as_traps(module)
    linker.instantiate(store, module)
    return time.perf_counter() - t


def bare_calls(module_bytes: bytes, n: int) -> float:
    """Per-call time of `handle` on a bare instance with no-op host imports."""
    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, module_bytes)
    store = wasmtime.Store(engine)
    linker = wasmtime.Linker(engine)
    i32 = wasmtime.ValType.i32()
    linker.define_func("keepmesh", "kv_get", wasmtime.FuncType([i32] * 4, [i32]),
                       lambda *a: -1)
    linker.define_func("keepmesh", "kv_put", wasmtime.FuncType([i32] * 4, [i32]), lambda *a: 0)
    linker.define_func("keepmesh", "log", wasmtime.FuncType([i32] * 2, []), lambda *a: None)
    inst = linker.instantiate(store, module)
    ex = inst.exports(store)
    alloc, handle = ex["alloc"], ex["handle"]
    t = time.perf_counter()
    for _ in range(n):
        ptr = alloc(store, 3)  # type: ignore[operator]
        handle(store, ptr, 3)  # type: ignore[operator]
    return (time.perf_counter() - t) / n


async def measure(rounds: int, calls: int) -> dict[str, object]:
    w = load_workload(EXAMPLE)
    deploy_times, bare_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        m = KeepManager(Path(tmp), [_pub(OWNER)], IDENTITY)
        keep = None
        for _ in range(rounds):
            d = make_deployment(w.manifest, w.module, None, OWNER, time.time(), random.Random())
            sealed, _ = seal_package(w.module, _pub(IDENTITY))
            t = time.perf_counter()
            keep = m.admit(d, sealed)
            m.run_start(keep)
            deploy_times.append(time.perf_counter() - t)
            bare_times.append(bare_instantiate(w.module))
        assert keep is not None
        for _ in range(20):
            await m.call(keep.keep_id, b"inc")
        t = time.perf_counter()
        for _ in range(calls):
            await m.call(keep.keep_id, b"inc")
        call_s = (time.perf_counter() - t) / calls
        t = time.perf_counter()
        for _ in range(calls):
            await m.call(keep.keep_id, b"get")
        read_call_s = (time.perf_counter() - t) / calls
        await m.aclose()
    bare_call_s = bare_calls(w.module, calls)
    deploy = statistics.median(deploy_times)
    bare = statistics.median(bare_times)
    return {
        "module": str(EXAMPLE.name), "module_bytes": len(w.module),
        "deploy_ms_median": round(deploy * 1e3, 3),
        "bare_compile_instantiate_ms_median": round(bare * 1e3, 3),
        "deploy_vs_bare_ratio": round(deploy / bare, 2),
        "call_write_us": round(call_s * 1e6, 1),
        "call_read_us": round(read_call_s * 1e6, 1),
        "bare_call_us": round(bare_call_s * 1e6, 2),
        "call_write_vs_bare_ratio": round(call_s / bare_call_s, 1),
        "call_read_vs_bare_ratio": round(read_call_s / bare_call_s, 1),
        "rounds": rounds, "calls": calls,
    }


def main() -> None:
    print(json.dumps(trio.run(measure, 30, 500), indent=2))


if __name__ == "__main__":
    main()
