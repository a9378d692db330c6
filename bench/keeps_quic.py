"""Keeps over the attested channel, end to end, against baselines from the same run.

    python bench/keeps_quic.py [--rounds 15] [--calls 200]

deploy: what `keepmesh deploy` does (connect, demand fresh evidence, appraise,
seal to the attested key, send, agent verifies/compiles/starts) vs bare
wasmtime compile + instantiate of the same module.
call: `keeps.call` on an established session vs a no-op RPC on the same
session (`agent.status`, the cheapest RPC a client may call). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives import serialization

sys.path.insert(0, str(Path(__file__).resolve().parent))
from keepmesh.agent.client import open_client  # noqa: E402
from keepmesh.agent.config import AgentConfig  # noqa: E402
from keepmesh.agent.identity import Identity  # noqa: E402
from keepmesh.agent.keeps.package import load_workload  # noqa: E402
from keepmesh.agent.keeps.sealing import seal_package  # noqa: E402
from keepmesh.agent.startup import build_agent  # noqa: E402
from keepmesh.agent.tee.sim import init_sim_root  # noqa: E402
from keepmesh.protocol.attestation.policy import Policy  # noqa: E402
from keepmesh.protocol.deployment import make_deployment  # noqa: E402
from keeps import bare_instantiate  # noqa: E402  (the local baseline lives there)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "counter"


async def measure(tmp: Path, rounds: int, calls: int) -> dict[str, Any]:
    init_sim_root(tmp / "root", key_bits=2048)
    owner = Identity.generate()
    key_path = tmp / "owner.key"
    key_path.write_bytes(owner.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    key_path.chmod(0o600)
    agent = build_agent(AgentConfig(listen="127.0.0.1:0", tee="sim", sim_root=tmp / "root",
                                    data_dir=tmp / "agent", owners=[owner.public_bytes]))
    workload = load_workload(EXAMPLE)
    policy = Policy(allow_sim=True)
    out: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        address = await nursery.start(agent.run)
        deploy_t, bare_t = [], []
        keep = ""
        for _ in range(rounds):
            bare_t.append(bare_instantiate(workload.module))
            t0 = time.perf_counter()
            deployment = make_deployment(workload.manifest, workload.module,
                                         workload.policy_text, owner.seed, time.time(),
                                         random.SystemRandom())
            client = await open_client(address, roots=[tmp / "root" / "ark.pem"],
                                       key_path=key_path, policy=policy, fresh=True)
            sealed, _ = seal_package(workload.module, client.peer_key)
            resp = await client.call("keeps.deploy", {"deployment": deployment.to_fields(),
                                                      "package": sealed.to_fields()})
            deploy_t.append(time.perf_counter() - t0)
            keep = resp["keep"]
            await client.aclose()
        d, b = statistics.median(deploy_t) * 1000, statistics.median(bare_t) * 1000
        out["deploy_ms"] = {"end_to_end_over_quic": round(d, 2), "bare_wasmtime": round(b, 2)}
        out["ratio_deploy_vs_bare_instantiate"] = round(d / b, 1)

        client = await open_client(address, roots=[tmp / "root" / "ark.pem"],
                                   key_path=key_path, policy=policy)
        call_t, raw_t = [], []
        for _ in range(calls):  # interleaved so noise hits both alike
            t0 = time.perf_counter()
            await client.call("keeps.call", {"keep": keep, "message": b"get"})
            call_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await client.call("agent.status", {})
            raw_t.append(time.perf_counter() - t0)
        await client.aclose()
        c, r = statistics.median(call_t) * 1000, statistics.median(raw_t) * 1000
        out["call_ms"] = {"keeps_call_read_only": round(c, 3),
                          "status_rpc_same_channel": round(r, 3)}
        out["ratio_call_vs_raw_rpc"] = round(c / r, 2)
        nursery.cancel_scope.cancel()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(trio.run(measure, Path(d), args.rounds, args.calls), indent=2))


if __name__ == "__main__":
    main()
