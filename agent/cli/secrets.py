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
import dataclasses
import os
import random
import time
from pathlib import Path
from typing import Any

from keepmesh.agent.cli import CommandError
from keepmesh.agent.cli._client_args import add_client_flags, run_call, text
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
        got = os.environb.get(os.fsencode(args.env))  # any bytes, as the shell set them
        if got is None:
            raise CommandError(f"environment variable {args.env} is not set")
        value = got
    if len(value) > MAX_SECRET:
        raise CommandError(f"secret of {len(value)} bytes, more than {MAX_SECRET}")
    return value


def _find_keep(keeps: Any, wanted: str) -> dict[str, Any]:
    """The row of the keep `wanted` names (full id or a unique prefix of >= 8 chars); a
    replicated keep may have several rows (one per copy), which name one keep."""
    if not isinstance(keeps, list):
        raise CommandError("agent sent a malformed keep list")
    matches = [k for k in keeps if isinstance(k, dict) and isinstance(k.get("keep"), str)
               and k["keep"].startswith(wanted)]
    exact = [k for k in matches if k["keep"] == wanted]
    if exact:
        return exact[0]
    if matches and len(wanted) < 8:
        raise CommandError(f"keep id prefix {wanted!r} is shorter than 8 characters")
    if len({k["keep"] for k in matches}) != 1:
        raise CommandError(f"no keep {wanted[:64]!r} of this owner"
                           if not matches else f"keep id {wanted!r} is ambiguous")
    return matches[0]


def _summary(keeps: Any, keep_id: str) -> dict[str, Any]:
    """This agent's own summary of its copy (the row with the deployment digest and
    serial; rows for copies elsewhere are `remote` and carry no serial)."""
    rows = keeps if isinstance(keeps, list) else []
    for row in rows:
        if isinstance(row, dict) and row.get("keep") == keep_id and "deployment" in row \
                and not row.get("remote"):
            return row
    return _find_keep(keeps, keep_id)


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

    async def rotate(copies: list[_Copy], failed: list[tuple[str, str]]) -> int:
        # One update for every copy: the same serial (newer than any copy's), so each
        # replica checks the same owner-signed record and none can be rolled back.
        try:
            digests = {bytes.fromhex(str(c.summary.get("deployment"))) for c in copies}
            serial = max(int(time.time() * 1000),
                         *(int(c.summary.get("secrets_serial") or 0) + 1 for c in copies))
        except (TypeError, ValueError):
            raise CommandError("agent sent a malformed keep summary") from None
        if len(digests) != 1 or len(digest := digests.pop()) != 32:
            raise CommandError("agent sent a malformed keep summary")
        key = derive_deployment_key(seed, digest)
        record = InputValue(name=args.name, salt=rng.randbytes(SALT_LEN), value=value)
        keep_id = str(copies[0].summary["keep"])
        try:
            update = make_secret_update(
                keep_id, args.name, serial,
                input_digest("secret", args.name, record.salt, value),
                seal_value(key, record), seed)
        except ProtocolError as err:
            raise CommandError(err.reason) from None
        done: list[tuple[str, dict[str, Any]]] = []
        for c in copies:
            try:
                resp = await c.client.call("keeps.secret_set", {"update": update.to_fields()})
            except (CommandError, ProtocolError, OSError) as err:
                if len(copies) + len(failed) == 1:
                    raise
                failed.append((c.host, _reason(err)))
                continue
            done.append((c.host, resp))
        if failed:
            host, reason = failed[0]
            if not done and len({r for _, r in failed}) == 1:
                raise CommandError(reason)
            raise CommandError(f"secret {args.name} replaced on {len(done)} of "
                               f"{len(done) + len(failed)} copies of keep {keep_id}; "
                               f"not on {host}: {reason}")
        resp = done[0][1]
        doc = {"keep": resp.get("keep"), "name": resp.get("name"),
               "serial": resp.get("serial"), "hosts": [h for h, _ in done]}
        if args.json:
            from keepmesh.agent.cli._output import print_json

            print_json(doc)  # one JSON format for every verb
        else:
            where = f" on {len(done)} copies" if len(done) > 1 else ""
            print(f"keep {doc['keep']}: secret {doc['name']} replaced{where} (serial "
                  f"{doc['serial']}); the keep sees it from its next invocation")
        return 0

    async def go(client: Any) -> int:
        failed: list[tuple[str, str]] = []
        copies = await _copies(client, args, failed)
        try:
            if not copies:
                host, reason = failed[0]
                raise CommandError(reason if len(failed) == 1 else f"{host}: {reason}")
            return await rotate(copies, failed)
        finally:
            for c in copies:
                if c.client is not client:
                    await c.client.aclose()

    code: int = run_call(args, go)
    return code


