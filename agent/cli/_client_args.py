"""Flags every client verb shares, and running one attested call from the CLI."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from keepmesh.agent.cli import CommandError

DEFAULT_AGENT = "127.0.0.1:7400"


def add_client_flags(p: argparse.ArgumentParser) -> None:
    default = os.environ.get("KEEPMESH_AGENT", DEFAULT_AGENT)
    p.add_argument("--agent", default=default, metavar="HOST:PORT",
                   help=f"agent to talk to (default $KEEPMESH_AGENT or {DEFAULT_AGENT})")
    p.add_argument("--root", action="append", default=[], type=Path, metavar="PEM",
                   help="extra trusted root for the agent's evidence, e.g. a sim root's ark.pem")
    p.add_argument("--key", type=Path, metavar="FILE",
                   help="operator/owner key (default: created under ~/.config/keepmesh)")
    p.add_argument("--json", action="store_true", help="print one JSON document")


def run_call(args: argparse.Namespace, fn: Callable[[Any], Awaitable[int]], *,
             policy: Any = None, fresh: bool = False) -> int:
    """Connect (attested), run `fn(client)`, close; exceptions become one-line errors."""
    from keepmesh.agent.client import open_client
    from keepmesh.protocol.errors import ProtocolError

    async def main() -> int:
        client = await open_client(args.agent, roots=args.root, key_path=args.key,
                                   policy=policy, fresh=fresh)
        try:
            return await fn(client)
        finally:
            await client.aclose()

    try:
        return trio.run(main)
    except ProtocolError as err:
        raise CommandError(err.reason) from None
    except OSError as err:
        raise CommandError(f"{type(err).__name__}: {err}") from None


def print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True))


def check_list(value: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise CommandError(f"agent sent a malformed {what} list")
    return value
