"""Read-only mesh verbs: `keepmesh peers`, `keepmesh status`."""

from __future__ import annotations

import argparse
import time
from typing import Any

from keepmesh.agent.cli._client_args import add_client_flags, check_list, print_json, run_call


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("peers", help="attested peers the agent sees")
    add_client_flags(p)
    p.set_defaults(func=peers)
    p = sub.add_parser("status", help="the agent's identity, TEE and health")
    add_client_flags(p)
    p.set_defaults(func=status)


def peers(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        reply = await client.call("agent.peers", {})
        rows = check_list(reply.get("peers"), "peers")
        if args.json:
            print_json(rows)
            return 0
        print(f"{'FINGERPRINT':34} {'ADDRESS':22} {'TEE':4} {'MEASUREMENT':18} VERIFIED")
        for r in rows:
            meas = str(r.get("measurement") or "-")[:16]
            when = time.strftime("%H:%M:%S", time.localtime(float(r.get("verified_at") or 0)))
            print(f"{str(r.get('fingerprint')):34} {str(r.get('address')):22} "
                  f"{str(r.get('tee')):4} {meas:18} {when}")
        return 0

    return run_call(args, go)


def status(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        reply = await client.call("agent.status", {})
        ev = client.peer_evidence
        reply["attested"] = ev.to_json() if ev is not None else None
        if args.json:
            print_json(reply)
            return 0
        for key in ("fingerprint", "address", "tee", "tee_interface", "measurement", "peers",
                    "version", "uptime_s"):
            print(f"{key:14} {reply.get(key)}")
        return 0

    return run_call(args, go)
