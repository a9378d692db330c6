"""`keepmesh sim init-root DIR`: create an INSECURE simulated-TEE root.

Why a verb: developers and CI need a sim root before agents can start with
`--tee sim --sim-root DIR`; creating it explicitly (and never overwriting
one) keeps the insecure trust anchor a deliberate, visible act.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from keepmesh.agent.cli import CommandError
from keepmesh.protocol.attestation.certs import fingerprint

ROOT_BITS = (2048, 3072, 4096)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("sim", help="simulated TEE (INSECURE, for development)")
    verbs = parser.add_subparsers(dest="sim_command", required=True, metavar="VERB")
    init = verbs.add_parser("init-root", help="create an INSECURE sim ARK/ASK in DIR")
    init.add_argument("dir", metavar="DIR")
    init.add_argument("--key-bits", type=int, default=4096, choices=ROOT_BITS,
                      help="RSA size of the ARK/ASK (AMD uses 4096)")
    init.add_argument("--json", action="store_true", help="print one JSON document")
    init.set_defaults(func=_init_root)


def _init_root(args: argparse.Namespace) -> int:
    from keepmesh.agent.tee.sim import SimRootError, init_sim_root

    try:
        ark = init_sim_root(args.dir, key_bits=args.key_bits)
    except SimRootError as err:
        raise CommandError(str(err)) from None
    except OSError as err:
        raise CommandError(f"cannot create sim root in {args.dir}: {err.strerror}") from None
    fp = fingerprint(ark).hex()
    if args.json:
        print(json.dumps({"root": f"{args.dir}/ark.pem", "fingerprint": fp, "insecure": True}))
    else:
        print(f"created INSECURE sim root {args.dir}/ark.pem sha256={fp}")
        print("anyone holding this directory can forge evidence; never trust it in production")
    return 0
