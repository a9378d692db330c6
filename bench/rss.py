"""Idle RSS of one real `keepmesh agent` process with 1, 20 and 100 real peers.

    .venv/bin/python bench/rss.py [--peers 1 20 100] [--settle 10] [--profile lan]
                                  [--batch 10]

Every agent is its own `keepmesh agent --tee sim` process on loopback (peer i
on its own 127.0.x.y address, as peers on distinct hosts would be). The
measured agent starts first; peers join it in batches of `--batch`, each
batch started only once the measured agent holds every peer started before
it as an alive (attested) member (or `--timeout` passed), so a hundred
joins do not land on the machine at once; then nothing is asked of the mesh
for `--settle` seconds and the measured agent's VmRSS is sampled (median of
5 samples over 2 s). Peers are added to the same mesh for the next size, so
each figure is the same process at a larger mesh.

Every agent (measured and peers) runs the membership timing `--profile`
(lan, wan or local; the JSON says which). On a 2-core machine 100 agents in
the lan profile (a probe per second, gossip every 0.2 s, each agent with a
session to every other) need more CPU than the machine has, so peers then
start late or not at all; the wan profile (a probe every 5 s) keeps a
100-agent mesh idle enough to measure. Memory per peer is about sessions and
member tables, not timer rates, but compare figures of one profile only.

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


def mesh_view(address: str, root: Path, key: Path) -> tuple[int, int]:
    """The measured agent's (live attested peer sessions, other members it holds alive);
    (-1, -1) if it did not answer."""
    from keepmesh.agent.client import open_client

    async def go() -> tuple[int, int]:
        with trio.fail_after(20):
            client = await open_client(address, roots=[root / "ark.pem"], key_path=key)
            try:
                sessions = int((await client.call("agent.status", {}))["peers"])
                rows = (await client.call("members.list", {}))["members"]
                alive = sum(1 for r in rows if r.get("state") == "alive" and not r.get("self"))
                return sessions, alive
            finally:
                await client.aclose()
    try:
        return trio.run(go)
    except Exception:  # an overloaded agent may not answer in time: try again later
        return -1, -1


def peer_listen(i: int) -> str:
    """A distinct loopback address per peer (Linux routes all of 127/8 to lo).

    Why: the agent admits at most MAX_CONNECTIONS_PER_HOST (64) connections per
    source address, so 100 peers all on 127.0.0.1 would measure that cap, not a
    100-peer agent.
    """
    return f"127.0.{i // 250 + 1}.{i % 250 + 2}:0"


def wait_members(address: str, root: Path, key: Path, want: int, timeout: float) -> int:
    """Poll until the measured agent holds `want` other members alive; the last count seen.

    Members, not sessions: an idle attested session closes after the QUIC idle
    timeout (60 s) and is re-opened on the next probe, so the session count of a
    healthy idle mesh stays below its size (more so in the slower wan profile)."""
    t0 = time.monotonic()
    got = 0
    while time.monotonic() - t0 < timeout:
        got = mesh_view(address, root, key)[1]
        if got >= want:
            break
        time.sleep(1.0)
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, nargs="+", default=[1, 20, 100])
    ap.add_argument("--settle", type=float, default=10.0, help="idle seconds before sampling")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="seconds to wait for the sessions of one batch")
    ap.add_argument("--profile", default="lan", choices=("lan", "wan", "local"),
                    help="membership timing profile of every agent (default lan)")
    ap.add_argument("--batch", type=int, default=10, help="peers started at once (default 10)")
    ap.add_argument("--start-timeout", type=float, default=300.0,
                    help="seconds one peer may take to start on a loaded machine")
    args = ap.parse_args()
    sizes = sorted(set(args.peers))
    if sizes[0] < 1 or sizes[-1] > 200 or not 1 <= args.batch <= 50:
        ap.error("--peers must be in 1..200, --batch in 1..50")
    from keepmesh.agent.localmesh import AgentProcess
    from keepmesh.agent.tee.sim import init_sim_root

    points: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        root = tmp / "root"
        init_sim_root(root, key_bits=2048)
        key = tmp / "op.key"
        conf = tmp / "agent.toml"
        conf.write_text(f'profile = "{args.profile}"\n')
        flags = ["--config", str(conf)]
        measured = AgentProcess(tmp / "measured", root, extra=flags,
                                start_timeout=args.start_timeout)
        peers: list[AgentProcess] = []
        failed = 0  # peer processes that did not start (counted, not retried)
        try:
            with cf.ThreadPoolExecutor(max_workers=4) as pool:
                def start(i: int) -> AgentProcess | None:
                    try:
                        return AgentProcess(tmp / f"peer{i}", root, listen=peer_listen(i),
                                            join=[measured.address], extra=flags,
                                            start_timeout=args.start_timeout)
                    except RuntimeError:  # did not start in time (it was killed)
                        return None

                for k in sizes:
                    t0 = time.monotonic()
                    got = 0
                    while len(peers) + failed < k:
                        first = len(peers) + failed
                        batch = range(first, min(k, first + args.batch))
                        started = list(pool.map(start, batch))
                        peers += [p for p in started if p is not None]
                        failed += sum(1 for p in started if p is None)
                        got = wait_members(measured.address, root, key, len(peers),
                                           args.timeout)
                        print(f"bench/rss.py: {len(peers)} peers started, {failed} failed, "
                              f"{got} alive members", file=sys.stderr, flush=True)
                    got = wait_members(measured.address, root, key, k, args.timeout)
                    connect_s = time.monotonic() - t0
                    time.sleep(args.settle)
                    samples = []
                    for _ in range(5):
                        samples.append(rss_kb(measured.proc.pid))
                        time.sleep(0.5)
                    sessions, alive = mesh_view(measured.address, root, key)
                    points.append({"peers": k, "peer_processes": len(peers),
                                   "peers_failed_to_start": failed,
                                   "alive_members_before": got,
                                   "alive_members_after": alive,
                                   "live_sessions_after": sessions,
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
           "membership_profile": args.profile,
           "complete": all(p["alive_members_before"] >= p["peers"] for p in points),
           "cpu_count": os.cpu_count()}
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