def _reason(err: BaseException) -> str:
    if isinstance(err, ProtocolError):
        return err.reason
    if isinstance(err, OSError):
        return err.strerror or str(err)
    return str(err)


@dataclasses.dataclass
class _Copy:
    summary: dict[str, Any]
    client: Any
    host: str


async def _copies(client: Any, args: argparse.Namespace,
                  failed: list[tuple[str, str]]) -> list[_Copy]:
    """Every running copy of the keep: its host's own summary and a client connected there.

    Any agent can be named with --agent. A keep migration tracks runs in one place (its
    signed record, `migrate.where`); a replicated keep (`deploy --replicas N`) runs on N
    hosts, each of which must get the rotation, or calls served by the others would go
    on seeing the old value. The update is sealed and signed, so the agent that told us
    where learns nothing and cannot change it. A host that cannot be reached is listed
    in `failed` (host, reason).
    """
    from keepmesh.agent.cli._client_args import client_options
    from keepmesh.agent.cli.drain import agent_id, with_locations
    from keepmesh.agent.client import open_client

    listing = await client.call("keeps.list", {})
    keeps = listing.get("keeps")
    if not isinstance(keeps, list) or not all(isinstance(k, dict) for k in keeps):
        raise CommandError("agent sent a malformed keep list")
    located = _find_keep(await with_locations(client, keeps), args.id)
    keep_id = str(located["keep"])
    here = str(agent_id(client))
    hosts: dict[str, str] = {}
    for row in (located, *keeps):
        hid, addr = row.get("host_id"), row.get("host")
        if row.get("keep") == keep_id and row.get("state") == "running" \
                and isinstance(hid, str) and hid and isinstance(addr, str) and addr:
            hosts.setdefault(hid, addr)
    if not hosts:  # a lone agent, or no running copy: the agent that has it answers
        hid, addr = located.get("host_id"), located.get("host")
        hosts = {str(hid): str(addr)} if hid and addr else {here: str(args.agent)}
    copies: list[_Copy] = []
    try:
        for hid, addr in hosts.items():
            if hid == here:
                copies.append(_Copy(_summary(keeps, keep_id), client, str(args.agent)))
                continue
            try:
                other = await open_client(addr, **client_options(args))
            except (CommandError, ProtocolError, OSError) as err:
                failed.append((addr, _reason(err)))
                continue
            try:
                if agent_id(other) != hid:
                    raise CommandError(f"agent at {addr} is not the keep's host {hid[:16]}")
                there = await other.call("keeps.list", {})
                copies.append(_Copy(_summary(there.get("keeps"), keep_id), other, addr))
            except (CommandError, ProtocolError, OSError) as err:
                await other.aclose()
                failed.append((addr, _reason(err)))
    except BaseException:
        for c in copies:
            if c.client is not client:
                await c.client.aclose()
        raise
    return copies


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("secrets", help="manage a running keep's secrets")
    sub = p.add_subparsers(dest="secrets_command", required=True, metavar="ACTION")
    s = sub.add_parser("set", help="replace one secret of a keep (owner-signed, sealed "
                                   "under the deployment's key)")
    s.add_argument("id", metavar="ID", type=text, help="keep id (or a unique prefix of ≥ 8 chars)")
    s.add_argument("name", metavar="NAME", type=text, help="a secret the deployment declares")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", metavar="F", help="read the new value from this file")
    src.add_argument("--env", metavar="VAR", help="read the new value from this variable")
    add_client_flags(s)
    s.set_defaults(func=cmd_secrets_set)
