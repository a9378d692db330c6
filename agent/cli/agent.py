"""`keepmesh agent`: run an agent until interrupted."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

import trio
from keepmesh.agent.cli import CommandError
from keepmesh.agent.config import TEE_CHOICES, AgentConfig, load_config
from keepmesh.protocol.errors import ProtocolError

log = logging.getLogger("keepmesh.agent")


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
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus /metrics and /healthz here (e.g. 127.0.0.1:9400)")
    p.add_argument("--log-format", choices=("text", "json"),
                   help="text (default) or json: one JSON object per line")
    p.add_argument("--discover", action="store_true", default=None,
                   help="find and join agents on the LAN by mDNS/DNS-SD (each still attested)")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="a label other agents see, for placement (repeatable)")
    p.add_argument("--memory", metavar="SIZE",
                   help="memory offered to keeps, e.g. 2GiB (default: the machine's)")
    p.add_argument("--max-keeps", metavar="N", help="keeps this agent runs at most (default 16)")
    p.add_argument("--max-connections", metavar="N",
                   help="inbound QUIC connections admitted in total (default 512, at most 16384)")
    p.add_argument("--max-connections-per-source", metavar="N",
                   help="inbound QUIC connections admitted per source IP (default 64); raise it "
                        "for more than 64 agents behind one address, e.g. one loopback address")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logs: channels, RPCs, membership events, library messages")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    from keepmesh.agent.config import parse_public_key
    from keepmesh.agent.transport.quic import parse_address
    from keepmesh.protocol.address import canonical_address
    try:
        cfg = load_config(args.config) if args.config else AgentConfig()
        # `is not None`: an empty --listen "" is an error, not the default (7400) in silence
        if args.listen is not None:
            cfg.listen = args.listen
        if args.advertise is not None:
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
        if getattr(args, "metrics", None) is not None:
            cfg.metrics = args.metrics
            parse_address(args.metrics)
        if getattr(args, "log_format", None):
            cfg.log_format = args.log_format
        if getattr(args, "discover", None):
            cfg.discover = True
        cfg.owners = list(cfg.owners) + [parse_public_key(h, "--owner") for h in args.owner]
        _placement_flags(cfg, args)
        _limit_flags(cfg, args)
        from keepmesh.agent.transport.quic import parse_address
        parse_address(cfg.listen)
        if cfg.advertise is not None:  # what peers dial: a port, never 0 (records refuse it)
            canonical_address(cfg.advertise)
        for seed in cfg.join:  # dialled, so port 0 is refused as for --advertise
            canonical_address(seed)
    except ProtocolError as err:
        raise CommandError(err.reason) from None
    return cfg


def _placement_flags(cfg: AgentConfig, args: argparse.Namespace) -> None:
    """--label KEY=VALUE (repeatable), --memory SIZE, --max-keeps N over the config file."""
    from keepmesh.agent.config import parse_keeps, parse_memory
    for item in getattr(args, "label", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key or len(key) > 64 or len(value) > 64:
            raise ProtocolError(f"--label {item[:80]!r}: expected KEY=VALUE (each at most 64 "
                                "characters)")
        cfg.labels[key] = value
    if getattr(args, "memory", None) is not None:
        cfg.capacity.memory = parse_memory(args.memory, "--memory")
    if getattr(args, "max_keeps", None) is not None:
        cfg.capacity.keeps = parse_keeps(args.max_keeps, "--max-keeps")


def _limit_flags(cfg: AgentConfig, args: argparse.Namespace) -> None:
    """--max-connections N, --max-connections-per-source N over the config's [limits]
    (same bounds; a per-source limit above the total is refused, whichever set it)."""
    from keepmesh.agent.config import parse_limits
    flags = {"connections": ("--max-connections", getattr(args, "max_connections", None)),
             "connections_per_source": ("--max-connections-per-source",
                                        getattr(args, "max_connections_per_source", None))}
    given = {key: value for key, (_, value) in flags.items() if value is not None}
    if given:
        names = " and ".join(flag for key, (flag, _) in flags.items() if key in given)
        cfg.limits = parse_limits(given, names, base=cfg.limits)


def run(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM or `keepmesh leave`.

    First signal: gossip a leave and exit 0 within a few seconds (Agent.leave).
    Second signal: exit at once (130), one line, no traceback. Every start-up
    failure is one line on stderr and exit 1 (CommandError).
    """
    early = EarlyStop.install()
    from keepmesh.agent import logs
    cfg = config_from_args(args)
    logs.setup(cfg.log_format, args.verbose)
    from keepmesh.agent.startup import StartupError, build_agent
    try:
        agent = build_agent(cfg)
    except StartupError as err:
        raise CommandError(str(err)) from None
    if early.signalled:
        agent.close()
        return early.stopped()
    if agent.backend.kind == "sim":
        log.warning("tee sim is INSECURE: anyone holding the sim root can forge this agent's "
                    "evidence; for development only", extra={"event": "agent.insecure_tee"})
    if cfg.metrics:
        from keepmesh.agent import metrics
        try:
            server = metrics.serve(agent, cfg.metrics)
        except (OSError, ProtocolError) as err:
            reason = err.reason if isinstance(err, ProtocolError) else err.strerror or err
            raise CommandError(f"--metrics {cfg.metrics}: cannot serve: {reason}") from None
        log.info("metrics on http://%s/metrics and /healthz", server.address,
                 extra={"event": "agent.metrics", "fields": {"address": server.address}})
    if cfg.discover:
        from keepmesh.agent import discovery
        discovery.attach(agent)

    async def main() -> None:
        stopped = trio.Event()

        async def run_agent(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
                            ) -> None:
            try:
                await agent.run(task_status=task_status)
            finally:
                stopped.set()

        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            if early.signalled:  # between build_agent and here: nothing runs yet
                agent.close()
                return
            async with trio.open_nursery() as nursery:
                address = await nursery.start(run_agent)
                log.info("agent %s listening on %s (tee %s via %s)",
                         agent.identity.fingerprint, address, agent.backend.kind,
                         agent.backend.name,
                         extra={"event": "agent.started",
                                "fields": {"fingerprint": agent.identity.fingerprint,
                                           "address": address, "tee": agent.backend.kind,
                                           "tee_interface": agent.backend.name}})

                async def on_signals() -> None:
                    async for _ in signals:
                        if agent.leaving:
                            log.warning("stopped", extra={"event": "agent.stopped"})
                            os._exit(130)  # the operator insists: no cleanup, no traceback
                        log.info("leaving the mesh (interrupt again to stop at once)",
                                 extra={"event": "agent.leaving"})
                        nursery.start_soon(agent.leave)

                nursery.start_soon(on_signals)
                await stopped.wait()  # `keepmesh leave`, a signal, or the agent failing
                nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except KeyboardInterrupt:  # a signal after the receiver closed (shutting down anyway)
        return 130
    except Exception as err:
        raise CommandError(_one_line(err)) from None
    return early.stopped() if early.signalled and not agent.leaving else 0


class EarlyStop:
    """SIGTERM while the agent is being built: remembered, acted on once it is built.

    Why not raise from the handler (as during argument parsing): building writes the
    identity key and keep storage, and an exception at an arbitrary bytecode could
    leave a half-written file. Building takes a few seconds at most; then the agent
    exits 0 with one line instead of starting, like a SIGTERM after it was ready.
    Once trio runs, its signal receiver takes SIGTERM over (and gives this back).
    """

    def __init__(self) -> None:
        self.signalled = False

    @classmethod
    def install(cls) -> EarlyStop:
        early = cls()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, early._handle)
        return early

    def _handle(self, signum: int, frame: object) -> None:
        self.signalled = True

    def stopped(self) -> int:
        log.warning("stopped by SIGTERM before it was ready", extra={"event": "agent.stopped"})
        return 0


def _one_line(err: BaseException) -> str:
    """The reason of the first real error inside (possibly nested) exception groups."""
    while isinstance(err, BaseExceptionGroup) and err.exceptions:
        err = err.exceptions[0]
    if isinstance(err, ProtocolError):
        return str(err.reason)
    return f"internal error: {type(err).__name__}: {str(err)[:200]}"
