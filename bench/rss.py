"""Idle RSS of one real `keepmesh agent` process with 1, 20 and 100 real peers.

    .venv/bin/python bench/rss.py [--peers 1 20 100] [--settle 10]

Every agent is its own `keepmesh agent --tee sim` process on loopback (peer i
on its own 127.0.x.y address, as peers on distinct hosts would be). The
measured agent starts first; peers join it, in batches, until it reports that
many live attested sessions (`agent.status` "peers"); then nothing is asked of
the mesh for `--settle` seconds and the measured agent's VmRSS is sampled
(median of 5 samples over 2 s). Peers are added to the same mesh for the next
size, so each figure is the same process at a larger mesh.

Prints one JSON document. Baseline: the measured agent with the smallest peer
count, in this run; ratios and the per-peer increment are against it.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def live_sessions(address: str, root: Path, key: Path) -> int:
    """The measured agent's count of live attested peer sessions (-1 if it did not answer)."""
    from keepmesh.agent.client import open_client

    async def go() -> int:
        with trio.fail_after(20):
            client = await open_client(address, roots=[root / "ark.pem"], key_path=key)
            try:
                return int((await client.call("agent.status", {}))["peers"])
            finally:
                await client.aclose()
    try:
        return trio.run(go)
    except Exception:  # an overloaded agent may not answer in time: try again later
        return -1


def peer_listen(i: int) -> str:
    """A distinct loopback address per peer (Linux routes all of 127/8 to lo).

    Why: the agent admits at most MAX_CONNECTIONS_PER_HOST (64) connections per
    source address, so 100 peers all on 127.0.0.1 would measure that cap, not a
    100-peer agent.
    """
    return f"127.0.{i // 250 + 1}.{i % 250 + 2}:0"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, nargs="+", default=[1, 20, 100])
    ap.add_argument("--settle", type=float, default=10.0, help="idle seconds before sampling")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="seconds to wait for the sessions of one size")
    args = ap.parse_args()
    sizes = sorted(set(args.peers))
    if sizes[0] < 1 or sizes[-1] > 200:
        ap.error("--peers must be in 1..200")
    from keepmesh.agent.localmesh import AgentProcess
    from keepmesh.agent.tee.sim import init_sim_root

    points: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        root = tmp / "root"
        init_sim_root(root, key_bits=2048)
        key = tmp / "op.key"
        measured = AgentProcess(tmp / "measured", root)
        peers: list[AgentProcess] = []
        failed = 0  # peer processes that did not start (counted, not retried)
        try:
            with cf.ThreadPoolExecutor(max_workers=4) as pool:
                for k in sizes:
                    t0 = time.monotonic()
                    def start(i: int) -> AgentProcess | None:
                        try:
                            return AgentProcess(tmp / f"peer{i}", root, listen=peer_listen(i),
                                                join=[measured.address])
                        except RuntimeError:  # did not start in time (it was killed)
                            return None

                    started = list(pool.map(start, range(len(peers) + failed, k)))
                    peers += [p for p in started if p is not None]
                    failed += sum(1 for p in started if p is None)
                    got = 0
                    while time.monotonic() - t0 < args.timeout:
                        got = live_sessions(measured.address, root, key)
                        if got >= k:
                            break
                        time.sleep(1.0)
                    connect_s = time.monotonic() - t0
                    time.sleep(args.settle)
                    samples = []
                    for _ in range(5):
                        samples.append(rss_kb(measured.proc.pid))
                        time.sleep(0.5)
                    after = live_sessions(measured.address, root, key)
                    points.append({"peers": k, "peer_processes": len(peers),
                                   "peers_failed_to_start": failed,
                                   "live_sessions_before": got,
                                   "live_sessions_after": after,
                                   "seconds_to_connect": round(connect_s, 1),
                                   "rss_mb": round(statistics.median(samples) / 1024, 1)})
                    print(f"bench/rss.py: {k} peers: {points[-1]}", file=sys.stderr)
        finally:
            with cf.ThreadPoolExecutor(max_workers=16) as stopper:
                list(stopper.map(lambda p: p.stop(timeout=5), [measured, *peers]))
    base = points[0]
    for p in points:
        p["ratio_vs_baseline"] = round(p["rss_mb"] / base["rss_mb"], 3)
        if p is not base:
            p["mb_per_added_peer"] = round((p["rss_mb"] - base["rss_mb"])
                                           / (p["peers"] - base["peers"]), 3)
    doc = {"benchmark": "rss", "what": "VmRSS of one idle keepmesh agent process "
           "(sim TEE) with N real peer agent processes joined to it",
           "baseline_peers": base["peers"], "points": points, "target_mb_at_100_peers": 60,
           "complete": all(p["live_sessions_before"] >= p["peers"] for p in points),
           "cpu_count": os.cpu_count()}
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
