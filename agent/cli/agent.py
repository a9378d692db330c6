"""`keepmesh agent`: run an agent until interrupted."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import trio
from keepmesh.agent.cli import CommandError
from keepmesh.agent.config import TEE_CHOICES, AgentConfig, load_config
from keepmesh.protocol.errors import ProtocolError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("agent", help="run a keepmesh agent")
    p.add_argument("--config", type=Path, help="agent config file (TOML)")
    p.add_argument("--listen", help="HOST:PORT to listen on (UDP)")
    p.add_argument("--advertise", help="HOST:PORT peers should dial (default: bound address)")
    p.add_argument("--join", action="extend", nargs="+", default=[], metavar="HOST:PORT",
                   help="seed agents to join (several after one flag, or repeat the flag)")
    p.add_argument("--tee", choices=TEE_CHOICES, help="TEE backend (default auto)")
    p.add_argument("--sim-root", type=Path, help="sim root directory (for --tee sim)")
    p.add_argument("--data-dir", type=Path, help="where the identity, keeps and state live")
    p.add_argument("--root", action="extend", nargs="+", default=[], type=Path, metavar="PEM",
                   help="extra trusted roots for peers' evidence")
    p.add_argument("--policy", type=Path, help="appraisal policy for peers (TOML)")
    p.add_argument("--owner", action="append", default=[], metavar="HEX",
                   help="owner public key admitted to deploy (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    from keepmesh.agent.config import parse_public_key
    try:
        cfg = load_config(args.config) if args.config else AgentConfig()
        if args.listen:
            cfg.listen = args.listen
        if args.advertise:
            cfg.advertise = args.advertise
        if args.join:
            cfg.join = list(args.join)
        if args.tee:
            cfg.tee = args.tee
        if args.sim_root:
            cfg.sim_root = args.sim_root
        if args.data_dir:
            cfg.data_dir = args.data_dir
        if args.root:
            cfg.roots = list(cfg.roots) + list(args.root)
        if args.policy:
            cfg.policy = args.policy
        cfg.owners = list(cfg.owners) + [parse_public_key(h, "--owner") for h in args.owner]
        from keepmesh.agent.transport.quic import parse_address
        parse_address(cfg.listen)
        for seed in cfg.join:
            parse_address(seed)
    except ProtocolError as err:
        raise CommandError(err.reason) from None
    return cfg


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("quic").setLevel(logging.WARNING)
    cfg = config_from_args(args)
    from keepmesh.agent.startup import StartupError, build_agent
    try:
        agent = build_agent(cfg)
    except StartupError as err:
        raise CommandError(str(err)) from None

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(agent.run)
            print(f"keepmesh agent {agent.identity.fingerprint} listening on {address} "
                  f"(tee {agent.backend.kind} via {agent.backend.name})", file=sys.stderr,
                  flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    print("keepmesh agent: shutting down", file=sys.stderr, flush=True)
                    agent.shutdown()
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except ProtocolError as err:
        raise CommandError(err.reason) from None
    return 0
