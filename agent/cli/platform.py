"""`keepmesh platform info`: which TEE evidence interfaces this host has, and why not.

Why: like `enarx platform info`, an operator must see at a glance whether
the agent can produce hardware evidence before joining a mesh.
"""

from __future__ import annotations

import argparse
from typing import Any

from keepmesh.agent.cli import CommandError
from keepmesh.agent.cli._output import print_json


def register(subparsers: Any) -> None:
    platform = subparsers.add_parser("platform", help="inspect this host's TEE support")
    verbs = platform.add_subparsers(dest="platform_command", required=True, metavar="VERB")
    info = verbs.add_parser("info", help="list TEE interfaces: present, or why missing")
    info.add_argument("--json", action="store_true", help="print one JSON document")
    info.add_argument("--root", default="/", help=argparse.SUPPRESS)  # fake trees in tests
    info.set_defaults(func=run_info)


def run_info(args: argparse.Namespace) -> int:
    from keepmesh.agent.tee.detect import probe_platform

    try:  # --root is the fake tree of tests: a path that cannot even be looked up fails
        interfaces = probe_platform(args.root)
    except OSError as err:
        raise CommandError(f"--root {str(args.root)[:200]}: {err.strerror or err}") from None
    usable = [i for i in interfaces if i.available]
    if args.json:
        print_json({"interfaces": [i.to_json() for i in interfaces],
                    "usable": [i.name for i in usable],
                    "tee": usable[0].kind if usable else None})
        return 0
    for i in interfaces:
        mark = "yes" if i.available else "no "
        print(f"[{mark}] {i.name:<13} {i.kind:<8} {i.reason}")
    if not usable:
        print("no hardware TEE interface usable; only `--tee sim --sim-root DIR` (insecure)")
    return 0
