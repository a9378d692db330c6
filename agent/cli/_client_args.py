"""Flags every client verb shares, and running one attested call from the CLI."""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from keepmesh.agent.cli import CommandError, add_root_flag
from keepmesh.agent.cli._output import print_json

__all__ = ["add_client_flags", "check_list", "client_options", "int_in", "print_json",
           "run_call", "text"]

DEFAULT_AGENT = "127.0.0.1:7400"


def add_client_flags(p: argparse.ArgumentParser) -> None:
    default = os.environ.get("KEEPMESH_AGENT", DEFAULT_AGENT)
    p.add_argument("--agent", default=default, metavar="HOST:PORT",
                   help=f"agent to talk to (default $KEEPMESH_AGENT or {DEFAULT_AGENT})")
    add_root_flag(p, "extra trusted roots for the agent's evidence, e.g. a sim root's ark.pem",
                  type=Path)
    p.add_argument("--key", type=Path, metavar="FILE",
                   help="operator/owner key (default: created under ~/.config/keepmesh)")
    p.add_argument("--collateral", type=Path, metavar="FILE",
                   help="Intel TCB info, QE identity and CRLs (a file or a directory of them) "
                        "applied to the agent's evidence, as the agent's `collateral` key; "
                        "needed to accept real SGX/TDX agents (their TCB status is otherwise "
                        "unknown, which the default policy refuses)")
    p.add_argument("--json", action="store_true", help="print one JSON document")


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """open_client's keyword arguments from the shared flags (--root, --key, --collateral);
    collateral is read once per command and applied to every agent it connects to. An
    unreadable or invalid --collateral fails the command (never silently ignored)."""
    path = getattr(args, "collateral", None)
    loaded = getattr(args, "_collateral_loaded", None)
    if path is not None and loaded is None:
        from keepmesh.agent.startup import StartupError, load_agent_collateral
        try:
            loaded = load_agent_collateral(Path(path))
        except StartupError as err:
            raise CommandError(f"--collateral: {err}") from None
        except ValueError:  # e.g. a NUL byte in the path (only possible in-process)
            raise CommandError("--collateral: not a usable path") from None
        args._collateral_loaded = loaded
    return {"roots": args.root, "key_path": args.key, "collateral": loaded}


def run_call(args: argparse.Namespace, fn: Callable[[Any], Awaitable[int]], *,
             policy: Any = None, fresh: bool = False) -> int:
    """Connect (attested), run `fn(client)`, close; exceptions become one-line errors."""
    from keepmesh.agent.client import open_client
    from keepmesh.protocol.errors import ProtocolError

    options = client_options(args)

    async def main() -> int:
        client = await open_client(args.agent, policy=policy, fresh=fresh, **options)
        try:
            return await fn(client)
        finally:
            await client.aclose()

    try:
        return trio.run(main)
    except ProtocolError as err:
        raise CommandError(err.reason) from None
    except OSError as err:
        raise CommandError(f"agent {args.agent}: {err.strerror or err}") from None


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer within [lo, hi], else a one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text[:40]} is out of range {lo}..{hi}")
        return value

    parse.__name__ = "integer"
    return parse


def text(value: str) -> str:
    """An argparse type for words sent to an agent (a keep ID, a seed address): text.

    A command-line argument that is not valid UTF-8 arrives with surrogate escapes, which
    no message can carry (encoding it was an internal UnicodeEncodeError); it is a usage
    error naming the argument instead. File paths do not use this: any bytes name a file."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("not valid UTF-8 text") from None
    return value


text.__name__ = "text"


def check_list(value: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise CommandError(f"agent sent a malformed {what} list")
    return value
