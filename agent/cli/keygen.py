"""`keepmesh keygen FILE`: create an owner (or operator) Ed25519 key.

Why a separate verb: the owner key is the root of trust for deployments, so
it is created owner-only (0600) from the first byte and never overwritten
(overwriting would orphan every keep signed with the old key).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from keepmesh.agent.cli import CommandError
from keepmesh.agent.cli._output import print_json


def _write_key(path: Path, key: Ed25519PrivateKey) -> None:
    from keepmesh.agent.identity import write_private_key

    write_private_key(path, key)


def cmd_public(path: Path, as_json: bool) -> int:
    """Print the public key of an existing key file (to admit it with --owner)."""
    from keepmesh.agent.identity import read_private_key
    from keepmesh.protocol.errors import ProtocolError

    try:
        key = read_private_key(path)
    except ProtocolError as err:
        raise CommandError(err.reason) from None
    public = key.public_key().public_bytes_raw().hex()
    if as_json:
        print_json({"file": str(path), "public_key": public})
    else:
        print(public)
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if args.public:
        return cmd_public(path, args.json)
    key = Ed25519PrivateKey.generate()
    try:
        # inside the try: checking a path can fail too (a name too long: ENAMETOOLONG)
        if path.exists() or path.is_symlink():
            raise CommandError(f"{path} already exists; refusing to overwrite a key")
        _write_key(path, key)
    except FileExistsError:
        raise CommandError(f"{path} already exists; refusing to overwrite a key") from None
    except OSError as err:
        raise CommandError(f"cannot write {str(path)[:200]}: {err.strerror or err}") from None
    public = key.public_key().public_bytes_raw().hex()
    if args.json:
        print_json({"file": str(path), "public_key": public})
    else:
        print(f"wrote {path} (0600); public key {public}")
        print(f"admit it on an agent with --owner {public} (or owners = [...] in its config)")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("keygen", help="create an Ed25519 owner/operator key (0600)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--public", action="store_true",
                   help="print the public key of an existing FILE instead of creating one")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_keygen)
