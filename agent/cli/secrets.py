"""`keepmesh secrets set ID NAME --file F`: rotate one secret of a running keep.

Why the owner's CLI can do this through any agent without attesting the
keep's host again: the new value is encrypted under the deployment's key K,
which only attested hosts were ever given, and K is derived from the owner's
own key and the deployment digest (protocol/secrets.py), so nothing has to
be stored between deploy and rotation. The update is signed by the owner
and carries a serial newer than the keep's, so an agent that relays it can
neither read, alter nor replay it.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path
from typing import Any

from keepmesh.agent.cli import CommandError
from keepmesh.agent.cli._client_args import add_client_flags, run_call
from keepmesh.protocol.errors import ProtocolError


def _read_value(args: argparse.Namespace) -> bytes:
    from keepmesh.protocol.secrets import MAX_SECRET

    if args.file is not None:
        from keepmesh.agent.keeps.package import PackageError, read_regular_file

        try:
            value = read_regular_file(Path(args.file), MAX_SECRET)
        except PackageError as err:
            raise CommandError(f"{args.file}: {err.reason}") from None
    else:
        got = os.environb.get(str(args.env).encode())
        if got is None:
            raise CommandError(f"environment variable {args.env} is not set")
        value = got
    if len(value) > MAX_SECRET:
        raise CommandError(f"secret of {len(value)} bytes, more than {MAX_SECRET}")
    return value


def _find_keep(keeps: Any, wanted: str) -> dict[str, Any]:
    if not isinstance(keeps, list):
        raise CommandError("agent sent a malformed keep list")
    matches = [k for k in keeps if isinstance(k, dict) and isinstance(k.get("keep"), str)
               and k["keep"].startswith(wanted)]
    exact = [k for k in matches if k["keep"] == wanted]
    if exact:
        return exact[0]
    if matches and len(wanted) < 8:
        raise CommandError(f"keep id prefix {wanted!r} is shorter than 8 characters")
    if len(matches) != 1:
        raise CommandError(f"no keep {wanted[:64]!r} of this owner"
                           if not matches else f"keep id {wanted!r} is ambiguous")
    return matches[0]


def cmd_secrets_set(args: argparse.Namespace) -> int:
    from keepmesh.agent.cli.keeps import _owner_seed
    from keepmesh.agent.keeps.sealing import seal_value
    from keepmesh.protocol.secrets import (
        SALT_LEN,
        InputValue,
        check_secret_name,
        derive_deployment_key,
        input_digest,
        make_secret_update,
    )

    try:
        check_secret_name(args.name)
    except ProtocolError as err:
        raise CommandError(err.reason) from None
    value = _read_value(args)
    seed = _owner_seed(args)
    rng = random.SystemRandom()

    async def rotate(client: Any, keep: dict[str, Any]) -> int:
        try:
            digest = bytes.fromhex(str(keep.get("deployment")))
            serial = max(int(time.time() * 1000), int(keep.get("secrets_serial") or 0) + 1)
        except (TypeError, ValueError):
            raise CommandError("agent sent a malformed keep summary") from None
        if len(digest) != 32:
            raise CommandError("agent sent a malformed keep summary")
        key = derive_deployment_key(seed, digest)
        record = InputValue(name=args.name, salt=rng.randbytes(SALT_LEN), value=value)
        try:
            update = make_secret_update(
                str(keep["keep"]), args.name, serial,
                input_digest("secret", args.name, record.salt, value),
                seal_value(key, record), seed)
        except ProtocolError as err:
            raise CommandError(err.reason) from None
        resp = await client.call("keeps.secret_set", {"update": update.to_fields()})
        doc = {"keep": resp.get("keep"), "name": resp.get("name"),
               "serial": resp.get("serial")}
        if args.json:
            from keepmesh.agent.cli._output import print_json

            print_json(doc)  # one JSON format for every verb
        else:
            print(f"keep {doc['keep']}: secret {doc['name']} replaced (serial {doc['serial']}); "
                  "the keep sees it from its next invocation")
        return 0

    async def go(client: Any) -> int:
        keep, at_host = await _at_host(client, args)
        try:
            return await rotate(at_host, keep)
        finally:
            if at_host is not client:
                await at_host.aclose()

    code: int = run_call(args, go)
    return code


async def _at_host(client: Any, args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """The keep's summary, from the agent that runs it, and a client connected there.

    Any agent can be named with --agent: when its migration view says the keep
    runs elsewhere, the update goes to that host (it is sealed and signed, so the
    agent that told us where learns nothing and cannot change it).
    """
    from keepmesh.agent.cli.drain import agent_id, with_locations
    from keepmesh.agent.client import open_client

    listing = await client.call("keeps.list", {})
    keeps = listing.get("keeps")
    if not isinstance(keeps, list) or not all(isinstance(k, dict) for k in keeps):
        raise CommandError("agent sent a malformed keep list")
    located = _find_keep(await with_locations(client, keeps), args.id)
    host, host_id = located.get("host"), located.get("host_id")
    if not host or not host_id or host_id == agent_id(client):
        return _find_keep(keeps, str(located["keep"])), client
    from keepmesh.agent.cli._client_args import client_options
    other = await open_client(str(host), **client_options(args))
    try:
        if agent_id(other) != host_id:
            raise CommandError(f"agent at {host} is not the keep's host {host_id[:16]}")
        there = await other.call("keeps.list", {})
        return _find_keep(there.get("keeps"), str(located["keep"])), other
    except BaseException:
        await other.aclose()
        raise


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("secrets", help="manage a running keep's secrets")
    sub = p.add_subparsers(dest="secrets_command", required=True, metavar="ACTION")
    s = sub.add_parser("set", help="replace one secret of a keep (owner-signed, sealed "
                                   "under the deployment's key)")
    s.add_argument("id", metavar="ID", help="keep id (or a unique prefix of ≥ 8 chars)")
    s.add_argument("name", metavar="NAME", help="a secret the deployment declares")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", metavar="F", help="read the new value from this file")
    src.add_argument("--env", metavar="VAR", help="read the new value from this variable")
    add_client_flags(s)
    s.set_defaults(func=cmd_secrets_set)
