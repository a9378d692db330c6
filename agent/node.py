"""The agent: one QUIC endpoint, attested sessions to peers, RPC, and the mesh services.

This is the I/O shell. Decisions live in protocol/ (channel, membership,
placement); here we only move bytes between sockets, threads and those
state machines, and keep the agent serving whatever a single peer does.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any, cast

import trio
from keepmesh.agent.attester import LocalAttester
from keepmesh.agent.identity import Identity, fingerprint
from keepmesh.agent.rpc import Handler, RpcContext, serve_session
from keepmesh.agent.session import ChannelFailed, Session, establish, watch_control
from keepmesh.agent.tee.base import TeeBackend
from keepmesh.agent.transport.limits import RateLimitedLog
from keepmesh.agent.transport.quic import (
    ERR_PROTOCOL,
    ConnectionClosed,
    QuicEndpoint,
    QuicPeerConnection,
    parse_address,
)
from keepmesh.protocol.attestation.certs import ChainCache, TrustStore
from keepmesh.protocol.attestation.evidence import VerifiedEvidence, verify_evidence_record
from keepmesh.protocol.attestation.policy import Policy, appraise
from keepmesh.protocol.channel import ChannelConfig, EvidenceCache
from keepmesh.protocol.errors import ProtocolError
from keepmesh.protocol.rpc import RpcDenied, refuse_fields

from keepmesh import __version__

log = logging.getLogger("keepmesh.agent")
_task_log = RateLimitedLog(log)

# Any authenticated client may read; keeps.* check owners themselves; changing the
# agent's own place in the mesh needs an admitted owner key.
CLIENT_METHODS = frozenset({"agent.status", "agent.peers", "members.list", "keeps.list",
                            "migrate.where",
                            "keeps.logs", "keeps.call", "keeps.stop", "keeps.deploy",
                            "keeps.secret_set", "keeps.place"})
ADMIN_METHODS = frozenset({"agent.join", "agent.leave", "agent.drain"})
REDIAL_S = (0.2, 0.5, 1.0, 2.0, 5.0)
LEAVE_GRACE_S = 3.0  # how long a leaving agent gives its leave hooks (gossip) before stopping


class TaskGuard:
    """A nursery front for per-peer and service tasks: each task is a fault boundary.

    Services (membership, keeps, routing) start per-peer tasks with
    `start_soon` on the nursery they are given; handing them this instead means
    an exception in one of those tasks (a peer's input reached code that
    raised) ends that task with one logged line instead of cancelling the
    agent. Cancellation still propagates (trio.Cancelled is a BaseException).
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.cancel_scope = nursery.cancel_scope

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object,
                   name: object = None) -> None:
        self._nursery.start_soon(self._guarded, fn, args, name=name or fn)

    async def start(self, fn: Callable[..., Awaitable[object]], *args: object,
                    name: object = None) -> object:
        return await self._nursery.start(fn, *args, name=name)

    @staticmethod
    async def _guarded(fn: Callable[..., Awaitable[object]], args: tuple[object, ...]) -> None:
        try:
            await fn(*args)
        except Exception as err:
            _task_log.warning("task %s ended: internal error %s: %s",
                              getattr(fn, "__qualname__", fn), type(err).__name__,
                              str(err)[:160])


