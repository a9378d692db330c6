"""Cost of secrets and data files, manager-level (no network): prints one JSON document.

deploy_small: KeepManager.admit + start of examples/secret-digest with its two
secrets and a 39-byte data file (decrypt inputs, check salted digests, write
inputs.enc) vs the same module deployed with no inputs at all.
deploy_16mib: the same with a 16 MiB data file vs with none, and the inputs'
throughput (sealing on the owner's side is not included: that is the CLI).
rotate: KeepManager.set_secret (verify the owner's signature and serial,
decrypt, check the digest, persist inputs.enc atomically) vs the bare atomic
encrypted write of the same record (what persisting alone costs).
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import nacl.signing
import trio
from keepmesh.agent.keeps.manager import KeepManager
from keepmesh.agent.keeps.package import load_workload
from keepmesh.agent.keeps.sealing import seal_package, seal_value
from keepmesh.protocol.deployment import deployment_id, make_deployment
from keepmesh.protocol.secrets import (
    MAX_DATA_TOTAL,
    InputValue,
    deployment_key_for,
    input_digest,
    make_secret_update,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "secret-digest"
OWNER, IDENTITY = bytes([1] * 32), bytes([2] * 32)


def _pub(seed: bytes) -> bytes:
    return bytes(nacl.signing.SigningKey(seed).verify_key.encode())


def _deploy_times(m: KeepManager, workload_dir: Path, rounds: int,
                  with_inputs: bool) -> list[float]:
    w = load_workload(workload_dir)
    times = []
    for _ in range(rounds):
        refs = {"secrets": w.secret_refs, "data": w.data_refs} if with_inputs else {}
        d = make_deployment(w.manifest, w.module, None, OWNER, time.time(), random.Random(),
                            **refs)
        sealed, _ = seal_package(w.module, _pub(IDENTITY), key=deployment_key_for(OWNER, d),
                                 inputs=w.inputs if with_inputs else None)
        t = time.perf_counter()
        keep = m.admit(d, sealed)
        m.run_start(keep)
        times.append(time.perf_counter() - t)
        m.run_stop(keep)
    return times


async def measure(rounds: int, big_rounds: int, rotations: int) -> dict[str, object]:
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        m = KeepManager(Path(tmp) / "agent", [_pub(OWNER)], IDENTITY)
        _deploy_times(m, EXAMPLE, 2, True)  # warm up
        small = statistics.median(_deploy_times(m, EXAMPLE, rounds, True))
        plain = statistics.median(_deploy_times(m, EXAMPLE, rounds, False))
        out.update({"deploy_small_ms": round(small * 1e3, 2),
                    "deploy_no_inputs_ms": round(plain * 1e3, 2),
                    "deploy_small_vs_no_inputs_ratio": round(small / plain, 2)})

        big = Path(tmp) / "big"
        shutil.copytree(EXAMPLE, big)
        (big / "data" / "words.txt").write_bytes(random.Random(1).randbytes(MAX_DATA_TOTAL))
        big_t = statistics.median(_deploy_times(m, big, big_rounds, True))
        big_plain = statistics.median(_deploy_times(m, big, big_rounds, False))
        out.update({"deploy_16mib_data_ms": round(big_t * 1e3, 1),
                    "deploy_16mib_no_inputs_ms": round(big_plain * 1e3, 1),
                    "deploy_16mib_vs_no_inputs_ratio": round(big_t / big_plain, 1),
                    "inputs_mib_per_s": round(16 / (big_t - big_plain), 1)})

        w = load_workload(EXAMPLE)
        d = make_deployment(w.manifest, w.module, None, OWNER, time.time(), random.Random(),
                            secrets=w.secret_refs, data=w.data_refs)
        key = deployment_key_for(OWNER, d)
        sealed, _ = seal_package(w.module, _pub(IDENTITY), key=key, inputs=w.inputs)
        keep = await m.deploy(d, sealed)
        rot, write = [], []
        for serial in range(1, rotations + 1):
            value = InputValue(name="db_password", salt=bytes(16), value=b"v%d" % serial)
            update = make_secret_update(deployment_id(d), "db_password", serial,
                                        input_digest("secret", "db_password", value.salt,
                                                     value.value),
                                        seal_value(key, value), OWNER)
            t = time.perf_counter()
            m.set_secret(update)
            rot.append(time.perf_counter() - t)
            record = keep.ctx.inputs.record()
            t = time.perf_counter()
            m.store.save_inputs(keep.keep_id, record)
            write.append(time.perf_counter() - t)
        assert await m.call(keep.keep_id, b"x")
        await m.aclose()
    r, wr = statistics.median(rot), statistics.median(write)
    out.update({"rotate_ms": round(r * 1e3, 3), "persist_only_ms": round(wr * 1e3, 3),
                "rotate_vs_persist_ratio": round(r / wr, 2),
                "rounds": rounds, "big_rounds": big_rounds, "rotations": rotations})
    return out


def main() -> None:
    print(json.dumps(trio.run(measure, 15, 3, 30), indent=2))


if __name__ == "__main__":
    main()
