"""Attested channel cost against plain mutual-TLS aioquic, measured in the same run.

    python bench/channel.py [--n 30] [--rpc-seconds 5]

Handshake clocks stop when BOTH sides are established: the client's first
request on the new connection has been answered (the server answers only
after it verified the client and adopted the session). Variants:

* plain mutual TLS (raw aioquic endpoint): connect + first stream echoed;
* attested, known peer: the running client agent again (warm evidence and
  chain caches on both sides);
* attested, new peer: a never-seen agent every time: fresh identity, fresh sim
  chip and VCEK (its own data dir), empty evidence and chain caches on the
  client, and the server's chain cache emptied before each attempt.

Building the new peer (key generation, VCEK issuance) happens before the
clock starts. Idle memory is bench/rss.py (real peers), not here.

Prints one JSON document. Ratios, not absolute times, are what to compare:
the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from keepmesh.agent.config import AgentConfig
from keepmesh.agent.identity import Identity
from keepmesh.agent.rpc import call
from keepmesh.agent.session import establish
from keepmesh.agent.startup import build_agent
from keepmesh.agent.tee.sim import init_sim_root
from keepmesh.agent.transport.quic import QuicEndpoint, QuicPeerConnection
from keepmesh.protocol.attestation.certs import ChainCache
from keepmesh.protocol.channel import EvidenceCache


async def echo_server(conn: QuicPeerConnection) -> None:
    """Raw aioquic baseline: answer each stream with what it carried."""
    try:
        await conn.wait_handshake()
        while True:
            stream = await conn.accept_stream()
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
            stream.send(data, end=True)
    except Exception:
        pass


async def bench(n: int, rpc_seconds: float, tmp: Path) -> dict[str, object]:
    init_sim_root(tmp / "root", key_bits=2048)
    server = build_agent(AgentConfig(listen="127.0.0.1:0", tee="sim", sim_root=tmp / "root",
                                     data_dir=tmp / "server"))
    client = build_agent(AgentConfig(listen="127.0.0.1:0", tee="sim", sim_root=tmp / "root",
                                     data_dir=tmp / "client"))
    plain = QuicEndpoint(Identity.generate())
    plain.on_accept = echo_server
    results: dict[str, object] = {}
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(server.run)
        await nursery.start(client.run)
        plain_addr = await nursery.start(plain.serve, "127.0.0.1", 0)
        host, port = addr.rsplit(":", 1)

        async def plain_handshake() -> float:
            t0 = time.perf_counter()
            conn = await client.endpoint.connect(*plain_addr)
            stream = conn.open_stream()
            stream.send(b"x", end=True)
            while await stream.receive_some():
                pass  # echoed: the server side is up and answered
            dt = time.perf_counter() - t0
            conn.close()
            return dt

        async def attested(agent: object, fresh: bool) -> float:
            a: Any = agent
            cfg = a.channel_config()
            cfg.expect_peer_role = "agent"
            cache = a.evidence_cache
            if fresh:
                server.chain_cache = ChainCache()  # server verifies the new chain cold
                cache = EvidenceCache()
            t0 = time.perf_counter()
            conn = await a.endpoint.connect(host, int(port))
            session = await establish(conn, identity=a.identity, attester=a.attester,
                                      config=cfg, cache=cache, rng=a.rng)
            await call(session, "agent.status", {})  # answered: both sides established
            dt = time.perf_counter() - t0
            conn.close()
            return dt

        async def new_peer(i: int) -> float:
            fresh = build_agent(AgentConfig(listen="127.0.0.1:0", tee="sim",
                                            sim_root=tmp / "root", data_dir=tmp / f"new{i}"))
            assert fresh.identity.public_bytes != client.identity.public_bytes
            async with trio.open_nursery() as inner:
                await inner.start(fresh.endpoint.serve, "127.0.0.1", 0)
                dt = await attested(fresh, True)
                inner.cancel_scope.cancel()
            return dt

        # Request/response rate first, while the mesh is quiet: the handshake loop
        # below leaves closed sessions that membership then re-dials in the background.
        # Attested RPC vs a raw aioquic stream, 100-byte payloads.
        session = await client.connect(addr)
        raw = await client.endpoint.connect(*plain_addr)
        payload = {"pad": "x" * 100}

        async def echo(ctx: object, body: dict[str, Any]) -> dict[str, Any]:
            return body  # agent.status takes no fields (it refuses `pad`)

        server.register({"bench.echo": echo})
        raw_payload = b"x" * 100

        async def raw_rr() -> None:
            stream = raw.open_stream()
            stream.send(raw_payload, end=True)
            while await stream.receive_some():
                pass

        async def rpc_rr() -> None:
            await call(session, "bench.echo", payload)

        windows = 10  # short interleaved windows: background noise hits both variants alike

        async def rate(fn: object) -> float:
            count = 0
            deadline = time.perf_counter() + rpc_seconds / windows
            while time.perf_counter() < deadline:
                await fn()  # type: ignore[operator]
                count += 1
            return count / (rpc_seconds / windows)

        for _ in range(4):  # warm up: first calls pay for agent start-up work and allocations
            await rate(raw_rr)
            await rate(rpc_rr)
        raw_rates, rpc_rates = [], []
        for _ in range(windows):
            raw_rates.append(await rate(raw_rr))
            rpc_rates.append(await rate(rpc_rr))
        r_raw, r_rpc = statistics.median(raw_rates), statistics.median(rpc_rates)
        results["rpc_per_s"] = {"raw_aioquic_stream": round(r_raw), "attested_rpc": round(r_rpc)}
        results["ratio_rpc_vs_raw"] = round(r_rpc / r_raw, 3)
        await attested(client, False)  # warm caches (evidence both ways, chain cache)
        await plain_handshake()
        plain_t, known_t, fresh_t = [], [], []
        for i in range(n):  # interleave so noise hits all three alike
            plain_t.append(await plain_handshake())
            known_t.append(await attested(client, False))
            fresh_t.append(await new_peer(i))
            await trio.sleep(0.002)
        p, k, f = (statistics.median(x) * 1000 for x in (plain_t, known_t, fresh_t))
        results["handshake_ms"] = {"plain_mutual_tls": round(p, 3),
                                   "attested_known_peer": round(k, 3),
                                   "attested_new_peer": round(f, 3)}
        results["handshake_clock"] = "until the first request on the connection is answered"
        results["ratio_known_peer_vs_plain"] = round(k / p, 3)
        results["ratio_new_peer_vs_plain"] = round(f / p, 3)
        results["targets"] = {"known_peer": 1.3, "new_peer": 2.0, "rpc": 0.9}

        nursery.cancel_scope.cancel()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=30, help="handshakes per variant (median)")
    ap.add_argument("--rpc-seconds", type=float, default=5.0,
                    help="seconds of request/response per variant (in 10 interleaved windows)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        out = trio.run(bench, args.n, args.rpc_seconds, tmp)
    out["cpu_count"] = os.cpu_count()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
