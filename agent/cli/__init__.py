"""`keepmesh` command line: one module per verb group in this package.

Each module defines `register(subparsers)` which adds its verbs and sets
`func` (taking the parsed args, returning an exit code). Modules are found
by name, so adding a verb group never edits this file.

Every failure is one line on stderr naming what to do, and exit code 1
(2 for a usage error): a flag value never produces a traceback.
"""

from __future__ import annotations

import argparse
import contextvars
import importlib
import os
import pkgutil
import signal
import sys
import threading
from types import FrameType
from typing import Any, NoReturn

from keepmesh import __version__


class CommandError(Exception):
    """A command failed for a reason the user can act on (printed as one line)."""


class Terminated(BaseException):
    """SIGTERM arrived while the command was starting (imports, argument parsing).

    A BaseException like KeyboardInterrupt, so nothing on the way catches it.
    Why: Python's default SIGTERM kills the process with no message (exit 143);
    an agent stopped by its supervisor before it was ready should exit like one
    stopped after (0, one line). Client verbs get the default back once their
    arguments are parsed; `keepmesh agent` then takes SIGTERM over itself.
    """


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def _catch_sigterm() -> Any:
    """Raise Terminated on SIGTERM from now on; returns the handler it replaced
    (None when not on the main thread, where signal handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        if _GREEDY_ROOTS.get():
            raise _OneRootPerFlag()
        first = message.splitlines()[0] if message else "bad arguments"
        self.exit(2, f"{self.prog}: {first[:300]} (see `{self.prog} --help`)\n")

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        # argparse (3.11) turns a lone extra "--" into [] for a one-value positional
        # (`keepmesh call -- ID --` gave MSG == []): a usage error, not a list for a str.
        value = super()._get_values(action, arg_strings)
        if action.nargs is None and isinstance(value, list):
            self.error(f"argument {action.metavar or action.dest}: expected one argument")
        return value


# `--root PEM ...` (DESIGN.md) takes several roots after one flag, as `keepmesh agent` does;
# a greedy list would also swallow positionals written after it (`call --root a.pem ID MSG`).
# So a command line is read greedily first, every root an existing file, and on any usage
# error once more with one root per flag, which reports the error if it still does not fit.
_GREEDY_ROOTS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "keepmesh_greedy_roots", default=False)


class _OneRootPerFlag(Exception):
    """The greedy reading of `--root PEM ...` did not fit: read the line once more."""


def add_root_flag(p: argparse.ArgumentParser, help: str, type: Any = str) -> None:
    """The `--root PEM ...` flag, read as explained at _GREEDY_ROOTS."""
    if not _GREEDY_ROOTS.get():
        p.add_argument("--root", action="append", default=[], type=type, metavar="PEM",
                       help=help)
        return

    def existing(value: str) -> Any:
        if not os.path.isfile(value):
            raise argparse.ArgumentTypeError(f"{value[:100]}: not a file")
        return type(value)

    p.add_argument("--root", action="extend", nargs="+", default=[], type=existing,
                   metavar="PEM", help=help)


def parse_command_line(argv: list[str] | None) -> argparse.Namespace:
    token = _GREEDY_ROOTS.set(True)
    try:
        return build_parser().parse_args(argv)
    except _OneRootPerFlag:
        pass
    finally:
        _GREEDY_ROOTS.reset(token)
    return build_parser().parse_args(argv)


def version_line() -> str:
    from keepmesh.agent.cli.version import version_info
    info = version_info()
    commit = f" ({info['commit'][:12]})" if info.get("commit") else ""
    return f"keepmesh {info['version']}{commit} protocol {info['protocol']}"


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(version_line())
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="keepmesh", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]


def main(argv: list[str] | None = None) -> int:
    previous = _catch_sigterm()
    try:
        return _main(argv, previous)
    except Terminated:  # before the verb took over SIGTERM
        if not _is_agent(sys.argv[1:] if argv is None else argv):
            return 128 + signal.SIGTERM  # a client stopped before it did anything
        print("keepmesh agent: stopped by SIGTERM before it was ready", file=sys.stderr)
        return 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _is_agent(argv: list[str]) -> bool:
    """Whether this command line runs `keepmesh agent` (the verb is the first word)."""
    return bool(argv) and argv[0] == "agent"


def _main(argv: list[str] | None, previous: Any) -> int:
    if argv is not None and any("\x00" in a for a in argv):
        # A real command line cannot carry NUL (C strings); a caller passing argv can.
        print("keepmesh: an argument contains a NUL byte", file=sys.stderr)
        return 2
    args = parse_command_line(argv)
    if previous is not None and args.command != "agent":
        signal.signal(signal.SIGTERM, previous)  # client verbs: SIGTERM ends them as usual
    try:
        code = args.func(args)
    except CommandError as err:
        print(f"keepmesh {args.command}: {_one_line(str(err))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `keepmesh ... | head`: the reader left, nothing to report
        return 0
    except Exception as err:  # a bug, not the user's fault: still one line, no wall of text
        if os.environ.get("KEEPMESH_DEBUG"):
            raise
        print(f"keepmesh {args.command}: internal error {type(err).__name__}: "
              f"{_one_line(str(err))[:200]} (rerun with KEEPMESH_DEBUG=1 for a traceback "
              f"and report it)", file=sys.stderr)
        return 1
    return int(code or 0)


__all__ = ["CommandError", "Parser", "Terminated", "add_root_flag", "build_parser", "main",
           "parse_command_line", "__version__"]


if __name__ == "__main__":
    sys.exit(main())
