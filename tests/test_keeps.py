"""Keeps: sealed delivery, admission, runtime limits, state across restarts, the RPC service."""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import trio
from keepmesh.agent.keeps.hostapi import HostContext, LogBuffer
from keepmesh.agent.keeps.manager import KeepManager
from keepmesh.agent.keeps.package import PackageError, load_workload, module_binary
from keepmesh.agent.keeps.runtime import KeepRuntime
from keepmesh.agent.keeps.sealing import open_package, seal_package
from keepmesh.agent.keeps.service import KeepService
from keepmesh.agent.keeps.store import KeepStore, KVState, export_checkpoint, import_checkpoint
from keepmesh.protocol.deployment import (
    Deployment,
    SealedPackage,
    make_deployment,
    manifest_for,
)
from keepmesh.protocol.errors import ProtocolError, VerificationError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
OWNER = bytes([7] * 32)
STRANGER = bytes([8] * 32)
IDENTITY = bytes([9] * 32)
OTHER_AGENT = bytes([10] * 32)


def pub(seed: bytes) -> bytes:
    return bytes(nacl.signing.SigningKey(seed).verify_key.encode())


LOOP = b'(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))'
GROW = b"""(module (memory (export "memory") 1) (func (export "_start")
  (loop (br_if 0 (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable))"""
TRAP = b'(module (func (export "_start") unreachable))'
EXIT3 = b"""(module (import "wasi_snapshot_preview1" "proc_exit" (func $e (param i32)))
  (memory (export "memory") 1) (func (export "_start") (call $e (i32.const 3))))"""
BIG_MEMORY = b'(module (memory (export "memory") 100) (func (export "_start")))'
BAD_PTR = b"""(module (import "keepmesh" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $log (i32.const 65530) (i32.const 100))))"""


def deploy_args(source: bytes | Path, seed: bytes = OWNER, identity: bytes = IDENTITY,
                **manifest: Any) -> tuple[Deployment, SealedPackage]:
    if isinstance(source, Path):
        w = load_workload(source)
        module, m = w.module, w.manifest
    else:
        module = module_binary(source, "test")
        m = manifest_for("test", **manifest)
    d = make_deployment(m, module, None, seed, time.time(), random.Random())
    sealed, _ = seal_package(module, pub(identity))
    return d, sealed


def manager(tmp_path: Path) -> KeepManager:
    return KeepManager(tmp_path, [pub(OWNER)], IDENTITY)


# ------------------------------------------------------------------ sealing


def test_only_identity_holder_opens_package() -> None:
    sealed, key = seal_package(b"secret module", pub(IDENTITY))
    assert b"secret module" not in sealed.ciphertext
    assert open_package(sealed, IDENTITY) == (b"secret module", key)
    with pytest.raises(VerificationError, match="not sealed to this agent"):
        open_package(sealed, OTHER_AGENT)


def test_tampered_ciphertext_or_sealed_key_refused() -> None:
    sealed, _ = seal_package(b"secret module", pub(IDENTITY))
    ct = bytearray(sealed.ciphertext)
    ct[-1] ^= 1
    with pytest.raises(VerificationError, match="ciphertext"):
        open_package(SealedPackage.from_fields({"sealed_key": sealed.sealed_key,
                                                "ciphertext": bytes(ct)}), IDENTITY)
    sk = bytearray(sealed.sealed_key)
    sk[40] ^= 1
    with pytest.raises(VerificationError):
        open_package(SealedPackage.from_fields({"sealed_key": bytes(sk),
                                                "ciphertext": sealed.ciphertext}), IDENTITY)


# ------------------------------------------------------------------ packages


def test_examples_load_and_wat_is_compiled() -> None:
    hello = load_workload(EXAMPLES / "hello")
    assert hello.module[:4] == b"\x00asm" and hello.manifest.name == "hello"
    counter = load_workload(EXAMPLES / "counter")
    assert counter.manifest.stateful


