"""`keepmesh drain --agent HOST:PORT [--json]`: move every keep off an agent.

Why a verb: planned maintenance (a host to patch, a TCB update to apply)
must not lose state or answer a call twice. The agent hands each keep to a
standby with a final checkpoint taken while the keep is paused
(specs/migration.md §6); the command waits until every keep has moved and
exits 0, or names the keeps that could not move and exits 1.
"""

from __future__ import annotations

import argparse
from typing import Any

from keepmesh.agent.cli import CommandError
from keepmesh.agent.cli._client_args import add_client_flags, print_json, run_call


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("drain", help="hand every keep on the agent over to its standbys")
    add_client_flags(p)
    p.set_defaults(func=drain)


def _check_reply(reply: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The agent's answer is untrusted input too: shape checked before it is printed."""
    if not isinstance(reply, dict):
        raise CommandError("agent.drain: malformed reply")
    moved, failed = reply.get("moved"), reply.get("failed", [])
    if not isinstance(moved, list) or not isinstance(failed, list) or \
            len(moved) > 100_000 or len(failed) > 100_000:
        raise CommandError("agent.drain: malformed reply")
    out = []
    for m in moved:
        if not isinstance(m, dict) or not isinstance(m.get("keep"), str) or \
                not isinstance(m.get("epoch"), int):
            raise CommandError("agent.drain: malformed entry in 'moved'")
        out.append({"keep": m["keep"][:64], "from": m.get("from"), "to": m.get("to"),
                    "to_id": m.get("to_id"), "epoch": m["epoch"]})
    bad = [{"keep": str(f.get("keep"))[:64], "reason": str(f.get("reason"))[:200]}
           for f in failed if isinstance(f, dict)]
    return out, bad


def drain(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        reply = await client.call("agent.drain", {})
        moved, failed = _check_reply(reply)
        if args.json:
            print_json({"moved": moved, "failed": failed})
        else:
            for m in moved:
                print(f"{m['keep']}  {m['from']} -> {m['to']}  epoch {m['epoch']}")
            print(f"{len(moved)} keeps moved" + (f", {len(failed)} did not" if failed else ""))
        if failed:
            first = failed[0]
            raise CommandError(f"{len(failed)} keeps did not move (first: {first['keep']}: "
                               f"{first['reason']})")
        return 0

    return run_call(args, go)


LOCATION_FIELDS = ("host", "host_id", "epoch", "standbys", "last_checkpoint")
# States migrate.where derives from the agent's view (its host dead or left): they say more
# than the `running` a keeps.list row carries for a keep placed elsewhere.
VIEW_STATES = ("moving", "orphaned")


async def with_locations(client: Any, keeps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`keeps` (this agent's local list) plus where each of the caller's keeps runs as
    this agent's migration view has it (`migrate.where`): `host`, `host_id`, `epoch`,
    `standbys`, `last_checkpoint`; keeps running elsewhere are added with their
    location's state. An agent without migration leaves the list as it is.

    Rows: one per keep migration tracks (its signed record is the one place it runs),
    one per running copy for any other keep (placement's replicas: `deploy --replicas
    N` lists N rows, each with its `host`, `host_id`, `epoch`), specs/keeps.md §7."""
    try:
        reply = await client.call("migrate.where", {})
    except CommandError:
        return one_row_per_copy(keeps, set())
    where = reply.get("keeps") if isinstance(reply, dict) else None
    if not isinstance(where, list):
        return one_row_per_copy(keeps, set())
    index = {w["keep"]: w for w in where
             if isinstance(w, dict) and isinstance(w.get("keep"), str)}
    keeps = one_row_per_copy(keeps, set(index))
    out = []
    for k in keeps:
        w = index.pop(str(k.get("keep")), None)
        if w is not None:
            k = dict(k)
            k.update({f: w.get(f) for f in LOCATION_FIELDS})
            if w.get("state") in VIEW_STATES:  # the mesh's view overrides a host's "running"
                k["state"] = w["state"]
            if w.get("host_id") != agent_id(client) and w.get("state") == "running" \
                    and not k.get("remote"):  # rows placement lists from elsewhere
                k["state"] = "moved"  # the local copy stopped; it runs at `host`
        out.append(k)
    for keep_id, w in sorted(index.items()):
        out.append({"keep": keep_id, "state": w.get("state"), "owner": w.get("owner"),
                    **{f: w.get(f) for f in LOCATION_FIELDS}})
    return out


def one_row_per_copy(keeps: list[dict[str, Any]], tracked: set[str]) -> list[dict[str, Any]]:
    """An agent may list a keep more than once: its own stopped copy beside the copy
    placement or migration says runs elsewhere, or a replicated keep's copies on several
    hosts. A keep in `tracked` (migration's) keeps one row, the running one if any; any
    other keeps one row per host running it (every copy must show, or a user stopping
    or counting replicas is misled), or its first row when none runs."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for k in keeps:
        rows.setdefault(str(k.get("keep")), []).append(k)
    out = []
    for keep, group in rows.items():
        running = [k for k in group if k.get("state") == "running"]
        if keep in tracked or not running:
            out.append(running[0] if running else group[0])
            continue
        hosts: set[str] = set()
        for k in running:
            host = str(k.get("host_id"))
            if host not in hosts:
                hosts.add(host)
                out.append(k)
    return out


def agent_id(client: Any) -> str | None:
    """Hex identity of the agent this client is attested to."""
    key = getattr(client, "peer_key", None)
    return key.hex() if isinstance(key, bytes) else None
