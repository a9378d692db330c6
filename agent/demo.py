"""`make demo`: three agents on loopback with the sim TEE, showing who attested whom.

Runs real agent processes (the same `keepmesh agent` a user runs), waits until
each has attested the other two, prints every agent's view of its peers, then
stops them cleanly. Everything lives in a temporary directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio
from keepmesh.agent.cli import CommandError
from keepmesh.agent.client import open_client
from keepmesh.agent.localmesh import AgentProcess

AGENTS = 3
TIMEOUT_S = 60.0


async def _views(addresses: list[str], root: Path,
                 key: Path) -> list[tuple[str, dict[str, Any], list[Any]]]:
    deadline = trio.current_time() + TIMEOUT_S
    while True:
        views = []
        for address in addresses:
            client = await open_client(address, roots=[root], key_path=key)
            try:
                status = await client.call("agent.status", {})
                peers = (await client.call("agent.peers", {}))["peers"]
            finally:
                await client.aclose()
            views.append((address, status, peers))
        if all(len(v[2]) == AGENTS - 1 for v in views) or trio.current_time() > deadline:
            return views
        await trio.sleep(0.3)


def main() -> int:
    procs: list[AgentProcess] = []
    with tempfile.TemporaryDirectory(prefix="keepmesh-demo-") as tmpname:
        tmp = Path(tmpname)
        print("keepmesh demo: creating an INSECURE sim root (ARK -> ASK) for three agents ...")
        subprocess.run([sys.executable, "-m", "keepmesh.agent.cli", "sim", "init-root",
                        str(tmp / "sim-root")], check=True, stdout=subprocess.DEVNULL)
        try:
            root = tmp / "sim-root"
            procs.append(AgentProcess(tmp / "agent1", root))
            seed = procs[0].address
            for i in range(2, AGENTS + 1):
                procs.append(AgentProcess(tmp / f"agent{i}", root, join=[seed]))
            addresses = [p.address for p in procs]
            print(f"keepmesh demo: agents listening on {', '.join(addresses)}; waiting for "
                  "mutual attestation ...")
            try:
                views = trio.run(_views, addresses, tmp / "sim-root" / "ark.pem",
                                 tmp / "operator.key")
            except CommandError as err:
                print(f"keepmesh demo: {err}", file=sys.stderr)
                return 1
            ok = True
            for address, status, peers in views:
                print(f"\nagent {status['fingerprint']} at {address} (tee {status['tee']}, "
                      f"measurement {str(status['measurement'])[:16]}...) sees:")
                print(f"  {'KIND':5} {'MEASUREMENT':18} {'IDENTITY FINGERPRINT':34} ADDRESS")
                for p in peers:
                    print(f"  {p['tee']:5} {str(p['measurement'])[:16]:18} "
                          f"{p['fingerprint']:34} {p['address']}")
                ok = ok and len(peers) == AGENTS - 1
            print()
            print("keepmesh demo: every agent attested the other two" if ok else
                  "keepmesh demo: the mesh did not fully form in time")
            return 0 if ok else 1
        except RuntimeError as err:
            print(f"keepmesh demo: {err}", file=sys.stderr)
            return 1
        finally:
            for proc in procs:
                proc.stop()
            print("keepmesh demo: agents stopped")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