def test_bad_module_and_manifest_named(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="invalid WAT"):
        module_binary(b"(module (fun))", "m.wat")
    with pytest.raises(PackageError, match="invalid module: type mismatch"):
        module_binary(b'(module (func (export "f") (result i32)))', "m.wat")
    with pytest.raises(PackageError, match="invalid module"):
        module_binary(b"\x00asm\x01\x00\x00\x00\xff", "m.wasm")
    (tmp_path / "keepmesh.toml").write_text('name = "x"\n[resources]\nfuel = -1\n')
    (tmp_path / "m.wat").write_text("(module)")
    with pytest.raises(PackageError, match="fuel"):
        load_workload(tmp_path)
    (tmp_path / "keepmesh.toml").write_text('name = "x"\nmodule = "../m.wat"\n')
    with pytest.raises(PackageError, match="'module'"):
        load_workload(tmp_path)


def test_files_the_manifest_names_stay_inside_the_workload_directory(tmp_path: Path) -> None:
    """module and policy follow the [secrets]/[data] rule: relative, no `..`, no link out,
    a regular file (a FIFO would block deploy). `policy = "../x"` used to read any file."""
    import os
    work = tmp_path / "w"
    (work / "sub").mkdir(parents=True)
    (work / "sub" / "m.wat").write_text("(module)")
    (work / "p.toml").write_text('measurement = ["00"]\n')
    (tmp_path / "outside.toml").write_text('measurement = ["11"]\n')
    (tmp_path / "outside.wat").write_text("(module)")
    manifest = work / "keepmesh.toml"
    manifest.write_text('name = "x"\nmodule = "sub/m.wat"\npolicy = "p.toml"\n')
    assert load_workload(work).policy_text == 'measurement = ["00"]\n'  # inside: passes
    (work / "in-link.toml").symlink_to(work / "p.toml")  # a link within the directory
    manifest.write_text('name = "x"\nmodule = "sub/m.wat"\npolicy = "in-link.toml"\n')
    assert load_workload(work).policy_text == 'measurement = ["00"]\n'
    (work / "out.toml").symlink_to(tmp_path / "outside.toml")
    (work / "out.wat").symlink_to(tmp_path / "outside.wat")
    os.mkfifo(work / "fifo.toml")
    for line, why in [('policy = "../outside.toml"', "'policy': must be a relative path"),
                      (f'policy = "{tmp_path / "outside.toml"}"', "must be a relative path"),
                      ('policy = "out.toml"', "'policy': a symbolic link leads outside"),
                      ('policy = "fifo.toml"', "'policy': not a regular file"),
                      ('module = "out.wat"', "'module': a symbolic link leads outside")]:
        body = line if line.startswith("module") else f'module = "sub/m.wat"\n{line}'
        manifest.write_text(f'name = "x"\n{body}\n')
        with pytest.raises(PackageError, match=why):
            load_workload(work)
    with pytest.raises(PackageError, match="nothing writing to it"):  # --policy: no writer
        load_workload(work / "sub" / "m.wat", work / "fifo.toml")


# ------------------------------------------------------------------ runtime


@pytest.mark.parametrize("src,manifest,status", [
    (LOOP, {"fuel": 5_000_000}, "out-of-fuel"),
    (LOOP, {"fuel": 10**15, "timeout_ms": 100}, "timeout"),
    (GROW, {"memory_limit": 1 << 20}, "out-of-memory"),
    (BIG_MEMORY, {"memory_limit": 1 << 20}, "out-of-memory"),
    (TRAP, {}, "trapped: wasm `unreachable`"),
    (EXIT3, {}, "exited: 3"),
    (BAD_PTR, {}, "trapped"),
])
def test_runtime_limits_give_status(src: bytes, manifest: dict[str, Any], status: str) -> None:
    ctx = HostContext("0" * 32, KVState(), LogBuffer())
    rt = KeepRuntime("0" * 32, manifest_for("t", **manifest), module_binary(src, "t"), ctx)
    assert rt.start().startswith(status)


# ------------------------------------------------------------------ manager


async def test_deploy_command_runs_and_logs_output(tmp_path: Path) -> None:
    m = manager(tmp_path)
    keep = await m.deploy(*deploy_args(EXAMPLES / "hello"))
    assert keep.status == "exited: 0"
    assert ("stdout", "hello from a keep") in m.logs(keep.keep_id)


