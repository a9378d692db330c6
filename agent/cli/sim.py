"""`keepmesh sim init-root DIR` and `keepmesh sim set-tcb DATA_DIR COMPONENT=N ...`.

Why verbs: developers and CI need a sim root before agents can start with
`--tee sim --sim-root DIR`; creating it explicitly (and never overwriting
one) keeps the insecure trust anchor a deliberate, visible act. `set-tcb`
changes the TCB the running sim agent with that data dir reports in every
evidence it issues from then on, as a TCB rollback would on real hardware,
so trust loss (and the migration it triggers) can be tested and shown.
"""

from __future__ import annotations

import argparse
from typing import Any

from keepmesh.agent.cli import CommandError
from keepmesh.agent.cli._output import print_json
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
    tcb = verbs.add_parser("set-tcb", help="change the TCB a running sim agent reports")
    tcb.add_argument("data_dir", metavar="DATA_DIR", help="the sim agent's --data-dir")
    tcb.add_argument("assignments", metavar="COMPONENT=N", nargs="+",
                     help="bootloader, tee, snp or microcode, 0..255 (e.g. microcode=200)")
    tcb.add_argument("--json", action="store_true", help="print one JSON document")
    tcb.set_defaults(func=_set_tcb)


def _set_tcb(args: argparse.Namespace) -> int:
    from keepmesh.agent.tee.sim import SimTcbError, parse_tcb_assignments, set_sim_tcb

    try:
        tcb = set_sim_tcb(args.data_dir, parse_tcb_assignments(args.assignments))
    except SimTcbError as err:
        raise CommandError(str(err)) from None
    except OSError as err:
        raise CommandError(f"cannot write TCB in {args.data_dir}: {err.strerror}") from None
    if args.json:
        print_json({"data_dir": args.data_dir, "tcb": tcb, "insecure": True})
    else:
        print("sim TCB " + " ".join(f"{k}={v}" for k, v in tcb.items())
              + " (the running agent reports it from its next evidence on)")
    return 0


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
        print_json({"root": f"{args.dir}/ark.pem", "fingerprint": fp, "insecure": True})
    else:
        print(f"created INSECURE sim root {args.dir}/ark.pem sha256={fp}")
        print("anyone holding this directory can forge evidence; never trust it in production")
    return 0
