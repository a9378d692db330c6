"""Keep checkpoints: sealed under the deployment key, bound to their keep, restored elsewhere."""

from __future__ import annotations

import threading
from pathlib import Path

import msgpack
import pytest
import trio
from keepmesh.agent.keeps.checkpoint import (
    CheckpointError,
    CheckpointInfo,
    open_checkpoint,
    restore_keep,
    seal_checkpoint,
    take_checkpoint,
)
from keepmesh.agent.keeps.manager import KeepManager
from keepmesh.agent.keeps.sealing import secretbox_encrypt
from keepmesh.agent.keeps.store import KVState
from test_keeps import EXAMPLES, IDENTITY, OTHER_AGENT, OWNER, deploy_args, pub

KEY = bytes(range(32))


def test_roundtrip_binds_keep_seq_epoch() -> None:
    state = KVState({b"count": (7).to_bytes(8, "little")})
    blob = seal_checkpoint(CheckpointInfo("a" * 32, 4, 2, 10.5), state.to_bytes(), KEY)
    assert b"count" not in blob                                  # encrypted
    info, kv = open_checkpoint(blob, KEY, "a" * 32)
    assert info == CheckpointInfo("a" * 32, 4, 2, 10.5) and dict(kv.items()) == dict(state.items())


@pytest.mark.parametrize("case", ["wrong_key", "other_keep", "tampered", "garbage_payload",
                                  "bad_header", "bad_state", "too_big"])
def test_bad_checkpoints_are_refused(case: str) -> None:
    good = seal_checkpoint(CheckpointInfo("a" * 32, 1, 1, 0.0), KVState().to_bytes(), KEY)
    blob, keep, key = good, "a" * 32, KEY
    if case == "wrong_key":
        key = bytes(32)
    elif case == "other_keep":
        keep = "b" * 32
    elif case == "tampered":
        blob = good[:-1] + bytes([good[-1] ^ 1])
    elif case == "garbage_payload":
        blob = secretbox_encrypt(KEY, b"\xc1\xc1")
    elif case == "bad_header":
        blob = secretbox_encrypt(KEY, msgpack.packb({"v": 1, "keep": "a" * 32, "seq": -1,
                                                     "epoch": 1, "taken_at": 0.0,
                                                     "state": b""}))
    elif case == "bad_state":
        blob = secretbox_encrypt(KEY, msgpack.packb({"v": 1, "keep": "a" * 32, "seq": 1,
                                                     "epoch": 1, "taken_at": 0.0,
                                                     "state": b"junk"}))
    elif case == "too_big":
        blob = b"\0" * (40 * 1024 * 1024)
    with pytest.raises(CheckpointError):
        open_checkpoint(blob, key, keep)


async def test_counter_state_moves_to_another_host(tmp_path: Path) -> None:
    a = KeepManager(tmp_path / "a", [pub(OWNER)], IDENTITY)
    d, sealed = deploy_args(EXAMPLES / "counter")
    keep = await a.deploy(d, sealed)
    for _ in range(3):
        await a.call(keep.keep_id, b"inc")
    blob = await trio.to_thread.run_sync(take_checkpoint, keep, 1, 1, 5.0)
    await a.call(keep.keep_id, b"inc")                # after the checkpoint
    # host B receives the package re-sealed to its key, plus the checkpoint
    b = KeepManager(tmp_path / "b", [pub(OWNER)], OTHER_AGENT)
    restored, info = restore_keep(b, d, a.sealed_for(keep.keep_id, pub(OTHER_AGENT)), blob)
    assert info is not None and (info.seq, info.epoch) == (1, 1)
    await b.start(restored)
    assert await b.call(restored.keep_id, b"get") == b"3"
    assert await b.call(restored.keep_id, b"inc") == b"4"
    # persisted at B: a restart of B keeps the restored state
    await b.aclose()
    b2 = KeepManager(tmp_path / "b", [pub(OWNER)], OTHER_AGENT)
    await b2.restore_and_start()
    assert await b2.call(restored.keep_id, b"get") == b"4"
    await a.aclose()
    await b2.aclose()


async def test_restore_refuses_a_checkpoint_of_another_keep(tmp_path: Path) -> None:
    a = KeepManager(tmp_path / "a", [pub(OWNER)], IDENTITY)
    d1, s1 = deploy_args(EXAMPLES / "counter")
    d2, s2 = deploy_args(EXAMPLES / "counter")
    k1 = await a.deploy(d1, s1)
    k2 = await a.deploy(d2, s2)
    await a.call(k1.keep_id, b"inc")
    blob1 = take_checkpoint(k1, 1, 1, 0.0)
    b = KeepManager(tmp_path / "b", [pub(OWNER)], OTHER_AGENT)
    with pytest.raises(CheckpointError):
        restore_keep(b, d2, a.sealed_for(k2.keep_id, pub(OTHER_AGENT)), blob1)
    assert b.get(k2.keep_id).status == "stopped"      # never runs with empty state
    await a.aclose()
    await b.aclose()


async def test_checkpoint_waits_for_a_running_call(tmp_path: Path) -> None:
    a = KeepManager(tmp_path / "a", [pub(OWNER)], IDENTITY)
    keep = await a.deploy(*deploy_args(EXAMPLES / "counter"))
    assert keep.runtime is not None
    gate = threading.Event()
    with keep.runtime._lock:                          # a call in progress
        t = threading.Thread(target=lambda: (take_checkpoint(keep, 1, 1, 0.0), gate.set()))
        t.start()
        assert not gate.wait(0.2)
    assert gate.wait(5)
    await a.aclose()
