"""`keepmesh version [--json]` (and `keepmesh --version`): what exactly is running.

Why: a bug report or a mixed-version mesh needs the package version, the
source commit, the wire protocol version and the versions of the libraries
that shape behaviour (aioquic for the transport, wasmtime for keeps).
The commit comes from git when running from a checkout, else from the
`_build_info` module `make dist` writes, else it is null.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from keepmesh.agent.cli._output import print_json

from keepmesh import __version__


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        from keepmesh import _build_info  # type: ignore[attr-defined]  # written by make dist
        commit = getattr(_build_info, "COMMIT", None)
        if isinstance(commit, str) and commit:
            return commit
    except ImportError:
        pass
    here = Path(__file__).resolve().parents[2]
    if not (here / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def version_info() -> dict[str, Any]:
    from keepmesh.agent.transport.quic import ALPN
    from keepmesh.protocol.wire import PROTOCOL_VERSION

    return {
        "version": __version__,
        "commit": _git_commit(),
        "protocol": PROTOCOL_VERSION,
        "alpn": ALPN,
        "python": platform.python_version(),
        "aioquic": _dist_version("aioquic"),
        "wasmtime": _dist_version("wasmtime"),
        "cryptography": _dist_version("cryptography"),
        "platform": f"{platform.system().lower()}-{platform.machine()}",
    }


def cmd_version(args: argparse.Namespace) -> int:
    info = version_info()
    if args.json:
        print_json(info)
        return 0
    for key, value in info.items():
        print(f"{key:13} {'-' if value is None else value}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("version", help="print version, commit, protocol and library versions")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_version)
