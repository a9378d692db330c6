"""Attested channel cost against plain mutual-TLS aioquic, measured in the same run.

    python bench/channel.py [--n 60] [--rpc-seconds 3]

Prints one JSON document. Ratios, not absolute times, are what to compare:
the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
from keepmesh.agent.config import AgentConfig
from keepmesh.agent.identity import Identity
from keepmesh.agent.rpc import call
from keepmesh.agent.session import establish
from keepmesh.agent.startup import build_agent
from keepmesh.agent.tee.sim import init_sim_root
from keepmesh.agent.transport.quic import QuicEndpoint, QuicPeerConnection
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
            dt = time.perf_counter() - t0
            conn.close()
            return dt

        async def attested(fresh: bool) -> float:
            cfg = client.channel_config()
            cfg.expect_peer_role = "agent"
            cache = EvidenceCache() if fresh else client.evidence_cache
            if fresh:
                server.evidence_cache.forget(client.identity.public_bytes)
                cfg.demand_fresh = True
            t0 = time.perf_counter()
            conn = await client.endpoint.connect(host, int(port))
            await establish(conn, identity=client.identity, attester=client.attester,
                            config=cfg, cache=cache, rng=client.rng)
            dt = time.perf_counter() - t0
            conn.close()
            return dt

        # Request/response rate first, while the mesh is quiet: the handshake loop
        # below leaves closed sessions that membership then re-dials in the background.
        # Attested RPC vs a raw aioquic stream, 100-byte payloads.
        session = await client.connect(addr)
        raw = await client.endpoint.connect(*plain_addr)
        payload = {"pad": "x" * 100}
        raw_payload = b"x" * 100

        async def raw_rr() -> None:
            stream = raw.open_stream()
            stream.send(raw_payload, end=True)
            while await stream.receive_some():
                pass

        async def rpc_rr() -> None:
            await call(session, "agent.status", payload)

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
        await attested(False)  # warm caches (evidence both ways, chain cache)
        plain_t, known_t, fresh_t = [], [], []
        for _ in range(n):  # interleave so noise hits all three alike
            plain_t.append(await plain_handshake())
            known_t.append(await attested(False))
            fresh_t.append(await attested(True))
            await trio.sleep(0.002)
        p, k, f = (statistics.median(x) * 1000 for x in (plain_t, known_t, fresh_t))
        results["handshake_ms"] = {"plain_mutual_tls": round(p, 3),
                                   "attested_known_peer": round(k, 3),
                                   "attested_new_peer_fresh_evidence": round(f, 3)}
        results["ratio_known_peer_vs_plain"] = round(k / p, 3)
        results["ratio_new_peer_vs_plain"] = round(f / p, 3)
        results["targets"] = {"known_peer": 1.3, "new_peer": 2.0, "rpc": 0.9}

        nursery.cancel_scope.cancel()
    return results


def idle_rss_mb(tmp: Path) -> float:
    """RSS of a real `keepmesh agent` process, idle after start-up."""
    proc = subprocess.Popen([sys.executable, "-m", "keepmesh.agent.cli", "agent", "--tee", "sim",
                             "--sim-root", str(tmp / "root"), "--data-dir", str(tmp / "idle"),
                             "--listen", "127.0.0.1:0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "listening on" in line and line.startswith("keepmesh agent"):
                break
        time.sleep(2.0)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        kb = int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS")).split()[1])
        return round(kb / 1024, 1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=60, help="handshakes per variant (median)")
    ap.add_argument("--rpc-seconds", type=float, default=5.0,
                    help="seconds of request/response per variant (in 10 interleaved windows)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        out = trio.run(bench, args.n, args.rpc_seconds, tmp)
        out["idle_agent_rss_mb"] = idle_rss_mb(tmp)
        out["idle_rss_target_mb"] = 60
    out["cpu_count"] = os.cpu_count()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