async def test_service_state_survives_restart(tmp_path: Path) -> None:
    m = manager(tmp_path)
    keep = await m.deploy(*deploy_args(EXAMPLES / "counter"))
    assert keep.status == "running"
    assert [await m.call(keep.keep_id, b"inc") for _ in range(3)] == [b"1", b"2", b"3"]
    assert await m.call(keep.keep_id, b"get") == b"3"
    await m.aclose()
    # Stored state is encrypted at rest.
    raw = (tmp_path / "keeps" / keep.keep_id / "state.enc").read_bytes()
    assert b"count" not in raw
    m2 = manager(tmp_path)
    restored = await m2.restore_and_start()
    assert [k.keep_id for k in restored] == [keep.keep_id]
    assert await m2.call(keep.keep_id, b"inc") == b"4"
    assert m2.logs(keep.keep_id)[-1] == ("log", "counter: incremented")


async def test_command_not_rerun_after_restart(tmp_path: Path) -> None:
    m = manager(tmp_path)
    keep = await m.deploy(*deploy_args(EXAMPLES / "hello"))
    await m.aclose()
    m2 = manager(tmp_path)
    (k2,) = await m2.restore_and_start()
    assert k2.status == "exited: 0"
    assert m2.logs(keep.keep_id) == [("stdout", "hello from a keep")]


async def test_wrong_owner_tamper_replay_refused(tmp_path: Path) -> None:
    m = manager(tmp_path)
    with pytest.raises(VerificationError, match="not admitted"):
        m.admit(*deploy_args(EXAMPLES / "hello", seed=STRANGER))
    d, sealed = deploy_args(EXAMPLES / "hello")
    # Package swapped for another validly sealed module: digest mismatch.
    other = module_binary(TRAP, "t")
    swapped, _ = seal_package(other, pub(IDENTITY))
    with pytest.raises(VerificationError, match="size|digest"):
        m.admit(d, swapped)
    # Sealed to a different agent: we cannot open it.
    d2, sealed_other = deploy_args(EXAMPLES / "hello", identity=OTHER_AGENT)
    with pytest.raises(VerificationError, match="not sealed"):
        m.admit(d2, sealed_other)
    # Signature tampered.
    fields = d.to_fields()
    fields["manifest"]["fuel"] += 1
    with pytest.raises(VerificationError, match="signature"):
        m.admit(Deployment.from_fields(fields), sealed)
    assert m.keeps == {} and KeepStore(tmp_path).keep_ids() == []
    m.admit(d, sealed)
    with pytest.raises(ProtocolError, match="already deployed"):
        m.admit(d, sealed)


async def test_bad_workloads_stopped_manager_keeps_serving(tmp_path: Path) -> None:
    m = manager(tmp_path)
    svc = await m.deploy(*deploy_args(EXAMPLES / "counter"))
    statuses = []
    for src, kw in [(LOOP, {"fuel": 5_000_000}), (GROW, {"memory_limit": 1 << 20}),
                    (TRAP, {}), (LOOP, {"fuel": 10**15, "timeout_ms": 100})]:
        keep = await m.deploy(*deploy_args(src, **kw))
        statuses.append(keep.status.split(":")[0])
    assert statuses == ["out-of-fuel", "out-of-memory", "trapped", "timeout"]
    assert await m.call(svc.keep_id, b"inc") == b"1"
    assert len(m.list_keeps()) == 5


async def test_stop_interrupts_running_call(tmp_path: Path) -> None:
    spin = b"""(module (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) (i32.const 0))
      (func (export "handle") (param i32 i32) (result i64) (loop (br 0)) (i64.const 0)))"""
    m = manager(tmp_path)
    keep = await m.deploy(*deploy_args(spin, fuel=10**15, timeout_ms=60_000))
    assert keep.status == "running"
    errors: list[str] = []

    async def call() -> None:
        try:
            await m.call(keep.keep_id, b"x")
        except Exception as err:
            errors.append(str(err))

    async with trio.open_nursery() as n:
        n.start_soon(call)
        await trio.sleep(0.1)
        t0 = trio.current_time()
        assert await m.stop(keep.keep_id) == "stopped"
        assert trio.current_time() - t0 < 2.0
    assert errors == ["stopped"]


