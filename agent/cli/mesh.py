"""Mesh verbs: `keepmesh peers`, `status`, `members`, `join`, `leave`."""

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
    p = sub.add_parser("members", help="the agent's membership view (SWIM)")
    add_client_flags(p)
    p.set_defaults(func=members)
    p = sub.add_parser("join", help="make the agent join a mesh through these agents")
    p.add_argument("seeds", nargs="+", metavar="HOST:PORT")
    add_client_flags(p)
    p.set_defaults(func=join)
    p = sub.add_parser("leave", help="make the agent leave the mesh gracefully, then stop")
    add_client_flags(p)
    p.set_defaults(func=leave)


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


def members(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        rows = check_list((await client.call("members.list", {})).get("members"), "members")
        if args.json:
            print_json(rows)
            return 0
        print(f"{'NAME':34} {'ADDRESS':22} {'STATE':10} {'INC':>4} {'TEE':4} LABELS")
        for r in rows:
            claims = r.get("claims") or {}
            labels = ",".join(f"{k}={v}" for k, v in sorted((r.get("labels") or {}).items()))
            print(f"{str(r.get('name')):34} {str(r.get('address')):22} {str(r.get('state')):10} "
                  f"{r.get('incarnation')!s:>4} {str(claims.get('tee')):4} {labels}")
        return 0

    return run_call(args, go)


def join(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        reply = await client.call("agent.join", {"addresses": list(args.seeds)})
        if args.json:
            print_json(reply)
        else:
            print("joined via " + ", ".join(reply.get("joined", [])))
        return 0

    return run_call(args, go)


def leave(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        reply = await client.call("agent.leave", {})
        if args.json:
            print_json(reply)
        else:
            print("left the mesh; the agent stops after gossiping its leave")
        return 0

    return run_call(args, go)
