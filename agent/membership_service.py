"""Membership over attested QUIC: the glue between protocol/membership and agent sessions.

The state machine decides; this module only moves bytes and verdicts:
- outgoing probes/gossip go as QUIC DATAGRAM frames on the attested session to
  the member's address (dialled, and attested, on demand); push-pull state
  goes as an RPC on a stream;
- datagrams from a session are fed in with the session's authenticated
  identity as `src_id`, so a member cannot speak for another;
- "attest" events are answered from the session's verified evidence (or by
  dialling the member), so a member is alive only after its evidence passed
  our policy, and becomes untrusted when it fails or expires.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import trio
from keepmesh.agent.identity import fingerprint
from keepmesh.agent.node import Agent, PeerEntry
from keepmesh.agent.rpc import RpcContext, RpcError, call
from keepmesh.agent.session import ChannelFailed, Session
from keepmesh.agent.transport.quic import ConnectionClosed
from keepmesh.protocol.errors import ProtocolError
from keepmesh.protocol.membership import (
    CachingVerifier,
    Capacity,
    Claims,
    Ed25519Signer,
    Ed25519Verifier,
    MemberEvent,
    Membership,
    MembershipConfig,
    MemberView,
    Outgoing,
    make_record,
)

log = logging.getLogger("keepmesh.membership")

DIAL_BACKOFF_S = 2.0
MAX_QUEUED_PER_DIAL = 16
STATE_FILE = "membership.json"


def member_json(m: MemberView) -> dict[str, Any]:
    return {
        "name": fingerprint(m.node_id),
        "node_id": m.node_id.hex(),
        "address": m.address,
        "state": m.state.value,
        "liveness": m.liveness.value,
        "trust": m.trust.value,
        "incarnation": m.incarnation,
        "claims": {"tee": m.claims.tee, "measurement": m.claims.measurement,
                   "tcb": m.claims.tcb},
        "capacity": m.capacity.to_fields(),
        "labels": dict(m.labels),
    }


class MembershipService:
    def __init__(self, agent: Agent, *, profile: str = "lan",
                 labels: dict[str, str] | None = None) -> None:
        self.agent = agent
        self.config = MembershipConfig.profile(profile)
        self.labels = dict(labels or {})
        self.membership: Membership | None = None
        self._wake = trio.lowlevel.ParkingLot()
        self._dialing: dict[str, list[Outgoing]] = {}
        self._dial_failed_at: dict[str, float] = {}
        self._nursery: trio.Nursery | None = None
        self._saved_inc = 0
        agent.register({"members.list": self._rpc_members, "swim.stream": self._rpc_stream,
                        "agent.join": self._rpc_join, "agent.leave": self._rpc_leave})
        agent.on_peer.append(self._on_peer)
        agent.services.append(self.run)
        agent.on_leave.append(self.leave)

    # ------------------------------------------------------------ lifecycle
    def _next_incarnation(self) -> int:
        """Restarted members come back with a higher incarnation than they ever used."""
        path = self.agent.data_dir / STATE_FILE
        last = 0
        try:
            last = int(json.loads(path.read_text()).get("incarnation", 0))
        except (OSError, ValueError, AttributeError):
            pass
        inc = max(last + 1, 1)
        self._save_incarnation(inc)
        self._saved_inc = inc
        return inc

    def _save_incarnation(self, inc: int) -> None:
        path = self.agent.data_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"incarnation": inc}))
        os.replace(tmp, path)

    def _claims(self) -> Claims:
        ev = self.agent.own_evidence
        if ev is None:
            return Claims(tee=self.agent.backend.kind, measurement="", tcb="")
        tcb = ",".join(f"{k}={v}" for k, v in sorted(ev.tcb.items()))[:64]
        return Claims(tee=ev.tee, measurement=ev.measurement.hex(), tcb=tcb)

    async def run(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        signer = Ed25519Signer(self.agent.identity.seed)
        now = trio.current_time()
        cpu = (os.cpu_count() or 1) * 1000
        mem = _memory_mb()
        record = make_record(signer, self.agent.address, self._next_incarnation(),
                             self._claims(), Capacity(memory_mb=mem, cpu_milli=cpu,
                                                      free_memory_mb=mem, free_cpu_milli=cpu),
                             self.labels)
        self.membership = Membership(self.config, record, signer,
                                     CachingVerifier(Ed25519Verifier()),
                                     random.SystemRandom(), now)
        if self.agent.seeds:
            self.membership.join(self.agent.seeds, now)
        for entry in list(self.agent.peers.values()):
            self._on_peer(entry)
        self._flush()
        while True:
            m = self.membership
            deadline = m.get_timer()
            with trio.move_on_at(deadline if deadline is not None else trio.current_time() + 1):
                await self._wake.park()
            m.handle_timer(trio.current_time())
            self._flush()
            self._save_if_changed()

    def _save_if_changed(self) -> None:
        assert self.membership is not None
        inc = self.membership.record.incarnation
        if inc != self._saved_inc:
            self._saved_inc = inc
            self._save_incarnation(inc)

    # ------------------------------------------------------------ outputs
    def _flush(self) -> None:
        m = self.membership
        if m is None:
            return
        for out in m.datagrams_to_send():
            self._send(out)
        while (event := m.next_event()) is not None:
            self._on_event(event)

    def _send(self, out: Outgoing) -> None:
        if out.dst == self.agent.address:
            return
        session = self.agent.session_to_address(out.dst)
        if session is None:
            self._dial(out.dst, out)
            return
        if out.reliable:
            assert self._nursery is not None
            self._nursery.start_soon(self._send_stream, session, out.data)
        else:
            try:
                session.conn.send_datagram(out.data)
            except ConnectionClosed:
                pass

    async def _send_stream(self, session: Session, data: bytes) -> None:
        try:
            await call(session, "swim.stream", {"data": data}, timeout=10)
        except RpcError as err:
            log.debug("push-pull to %s failed: %s", session.address, err)

    def _dial(self, address: str, first: Outgoing | None) -> None:
        if address in self._dialing:
            if first is not None and len(self._dialing[address]) < MAX_QUEUED_PER_DIAL:
                self._dialing[address].append(first)
            return
        failed = self._dial_failed_at.get(address)
        if failed is not None and time.monotonic() - failed < DIAL_BACKOFF_S:
            return  # the packet is lost, as it would be to an unreachable host
        self._dialing[address] = [first] if first is not None else []
        assert self._nursery is not None
        self._nursery.start_soon(self._dial_task, address)

    async def _dial_task(self, address: str) -> None:
        try:
            await self.agent.connect(address)
        except (ChannelFailed, ProtocolError) as err:
            self._dial_failed_at[address] = time.monotonic()
            self._dialing.pop(address, None)  # queued packets are lost, as to a dead host
            log.debug("cannot reach %s: %s", address, err)
            self._attestation_failed(address, str(err))
            return
        queued = self._dialing.pop(address, [])
        for out in queued:
            self._send(out)

    def _attestation_failed(self, address: str, reason: str) -> None:
        """A member whose channel was rejected on evidence grounds is untrusted, not dead."""
        m = self.membership
        if m is None or "rejected" not in reason and "policy" not in reason:
            return
        for view in m.members():
            if view.address == address:
                m.set_trust(view.node_id, False, trio.current_time(), reason=reason)
        self._flush()

    def _on_event(self, event: MemberEvent) -> None:
        name = fingerprint(event.node_id)
        if event.kind == "attest":
            self._attest(event.node_id)
        elif event.kind in ("dead", "suspect", "untrusted", "left"):
            log.info("member %s %s (incarnation %d) %s", name, event.kind, event.incarnation,
                     event.reason)
        elif event.kind in ("join", "alive"):
            log.info("member %s %s (incarnation %d)", name, event.kind, event.incarnation)

    def _attest(self, node_id: bytes) -> None:
        m = self.membership
        assert m is not None
        entry = self.agent.peers.get(node_id)
        if entry is not None and entry.session is not None and not entry.session.closed.is_set():
            self._trust_from_entry(entry)
            return
        view = m.member(node_id)
        if view is not None:
            self._dial(view.address, None)

    # ------------------------------------------------------------ inputs
    def _on_peer(self, entry: PeerEntry) -> None:
        """A newly attested agent session: its datagrams feed membership, its evidence vouches."""
        if self._nursery is None or entry.session is None:
            return
        self._nursery.start_soon(self._read_datagrams, entry.session)
        self._trust_from_entry(entry)

    def _trust_from_entry(self, entry: PeerEntry) -> None:
        m = self.membership
        if m is None or m.member(entry.identity) is None:
            return
        until = None
        if entry.evidence is not None and entry.session is not None:
            issued = entry.session.peer.evidence_issued_at
            max_age = self.agent.policy.max_evidence_age_s
            if issued is not None and max_age:
                until = trio.current_time() + max(0.0, issued + max_age - time.time())
        m.set_trust(entry.identity, True, trio.current_time(), until=until)
        self._flush()
        self._wake.unpark_all()

    async def _read_datagrams(self, session: Session) -> None:
        src_id = session.peer.identity
        while True:
            try:
                data = await session.conn.receive_datagram()
            except ConnectionClosed:
                return
            m = self.membership
            if m is None:
                continue
            view = m.member(src_id)
            src = view.address if view is not None else session.address
            m.receive(data, src, trio.current_time(), src_id=src_id)
            self._flush()
            self._wake.unpark_all()

    # ------------------------------------------------------------ RPC
    async def _rpc_stream(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        if ctx.role != "agent":
            raise ProtocolError("swim.stream: agents only")
        data = body.get("data")
        if not isinstance(data, bytes) or len(data) > 4 * 1024 * 1024:
            raise ProtocolError("swim.stream: data must be bytes up to 4 MiB")
        m = self.membership
        if m is None:
            raise ProtocolError("membership not started")
        view = m.member(ctx.peer_key)
        src = view.address if view is not None else ctx.session.address
        m.receive(data, src, trio.current_time(), src_id=ctx.peer_key)
        self._flush()
        if m.member(ctx.peer_key) is not None and ctx.peer_key in self.agent.peers:
            self._trust_from_entry(self.agent.peers[ctx.peer_key])
        self._wake.unpark_all()
        return {}

    async def _rpc_members(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        m = self.membership
        if m is None:
            return {"members": []}
        rows = []
        for view in m.members():  # our own view comes first
            row = member_json(view)
            row["self"] = view.node_id == m.node_id
            rows.append(row)
        return {"members": rows}

    async def _rpc_join(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        from keepmesh.agent.transport.quic import parse_address
        addresses = body.get("addresses")
        if not isinstance(addresses, list) or not 1 <= len(addresses) <= 16 or \
                not all(isinstance(a, str) for a in addresses):
            raise ProtocolError("agent.join: addresses must be 1-16 HOST:PORT strings")
        for a in addresses:
            parse_address(a)
        joined = []
        for a in addresses:
            try:
                await self.agent.connect(a)
                joined.append(a)
            except ChannelFailed as err:
                raise ProtocolError(f"cannot join {a}: {err}") from None
        m = self.membership
        if m is not None:
            m.join(joined, trio.current_time())
            self._flush()
            self._wake.unpark_all()
        return {"joined": joined}

    async def _rpc_leave(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        m = self.membership
        if m is None:
            raise ProtocolError("membership not started")
        assert self._nursery is not None
        self._nursery.start_soon(self.agent.leave)  # gossips via self.leave, then stops
        return {"left": True}

    async def leave(self) -> None:
        """Agent.leave hook: gossip a signed leave and give it a few gossip rounds to
        spread (Agent.leave caps the whole wait), so peers see "left", not "dead"."""
        m = self.membership
        if m is None:
            return
        m.leave(trio.current_time())
        self._flush()
        self._wake.unpark_all()
        deadline = trio.current_time() + max(1.0, 5 * self.config.gossip_interval)
        while m.pending_broadcasts() and trio.current_time() < deadline:
            await trio.sleep(self.config.gossip_interval)


def _memory_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return 0
