"""`keepmesh` command line: one module per verb group in this package.

Each module defines `register(subparsers)` which adds its verbs and sets
`func` (taking the parsed args, returning an exit code). Modules are found
by name, so adding a verb group never edits this file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


class CommandError(Exception):
    """A command failed for a reason the user can act on (printed as one line)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keepmesh", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except CommandError as err:
        print(f"keepmesh {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