async def test_trapping_call_rolls_back_state(tmp_path: Path) -> None:
    bad = b"""(module (import "keepmesh" "kv_put" (func $put (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1) (data (i32.const 0) "k")
      (func (export "alloc") (param i32) (result i32) (i32.const 100))
      (func (export "handle") (param i32 i32) (result i64)
        (drop (call $put (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 1)))
        unreachable))"""
    m = manager(tmp_path)
    keep = await m.deploy(*deploy_args(bad, stateful=True))
    with pytest.raises(Exception, match="trapped"):
        await m.call(keep.keep_id, b"x")
    assert len(keep.ctx.state) == 0
    with pytest.raises(Exception, match="trapped"):
        await m.call(keep.keep_id, b"x")


def test_checkpoint_roundtrip_and_wrong_key() -> None:
    s = KVState({b"a": b"1", b"b": b"2"})
    blob = export_checkpoint(s, bytes(32))
    assert dict(import_checkpoint(blob, bytes(32)).items()) == {b"a": b"1", b"b": b"2"}
    with pytest.raises(VerificationError):
        import_checkpoint(blob, bytes([1] * 32))


def test_storage_tamper_detected(tmp_path: Path) -> None:
    store = KeepStore(tmp_path)
    d, _ = deploy_args(TRAP)
    store.install("a" * 32, d, b"module", bytes(32))
    path = tmp_path / "keeps" / ("a" * 32) / "module.enc"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(VerificationError, match="module.enc"):
        store.load("a" * 32)
    assert (tmp_path / "keeps" / "storage.key").stat().st_mode & 0o077 == 0


# ------------------------------------------------------------------ service


@dataclasses.dataclass
class Ctx:
    peer_key: bytes
    role: str = "client"


async def test_service_rpc_flow_and_access(tmp_path: Path) -> None:
    svc = KeepService(tmp_path, [pub(OWNER)], IDENTITY)
    await svc.start()
    methods = svc.methods()
    owner, stranger = Ctx(pub(OWNER)), Ctx(pub(STRANGER))
    d, sealed = deploy_args(EXAMPLES / "counter")
    body = {"deployment": d.to_fields(), "package": sealed.to_fields()}
    with pytest.raises(ProtocolError, match="owner"):
        await methods["keeps.deploy"](stranger, body)
    resp = await methods["keeps.deploy"](owner, body)
    keep = resp["keep"]
    assert resp["state"] == "running" and resp["name"] == "counter"
    assert (await methods["keeps.call"](owner, {"keep": keep, "message": b"hi"}))["reply"] == b"1"
    assert (await methods["keeps.list"](owner, {}))["keeps"][0]["keep"] == keep
    assert (await methods["keeps.list"](stranger, {}))["keeps"] == []
    with pytest.raises(ProtocolError, match="no keep"):
        await methods["keeps.call"](stranger, {"keep": keep, "message": b"hi"})
    with pytest.raises(ProtocolError, match="no keep"):
        await methods["keeps.stop"](stranger, {"keep": keep})
    with pytest.raises(ProtocolError, match="message"):
        await methods["keeps.call"](owner, {"keep": keep, "message": "str"})
    with pytest.raises(ProtocolError, match="unknown field"):
        await methods["keeps.list"](owner, {"x": 1})
    logs = await methods["keeps.logs"](owner, {"keep": keep[:8]})
    assert [(x["stream"], x["line"]) for x in logs["lines"]] == [("log", "counter: incremented")]
    assert all(isinstance(x["time"], float) and x["seq"] >= 1 for x in logs["lines"])
    assert (await methods["keeps.stop"](owner, {"keep": keep}))["state"] == "stopped"
    with pytest.raises(ProtocolError, match="stopped"):
        await methods["keeps.call"](owner, {"keep": keep, "message": b"hi"})
    await svc.aclose()
    svc2 = KeepService(tmp_path, [pub(OWNER)], IDENTITY)
    await svc2.start()
    assert (await svc2.methods()["keeps.list"](owner, {}))["keeps"][0]["state"] == "stopped"
    with pytest.raises(ProtocolError, match="already deployed"):
        await svc2.methods()["keeps.deploy"](owner, body)
