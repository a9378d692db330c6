"""Mesh verbs: `keepmesh peers`, `status`, `members`, `join`, `leave`."""

from __future__ import annotations

import argparse
from typing import Any

from keepmesh.agent.cli import CommandError
from keepmesh.agent.cli._client_args import add_client_flags, check_list, run_call, text
from keepmesh.agent.cli._output import fmt_time, print_json, print_table


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
    p = sub.add_parser("join", help="make the agent join a mesh through these agents (none: "
                                    "re-join through its own seeds and discovered agents)")
    # Optional, as the contract says (DESIGN.md): an agent that lost its mesh is told to
    # try its --join seeds again without the operator having to know them.
    p.add_argument("seeds", nargs="*", metavar="HOST:PORT", type=text)
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
        print_table(["FINGERPRINT", "ADDRESS", "TEE", "MEASUREMENT", "VERIFIED"],
                    [[r.get("fingerprint"), r.get("address"), r.get("tee"),
                      str(r.get("measurement") or "-")[:16], fmt_time(r.get("verified_at"))]
                     for r in rows], empty="no attested peers")
        return 0

    return int(run_call(args, go))


def status(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        reply = await client.call("agent.status", {})
        ev = client.peer_evidence
        reply["attested"] = ev.to_json() if ev is not None else None
        if args.json:
            print_json(reply)
            return 0
        print_table(["FIELD", "VALUE"],
                    [[key, reply.get(key)] for key in
                     ("fingerprint", "address", "tee", "tee_interface", "measurement", "peers",
                      "version", "uptime_s")])
        return 0

    return int(run_call(args, go))


def members(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        rows = check_list((await client.call("members.list", {})).get("members"), "members")
        if args.json:
            print_json(rows)
            return 0
        table = []
        for r in rows:
            claims = r.get("claims")
            if not isinstance(claims, dict):
                claims = {}
            raw_labels = r.get("labels")
            if not isinstance(raw_labels, dict):
                raw_labels = {}
            labels = ",".join(f"{k}={v}" for k, v in sorted(raw_labels.items()))
            table.append([r.get("name"), r.get("address"), r.get("state"),
                          r.get("incarnation"), claims.get("tee"), labels or "-"])
        print_table(["NAME", "ADDRESS", "STATE", "INC", "TEE", "LABELS"], table)
        return 0

    return int(run_call(args, go))


def join(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        reply = await client.call("agent.join", {"addresses": list(args.seeds)})
        joined = reply.get("joined")
        if not isinstance(joined, list) or not all(isinstance(a, str) for a in joined):
            raise CommandError("agent sent a malformed joined list")
        if args.json:
            print_json(reply)
        else:
            print("joined via " + ", ".join(a[:300] for a in joined))
        return 0

    return int(run_call(args, go))


def leave(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        reply = await client.call("agent.leave", {})
        if args.json:
            print_json(reply)
        else:
            print("left the mesh; the agent stops after gossiping its leave")
        return 0

    return int(run_call(args, go))