async def _deny_admin(ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
    raise RpcDenied("this key is not an admitted owner of the agent")


@dataclass
class PeerEntry:
    """An attested agent peer as this agent sees it."""

    identity: bytes
    address: str  # where it listens: the address we dialled, or the source of its
    # connection (agents send from their single listening socket)
    evidence: VerifiedEvidence | None
    verified_at: float
    session: Session | None

    def to_json(self) -> dict[str, Any]:
        ev = self.evidence
        return {
            "identity": self.identity.hex(),
            "fingerprint": fingerprint(self.identity),
            "address": self.address,
            "tee": ev.tee if ev else None,
            "measurement": ev.measurement.hex() if ev else None,
            "verified_at": self.verified_at,
            "connected": self.session is not None and not self.session.closed.is_set(),
        }


class Agent:
    def __init__(self, *, identity: Identity, backend: TeeBackend, trust: TrustStore,
                 policy: Policy, listen: str, advertise: str | None = None,
                 join: list[str] | None = None, data_dir: Path,
                 admin_keys: list[bytes] | None = None,
                 rng: random.Random | None = None) -> None:
        self.identity = identity
        self.backend = backend
        self.trust = trust
        self.policy = policy
        self.listen = listen
        self.advertise = advertise
        self.seeds = list(join or [])
        # More places `agent.join` without addresses re-joins through, after the seeds
        # (discovery's finds): each returns HOST:PORT strings, asked at the time of the join.
        self.join_sources: list[Callable[[], list[str]]] = []
        self.data_dir = data_dir
        self.admin_keys = set(admin_keys or [])
        self.rng = rng or random.SystemRandom()
        self.attester = LocalAttester(identity, backend)
        self.endpoint = QuicEndpoint(identity)
        self.evidence_cache = EvidenceCache()
        self.chain_cache = ChainCache()
        # Collateral from config (startup.load_agent_collateral), applied to every peer's
        # evidence in the channel and to our own in self_check; None: none configured.
        self.collateral: object | None = None
        self.peers: dict[bytes, PeerEntry] = {}
        self.methods: dict[str, Handler] = {
            "agent.status": self._rpc_status,
            "agent.peers": self._rpc_peers,
        }
        self.own_evidence: VerifiedEvidence | None = None
        self.started_at = time.time()
        self.address = ""
        self._nursery: trio.Nursery | None = None
        self._dialing: set[str] = set()
        self.on_peer: list[Callable[[PeerEntry], None]] = []
        # Where an agent says it listens (membership: the address in its own signed
        # record), asked when it connects to us: its connection's source may be another
        # address (--advertise), and our entry from its previous life may be stale.
        self.listen_address_of: Callable[[bytes], str | None] | None = None
        # Whether membership holds an agent dead or left: a crashed peer's session stays
        # open until QUIC's idle timeout (60 s), but it is no longer a connected peer.
        self.member_gone: Callable[[bytes], bool] | None = None
        self.on_leave: list[Callable[[], Awaitable[None]]] = []
        # Releases the data dir lock (startup.DataDirLock) when the agent stops.
        self.data_dir_lock: Callable[[], None] | None = None
        self.leaving = False  # set once a leave started (a second request does not restart it)
        self._fail_log = RateLimitedLog(log)
        self.services: list[Callable[[trio.Nursery], Awaitable[None]]] = []
        # Extra `agent.status` fields from services (e.g. migration's "events"), given
        # the caller so a service shows each caller only what it may see.
        self.status_sources: dict[str, Callable[[RpcContext], Any]] = {}

    # ------------------------------------------------------------- config
    def channel_config(self) -> ChannelConfig:
        return ChannelConfig(role="agent", trust=self.trust, policy=self.policy,
                             chain_cache=self.chain_cache, collateral=self.collateral)

    def register(self, methods: Mapping[str, Handler]) -> None:
        self.methods.update(methods)

    # ------------------------------------------------------------- lifecycle
    def self_check(self) -> VerifiedEvidence:
        """Verify our own evidence with our own verifier and policy before serving.

        Catches a misconfigured TEE or sim root at start-up with a clear reason
        instead of as a mesh of peers that silently refuse us.
        """
        from datetime import datetime

        from keepmesh.protocol.channel import evidence_report_data
        evidence, issued_at = self.attester.evidence_now(None)
        now = time.time()
        verified = verify_evidence_record(evidence, self.trust,
                                          datetime.fromtimestamp(now, tz=UTC),
                                          cache=self.chain_cache, collateral=self.collateral)
        if verified.report_data != evidence_report_data(self.identity.public_bytes, issued_at):
            raise ProtocolError("own evidence does not commit to our identity key")
        appraise(self.policy, verified, evidence_issued_at=float(issued_at), now=now)
        self.own_evidence = verified
        return verified

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        host, port = parse_address(self.listen)
        self.endpoint.on_accept = self._on_accept
        try:
            await self._run(host, port, task_status)
        finally:
            if self.data_dir_lock is not None:
                self.data_dir_lock()
                self.data_dir_lock = None

    async def _run(self, host: str, port: int, task_status: trio.TaskStatus[str]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            bound = await nursery.start(self.endpoint.serve, host, port)
            self.address = self.advertise or f"{bound[0]}:{bound[1]}"
            guard = cast(trio.Nursery, TaskGuard(nursery))
            for service in self.services:
                guard.start_soon(service, guard)
            for seed in self.seeds:
                guard.start_soon(self._dial_loop, seed)
            log.debug("agent %s listening on %s (tee %s)", self.identity.fingerprint,
                     self.address, self.backend.kind)
            task_status.started(self.address)

    def close(self) -> None:
        """Give back what build_agent took (data dir lock, bound socket) for an agent
        that will not run (run() gives them back itself when it ends)."""
        if self.data_dir_lock is not None:
            self.data_dir_lock()
            self.data_dir_lock = None
        if self.endpoint.sock is not None and self._nursery is None:
            self.endpoint.sock.close()
            self.endpoint.sock = None

    def shutdown(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def leave(self, grace_s: float = LEAVE_GRACE_S) -> None:
        """Leave the mesh gracefully, then stop: each leave hook (membership gossips
        a leave) gets at most `grace_s` together, so a stuck hook cannot keep a
        stopping agent alive."""
        if self.leaving:
            return
        self.leaving = True
        with trio.move_on_after(grace_s):
            for hook in list(self.on_leave):
                try:
                    await hook()
                except Exception as err:  # a failing hook must not prevent stopping
                    log.warning("leave: %s failed: %s", getattr(hook, "__qualname__", hook),
                                type(err).__name__)
        await trio.sleep(0.1)  # let replies already sent (the leave RPC's) leave the socket
        self.shutdown()

    # ------------------------------------------------------------- sessions
    async def _on_accept(self, conn: QuicPeerConnection) -> None:
        """One inbound connection, start to end. A fault boundary (like the
        endpoint's around it): whatever the peer's input makes fail closes this
        connection with a one-line, rate-limited log line."""
        try:
            session = await establish(conn, identity=self.identity, attester=self.attester,
                                      config=self.channel_config(), cache=self.evidence_cache,
                                      rng=self.rng)
        except ChannelFailed as err:
            self._fail_log.warning("no attested channel with %s: %s", conn.peer_address, err)
            return
        try:
            if session.peer.role == "agent":
                self._adopt(session, address=None)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_control, session)
                await serve_session(session, self._methods_for(session))
        except Exception as err:
            self._fail_log.warning("session with %s failed: internal error %s",
                                   conn.peer_address, type(err).__name__)
            conn.close(ERR_PROTOCOL, f"internal error: {type(err).__name__}")

    async def connect(self, address: str) -> Session:
        """Dial an agent and establish an attested session (raises ChannelFailed)."""
        existing = self.session_to_address(address)
        if existing is not None:
            return existing
        host, port = parse_address(address)
        try:
            conn = await self.endpoint.connect(host, port)
        except ConnectionClosed as err:
            raise ChannelFailed(str(err)) from None
        except Exception as err:  # dialling an address a peer gave us: never fatal
            raise ChannelFailed(f"cannot dial {address[:80]}: {type(err).__name__}") from None
        config = self.channel_config()
        config.expect_peer_role = "agent"
        session = await establish(conn, identity=self.identity, attester=self.attester,
                                  config=config, cache=self.evidence_cache, rng=self.rng)
        if session.peer.identity == self.identity.public_bytes:
            conn.close(0, "connected to self")
            raise ChannelFailed("connected to self")
        self._adopt(session, address=address)
        assert self._nursery is not None
        guard = TaskGuard(self._nursery)
        guard.start_soon(watch_control, session)
        guard.start_soon(serve_session, session, self._methods_for(session))
        return session

    def session_to_address(self, address: str) -> Session | None:
        for peer in self.peers.values():
            if peer.address == address and peer.session and not peer.session.closed.is_set():
                return peer.session
        return None

    def _adopt(self, session: Session, address: str | None) -> None:
        ident = session.peer.identity
        entry = self.peers.get(ident)
        listed = self.listen_address_of(ident) if self.listen_address_of else None
        addr = address or listed or (entry.address if entry else session.address)
        # Both sides may dial at once, and a peer re-attests on reconnect: say so once
        # per newly connected peer (info), the rest at debug.
        was_connected = entry is not None and entry.session is not None \
            and not entry.session.closed.is_set()
        entry = PeerEntry(identity=ident, address=addr, evidence=session.peer.evidence,
                          verified_at=session.peer.verified_at, session=session)
        self.peers[ident] = entry
        tee = session.peer.evidence.tee if session.peer.evidence else "?"
        log.log(logging.DEBUG if was_connected else logging.INFO,
                "attested peer %s at %s (%s)", fingerprint(ident), addr, tee,
                extra={"event": "peer.attested",
                       "fields": {"peer": fingerprint(ident), "address": addr, "tee": tee}})
        for cb in self.on_peer:
            cb(entry)

    def _methods_for(self, session: Session) -> dict[str, Handler]:
        if session.peer.role == "agent":
            return self.methods
        allowed = CLIENT_METHODS
        if session.peer.identity in self.admin_keys:
            allowed = CLIENT_METHODS | ADMIN_METHODS
        # Admin methods exist for everyone but answer `forbidden` to non-owners, so the
        # client can say "not an admitted owner" instead of "unknown method".
        return {k: (v if k in allowed else _deny_admin) for k, v in self.methods.items()
                if k in CLIENT_METHODS | ADMIN_METHODS}

    async def _dial_loop(self, address: str) -> None:
        """Keep trying a seed until attested; membership takes it from there."""
        if address in self._dialing or address == self.address:
            return
        self._dialing.add(address)
        try:
            attempt = 0
            while True:
                try:
                    await self.connect(address)
                    return
                except (ChannelFailed, ProtocolError) as err:
                    kind = err.kind if isinstance(err, ChannelFailed) else "protocol"
                    if kind == "transport":  # nothing answered: not an attestation failure
                        self._fail_log.warning("cannot reach %s: %s", address, err)
                    else:
                        self._fail_log.warning("cannot attest %s: %s", address, err)
                    if kind in ("verification", "policy") or (
                            isinstance(err, ChannelFailed) and not err.local):
                        return  # a peer that fails policy will not pass by retrying
                await trio.sleep(REDIAL_S[min(attempt, len(REDIAL_S) - 1)])
                attempt += 1
        finally:
            self._dialing.discard(address)

    # ------------------------------------------------------------- RPC
    async def _rpc_status(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        refuse_fields("agent.status", body)
        ev = self.own_evidence
        return {
            "identity": self.identity.public_bytes.hex(),
            "fingerprint": self.identity.fingerprint,
            "address": self.address,
            "version": __version__,
            "tee": self.backend.kind,
            "tee_interface": self.backend.name,
            "measurement": ev.measurement.hex() if ev else None,
            "peers": sum(1 for p in self.peers.values() if self.is_connected(p)),
            "uptime_s": round(time.time() - self.started_at, 3),
        } | {name: source(ctx) for name, source in self.status_sources.items()}

    async def _rpc_peers(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        refuse_fields("agent.peers", body)
        return {"peers": [p.to_json() for p in self.peers.values() if self.is_connected(p)]}

    def is_connected(self, peer: PeerEntry) -> bool:
        """A peer with an open session that membership does not hold dead or left (what
        agent.peers lists and agent.status counts, so they agree with members.list)."""
        if peer.session is None or peer.session.closed.is_set():
            return False
        return not (self.member_gone is not None and self.member_gone(peer.identity))
