"""The agent's driver for MeshNode: carries out effects over attested QUIC, decides nothing.

What it does with each output of `MeshNode.next_effect()`:
- `Send`: a QUIC DATAGRAM on the attested session to the member (dialled,
  and attested, on demand), or for `reliable` an RPC (`swim.stream`) on a
  stream. When `dst_id` is given, only a session authenticated as that
  identity carries it. `ordered` sends (migration's) go through one FIFO
  lane per member (`migrate.msg` RPCs, one at a time), so a transfer's chunks
  arrive in order and never hold up membership's own streams.
- `RequestAttestation`: answer from the member's verified session evidence
  (its freshness bounds how long the verdict holds), or dial the member so
  the channel verifies fresh evidence against our policy; a channel we
  refused is a negative verdict, a network failure is no verdict at all.
- `StartKeep` / `StopKeep`: handed to the keeps hook (agent/keeps).
- `Persist`: written atomically to `mesh.json` in the data directory.
- events: logged; every output also goes to the `on_output` hooks (placement's
  and migration's services carry out their own effects there).

`now` given to the node is wall-clock time (`MeshService.now`): migration
appraises evidence ages against its `issued_at`, a wall-clock stamp.

Inputs: datagrams read from every attested agent session (fed with the
session's authenticated identity as `src_id`, so a member cannot speak for
another), `swim.stream` RPCs, timers, and operator commands (join, leave).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from keepmesh.agent.identity import fingerprint
from keepmesh.agent.node import Agent, PeerEntry
from keepmesh.agent.rpc import MIN_REQUEST_RATE_BPS, RpcContext, RpcError, call
from keepmesh.agent.session import ChannelFailed, Session
from keepmesh.agent.transport.quic import ERR_PROTOCOL, ConnectionClosed
from keepmesh.protocol.effects import (
    AttestationVerdict,
    Join,
    KeepFailed,
    Leave,
    MemberAlive,
    MemberDead,
    MemberEvent,
    MemberJoined,
    MemberLeft,
    MemberUpdated,
    Output,
    Persist,
    RequestAttestation,
    Send,
    StartKeep,
    StopKeep,
)
from keepmesh.protocol.errors import ProtocolError
from keepmesh.protocol.membership import (
    CachingVerifier,
    Capacity,
    Claims,
    Ed25519Signer,
    Ed25519Verifier,
    Membership,
    MembershipConfig,
    MemberState,
    MemberView,
    make_record,
)
from keepmesh.protocol.migration.messages import MAX_CHUNK
from keepmesh.protocol.node import PERSIST_INCARNATION, MeshNode, SubMachine
from keepmesh.protocol.rpc import RpcNotFound, refuse_fields

log = logging.getLogger("keepmesh.membership")

DIAL_BACKOFF_S = 2.0
MAX_QUEUED_PER_DIAL = 16
# Scheduling rounds given to the datagram readers before timers run: under CPU load the
# acks and refutations that already arrived would otherwise be read after the timer
# that judges their absence (specs/membership.md §6, late timers).
INPUT_YIELDS = 3
MAX_STREAM_BYTES = 4 * 1024 * 1024
STREAM_RETRY_S = (0.1, 0.3, 1.0)
ORDERED_METHOD = "migrate.msg"
MAX_ORDERED_BYTES = MAX_CHUNK + 64 * 1024  # one migrate.* record (a transfer chunk + header)
LANE_QUEUE = 4096          # ordered messages waiting for one member
# A lane with nothing to send for this long ends (the next message starts a new one): a
# lane whose member we never hear leave (never a member, gone while we were partitioned)
# must not hold a task and a queue for ever, one per node id others made us talk to.
LANE_IDLE_S = 60.0
# A lane call waits this long, plus the time its callee grants the request to arrive
# (1 s per 256 KiB, MIN_REQUEST_RATE_BPS): a fixed 10 s could never deliver a full 8 MiB
# batch over a link slower than 0.8 MiB/s, and the transfer's resends would only repeat it.
LANE_TIMEOUT_S = 10.0
# Messages already queued for one member leave together as one `migrate.batch` call (a
# checkpoint's chunks: one request streamed over one QUIC stream instead of a round trip
# per 768 KiB chunk), up to these bounds; the receiver buffers a batch whole (reserved
# from its connection's and the agent's buffer budgets like any large request).
BATCH_METHOD = "migrate.batch"
MAX_BATCH_BYTES = 8 * 1024 * 1024
MAX_BATCH_ITEMS = 64
MAX_JOIN = 16  # addresses one agent.join takes, given or re-joined through
STATE_FILE = "mesh.json"
LEGACY_STATE_FILE = "membership.json"

KeepHook = Callable[[StartKeep | StopKeep], Awaitable[None]]


def lane_timeout(size: int) -> float:
    """How long a lane call of `size` bytes waits for its answer: the callee's own
    allowance for the request to arrive, plus the time to handle and answer it."""
    return LANE_TIMEOUT_S + size / MIN_REQUEST_RATE_BPS


@dataclass
class _Lane:
    """One member's ordered lane: where messages are queued, and the scope that ends its
    task at once when the member is gone (queued messages to it are dropped, not tried)."""

    send: trio.MemorySendChannel[tuple[str, bytes]]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


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


class NothingToJoin(RpcNotFound):
    """`agent.join` without addresses on an agent that has no seeds (no --join, no join
    list in its config) and no discovered agents: `not_found`, so a program tells it from
    seeds that were there but could not be joined (`invalid`)."""


def _rejected(err: ChannelFailed) -> bool:
    """We refused the peer on its evidence/proof: a verdict, not a network failure."""
    return bool(getattr(err, "local", False)) and \
        getattr(err, "kind", "transport") in ("verification", "policy")


class MeshService:
    """One MeshNode per agent, driven from trio."""

    def __init__(self, agent: Agent, *, profile: str = "lan",
                 labels: dict[str, str] | None = None,
                 capacity: Capacity | None = None) -> None:
        self.agent = agent
        self.config = MembershipConfig.profile(profile)
        self.labels = dict(labels or {})
        self.capacity = capacity
        self.node: MeshNode | None = None
        self.keep_hook: KeepHook | None = None
        # sub-machines (placement, ...) plugged into the node when it is built
        self.machine_factories: list[Callable[[MeshNode], SubMachine]] = []
        self.on_output: list[Callable[[Output], None]] = []
        self._wake = trio.lowlevel.ParkingLot()
        self._dialing: dict[str, list[Send]] = {}
        self._dial_failed_at: dict[str, float] = {}
        self._nursery: trio.Nursery | None = None
        self._state: dict[str, Any] = {}
        self._lanes: dict[bytes, _Lane] = {}
        agent.register({"members.list": self._rpc_members, "swim.stream": self._rpc_stream,
                        ORDERED_METHOD: self._rpc_ordered, BATCH_METHOD: self._rpc_batch,
                        "agent.join": self._rpc_join, "agent.leave": self._rpc_leave})
        agent.on_peer.append(self._on_peer)
        agent.listen_address_of = self._listed_address
        agent.member_gone = self._member_gone
        agent.services.append(self.run)
        agent.on_leave.append(self.leave)  # SIGINT/SIGTERM and agent.leave (Agent.leave)

    @staticmethod
    def now() -> float:
        """The node's clock: wall-clock seconds (evidence `issued_at` is wall-clock)."""
        return time.time()

    @property
    def nursery(self) -> trio.Nursery:
        """Where services start the tasks that carry out the node's effects."""
        if self._nursery is None:
            raise ProtocolError("mesh not started")
        return self._nursery

    @property
    def membership(self) -> Membership | None:
        """The node's membership view (read-only use: members, metrics)."""
        return None if self.node is None else self.node.membership

    # ------------------------------------------------------------ disk
    def _load_state(self) -> dict[str, Any]:
        for name in (STATE_FILE, LEGACY_STATE_FILE):
            try:
                data = json.loads((self.agent.data_dir / name).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                return data
        return {}

    def _persist(self, key: str, value: int | str | bytes) -> None:
        self._state[key] = value.hex() if isinstance(value, bytes) else value
        path = self.agent.data_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state))
        os.replace(tmp, path)

    def _claims(self) -> Claims:
        ev = self.agent.own_evidence
        if ev is None:
            return Claims(tee=self.agent.backend.kind, measurement="", tcb="")
        tcb = ",".join(f"{k}={v}" for k, v in sorted(ev.tcb.items()))[:64]
        return Claims(tee=ev.tee, measurement=ev.measurement.hex(), tcb=tcb)

    # ------------------------------------------------------------ lifecycle
    async def run(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        signer = Ed25519Signer(self.agent.identity.seed)
        now = self.now()
        self._state = self._load_state()
        last = self._state.get(PERSIST_INCARNATION, 0)
        # A restarted member comes back with a higher incarnation than it ever used.
        incarnation = (last if isinstance(last, int) and last >= 0 else 0) + 1
        capacity = self.capacity or _host_capacity()
        record = make_record(signer, self.agent.address, incarnation, self._claims(),
                             capacity, self.labels)
        self.node = MeshNode(self.config, record, signer, CachingVerifier(Ed25519Verifier()),
                             random.SystemRandom(), now)
        for factory in self.machine_factories:
            self.node.add(factory(self.node))
        if self.agent.seeds:
            self.node.command(Join(tuple(self.agent.seeds)), now)
        for entry in list(self.agent.peers.values()):
            self._on_peer(entry)
        self.flush()
        while True:
            deadline = self.node.get_timer()
            wait = 1.0 if deadline is None else max(0.0, deadline - self.now())
            with trio.move_on_after(wait):
                await self._wake.park()
            for _ in range(INPUT_YIELDS):
                await trio.lowlevel.checkpoint()
            self.node.handle_timer(self.now())
            self.flush()

    def wake(self) -> None:
        """Re-read the node's timer (after an input from outside the run loop)."""
        self._wake.unpark_all()

    # ------------------------------------------------------------ outputs
    def flush(self) -> None:
        node = self.node
        if node is None:
            return
        while (item := node.next_effect()) is not None:
            if isinstance(item, Send):
                self._send(item)
            elif isinstance(item, RequestAttestation):
                self._attest(item)
            elif isinstance(item, Persist):
                self._persist(item.key, item.value)
            elif isinstance(item, StartKeep | StopKeep):
                self._keep(item)
            elif isinstance(item, MemberEvent):
                self._log_event(item)
                if isinstance(item, MemberJoined | MemberAlive | MemberUpdated):
                    self._track_address(item.node_id)
                if isinstance(item, MemberDead | MemberLeft):
                    self._end_lane(item.node_id)
            for cb in self.on_output:
                cb(item)
        self._wake.unpark_all()

    def _send(self, out: Send) -> None:
        if out.dst == self.agent.address:
            return
        if out.ordered and out.dst_id is not None:
            self._enqueue(out.dst_id, out.dst, out.data)
            return
        session = self._session_for(out)
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

    def _session_for(self, out: Send) -> Session | None:
        if out.dst_id is not None:
            entry = self.agent.peers.get(out.dst_id)
            if entry is not None and entry.session is not None \
                    and not entry.session.closed.is_set():
                return entry.session
            return None
        return self.agent.session_to_address(out.dst)

    async def _send_stream(self, session: Session, data: bytes) -> None:
        """A reliable Send: retried while the peer is only busy (its call slots full, a
        reset stream), given up when it answers that the message is wrong."""
        for backoff in STREAM_RETRY_S:
            try:
                await call(session, "swim.stream", {"data": data}, timeout=10)
                return
            except RpcError as err:
                log.debug("stream to %s failed: %s", session.address, err)
                if err.code not in ("busy", "internal") or session.closed.is_set():
                    return
            await trio.sleep(backoff)

    def send_ordered(self, node_id: bytes, address: str, data: bytes) -> None:
        """Carry bytes a sub-machine's effect produced (a transfer's chunks) on the
        member's ordered lane, behind whatever the node already queued there."""
        self._enqueue(node_id, address, data)

    def _enqueue(self, node_id: bytes, address: str, data: bytes) -> None:
        lane = self._lanes.get(node_id)
        if lane is not None:
            try:
                lane.send.send_nowait((address, data))
                return
            except trio.WouldBlock:
                log.warning("ordered queue to %s full; message dropped", fingerprint(node_id))
                return
            except trio.BrokenResourceError:
                pass  # its task ended (idle, or on a bug its guard logged): start a new lane
        send, recv = trio.open_memory_channel[tuple[str, bytes]](LANE_QUEUE)
        lane = self._lanes[node_id] = _Lane(send)
        assert self._nursery is not None
        self._nursery.start_soon(self._lane, node_id, lane, recv)
        send.send_nowait((address, data))

    def _end_lane(self, node_id: bytes) -> None:
        """The member is dead or left: end its lane now, so a churning mesh does not leave
        one idle task and queue per departed member. If it comes back, its next message
        starts a new lane (_enqueue)."""
        lane = self._lanes.pop(node_id, None)
        if lane is not None:
            lane.send.close()
            lane.scope.cancel()

    async def _lane(self, node_id: bytes, lane: _Lane,
                    recv: trio.MemoryReceiveChannel[tuple[str, bytes]]) -> None:
        """One member's ordered messages, one RPC at a time: what is already queued behind
        the first goes with it as one batch. Best effort: a message that cannot be
        delivered is dropped (the sub-machine's timeouts and resends cover it). Ends when
        the member is gone (_end_lane) or after LANE_IDLE_S with nothing to send."""
        try:
            with lane.scope:
                await self._lane_loop(node_id, recv)
        finally:
            if self._lanes.get(node_id) is lane:  # not a newer lane that replaced it
                del self._lanes[node_id]

    async def _lane_loop(self, node_id: bytes,
                         recv: trio.MemoryReceiveChannel[tuple[str, bytes]]) -> None:
        # recv is closed when this returns, however: a later _enqueue then starts anew.
        # Returning on idle takes no checkpoint between the last look at the queue and the
        # close, so no message can slip into a queue nobody reads.
        async with recv:
            carry: tuple[str, bytes] | None = None
            while True:
                if carry is None:
                    try:
                        with trio.move_on_after(LANE_IDLE_S):
                            carry = await recv.receive()
                        if carry is None:
                            carry = recv.receive_nowait()  # what came as the wait ended
                    except (trio.EndOfChannel, trio.WouldBlock):
                        return
                address, first = carry
                batch, size, carry = [first], len(first), None
                while len(batch) < MAX_BATCH_ITEMS:
                    try:
                        item = recv.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    if size + len(item[1]) > MAX_BATCH_BYTES:
                        carry = item
                        break
                    batch.append(item[1])
                    size += len(item[1])
                try:
                    session = await self.session_to(node_id, address)
                    if session is not None:
                        await self._lane_send(session, batch)
                except (RpcError, ChannelFailed, ProtocolError) as err:
                    log.debug("ordered message to %s failed: %s", fingerprint(node_id), err)

    async def _lane_send(self, session: Session, batch: list[bytes]) -> None:
        timeout = lane_timeout(sum(map(len, batch)))
        if len(batch) == 1:
            await call(session, ORDERED_METHOD, {"data": batch[0]}, timeout=timeout)
        else:
            await call(session, BATCH_METHOD, {"data": batch}, timeout=timeout)

    async def session_to(self, node_id: bytes, address: str) -> Session | None:
        """The attested session to `node_id` (dialled at `address` when there is none)."""
        entry = self.agent.peers.get(node_id)
        if entry is not None and entry.session is not None \
                and not entry.session.closed.is_set():
            return entry.session
        view = self.node.member(node_id) if self.node is not None else None
        session = await self.agent.connect(view.address if view is not None else address)
        return session if session.peer.identity == node_id else None

    def _dial(self, address: str, first: Send | None, subject: bytes | None = None) -> None:
        if address in self._dialing:
            if first is not None and len(self._dialing[address]) < MAX_QUEUED_PER_DIAL:
                self._dialing[address].append(first)
            return
        failed = self._dial_failed_at.get(address)
        if failed is not None and time.monotonic() - failed < DIAL_BACKOFF_S:
            return  # the packet is lost, as it would be to an unreachable host
        self._dialing[address] = [first] if first is not None else []
        assert self._nursery is not None
        self._nursery.start_soon(self._dial_task, address,
                                 subject if subject is not None else
                                 (first.dst_id if first is not None else None))

    async def _dial_task(self, address: str, subject: bytes | None) -> None:
        try:
            await self.agent.connect(address)
        except (ChannelFailed, ProtocolError) as err:
            self._dial_failed_at[address] = time.monotonic()
            self._dialing.pop(address, None)  # queued packets are lost, as to a dead host
            log.debug("cannot reach %s: %s", address, err)
            if isinstance(err, ChannelFailed) and _rejected(err) and subject is not None \
                    and self.node is not None:
                self.node.complete(AttestationVerdict(subject, False, reason=str(err)[:200]),
                                   self.now())
                self.flush()
            return
        queued = self._dialing.pop(address, [])
        for out in queued:
            self._send(out)

    def _attest(self, req: RequestAttestation) -> None:
        entry = self.agent.peers.get(req.node_id)
        if entry is not None and entry.session is not None and not entry.session.closed.is_set():
            self._report_verdict(entry)
            return
        self._dial(req.address, None, req.node_id)

    def _keep(self, item: StartKeep | StopKeep) -> None:
        hook = self.keep_hook
        if hook is None:
            if isinstance(item, StartKeep) and self.node is not None:
                self.node.complete(KeepFailed(item.keep_id, item.epoch,
                                              "this agent runs no keeps"), self.now())
            return
        assert self._nursery is not None
        self._nursery.start_soon(hook, item)

    def _log_event(self, event: MemberEvent) -> None:
        name = fingerprint(event.node_id)
        extra = {"event": f"member.{event.kind}",
                 "fields": {"member": name, "incarnation": event.incarnation}}
        if event.kind in ("dead", "suspect", "untrusted", "left"):
            log.info("member %s %s (incarnation %d) %s", name, event.kind, event.incarnation,
                     event.reason, extra=extra)
        elif event.kind in ("join", "alive"):
            log.info("member %s %s (incarnation %d)", name, event.kind, event.incarnation,
                     extra=extra)
        elif event.kind == "banned":
            # Membership banned a sender (forgeries, spoofing): drop its session too.
            log.warning("peer %s banned: %s", name if event.node_id else "-", event.reason,
                        extra=extra)
            entry = self.agent.peers.get(event.node_id)
            if entry is not None and entry.session is not None:
                entry.session.conn.close(ERR_PROTOCOL, "banned by membership")

    def _listed_address(self, node_id: bytes) -> str | None:
        view = self.node.member(node_id) if self.node is not None else None
        return view.address if view is not None and view.address else None

    def _member_gone(self, node_id: bytes) -> bool:
        view = self.node.member(node_id) if self.node is not None else None
        return view is not None and view.liveness in (MemberState.DEAD, MemberState.LEFT)

    def _track_address(self, node_id: bytes) -> None:
        """A member (re)joined or came back with a new record: its peer entry takes the
        address the record names. An agent restarted at another address connects to us
        itself, often before its new record reaches us, so its entry would otherwise keep
        its previous life's address (agent.peers, session_to_address) while connected."""
        entry = self.agent.peers.get(node_id)
        listed = self._listed_address(node_id)
        if entry is not None and listed is not None and entry.address != listed:
            entry.address = listed

    # ------------------------------------------------------------ inputs
    def _on_peer(self, entry: PeerEntry) -> None:
        """A newly attested agent session: its datagrams feed the node, its evidence vouches."""
        if self._nursery is None or entry.session is None:
            return
        self._nursery.start_soon(self._read_datagrams, entry.session)
        self._report_verdict(entry)

    def _report_verdict(self, entry: PeerEntry) -> None:
        """The session's channel verified this peer's evidence against our policy."""
        node = self.node
        if node is None or node.member(entry.identity) is None:
            return
        valid_for = None
        if entry.evidence is not None and entry.session is not None:
            issued = entry.session.peer.evidence_issued_at
            max_age = self.agent.policy.max_evidence_age_s
            if issued is not None and max_age:
                valid_for = max(0.0, issued + max_age - time.time())
        node.complete(AttestationVerdict(entry.identity, True, valid_for), self.now())
        self.flush()

    def feed(self, data: bytes, src: str, src_id: bytes) -> None:
        """One message from an attested agent session (datagram or stream)."""
        node = self.node
        if node is None:
            return
        view = node.member(src_id)
        node.receive(data, view.address if view is not None else src, src_id,
                     self.now())
        self.flush()

    async def _read_datagrams(self, session: Session) -> None:
        src_id = session.peer.identity
        while True:
            try:
                data = await session.conn.receive_datagram()
            except ConnectionClosed:
                return
            self.feed(data, session.address, src_id)

    # ------------------------------------------------------------ RPC
    async def _rpc_ordered(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        """One ordered message from a peer agent's lane (migrate.* records)."""
        if ctx.role != "agent":
            raise ProtocolError(f"{ORDERED_METHOD}: agents only")
        data = body.get("data")
        if not isinstance(data, bytes) or len(data) > MAX_ORDERED_BYTES:
            raise ProtocolError(f"{ORDERED_METHOD}: data must be bytes up to "
                                f"{MAX_ORDERED_BYTES}")
        if self.node is None:
            raise ProtocolError("mesh not started")
        self.feed(data, ctx.session.address, ctx.peer_key)
        return {}

    async def _rpc_batch(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        """Several ordered messages from a peer agent's lane, fed in their order; the
        whole batch is checked before any of it is fed."""
        if ctx.role != "agent":
            raise ProtocolError(f"{BATCH_METHOD}: agents only")
        data = body.get("data")
        if not isinstance(data, list) or not 1 <= len(data) <= MAX_BATCH_ITEMS \
                or not all(isinstance(d, bytes) and len(d) <= MAX_ORDERED_BYTES for d in data) \
                or sum(len(d) for d in data) > MAX_BATCH_BYTES:
            raise ProtocolError(f"{BATCH_METHOD}: data must be 1..{MAX_BATCH_ITEMS} byte "
                                f"strings of up to {MAX_ORDERED_BYTES}, "
                                f"{MAX_BATCH_BYTES} in all")
        if self.node is None:
            raise ProtocolError("mesh not started")
        for item in data:
            self.feed(item, ctx.session.address, ctx.peer_key)
        return {}

    async def _rpc_stream(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        if ctx.role != "agent":
            raise ProtocolError("swim.stream: agents only")
        data = body.get("data")
        if not isinstance(data, bytes) or len(data) > MAX_STREAM_BYTES:
            raise ProtocolError("swim.stream: data must be bytes up to 4 MiB")
        node = self.node
        if node is None:
            raise ProtocolError("membership not started")
        self.feed(data, ctx.session.address, ctx.peer_key)
        if node.member(ctx.peer_key) is not None and ctx.peer_key in self.agent.peers:
            self._report_verdict(self.agent.peers[ctx.peer_key])
        return {}

    async def _rpc_members(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        refuse_fields("members.list", body)
        node = self.node
        if node is None:
            return {"members": []}
        rows = []
        for view in node.members():  # our own view comes first
            row = member_json(view)
            row["self"] = view.node_id == node.node_id
            rows.append(row)
        return {"members": rows}

    async def _rpc_join(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        from keepmesh.agent.transport.quic import parse_address
        # a misspelt `addresses` must not silently re-join through the seeds
        refuse_fields("agent.join", body, ("addresses",))
        addresses = body.get("addresses", [])
        if isinstance(addresses, list) and not addresses:
            return await self._rejoin()
        if not isinstance(addresses, list) or not 1 <= len(addresses) <= MAX_JOIN or \
                not all(isinstance(a, str) for a in addresses):
            raise ProtocolError(f"agent.join: addresses must be 1-{MAX_JOIN} HOST:PORT strings")
        for a in addresses:
            parse_address(a)
        joined = []
        for a in addresses:
            try:
                await self.agent.connect(a)
                joined.append(a)
            except ChannelFailed as err:
                raise ProtocolError(f"cannot join {a}: {err}") from None
        self._join_through(joined)
        return {"joined": joined}

    def rejoin_candidates(self) -> list[str]:
        """Where `agent.join` without addresses goes: the seeds the agent was started with,
        then what discovery found (Agent.join_sources); ourselves left out, MAX_JOIN at most."""
        found = dict.fromkeys(self.agent.seeds)
        for source in self.agent.join_sources:
            found.update(dict.fromkeys(source()))
        found.pop(self.agent.address, None)
        return list(found)[:MAX_JOIN]

    async def _rejoin(self) -> dict[str, Any]:
        """`keepmesh join` with no address: an agent that lost its mesh (a partition, every
        peer restarted) tries its seeds again, all at once. It joins through those that
        attest; it fails only when none does, or when it has nothing to try."""
        candidates = self.rejoin_candidates()
        if not candidates:
            raise NothingToJoin("agent.join: no address given and the agent has no seeds to "
                                "re-join through (start it with --join HOST:PORT, a join "
                                "list in its config, or --discover)")
        attested: set[str] = set()
        failures: list[str] = []

        async def attempt(address: str) -> None:
            try:
                await self.agent.connect(address)
                attested.add(address)
            except (ChannelFailed, ProtocolError) as err:
                failures.append(f"{address}: {err}")

        async with trio.open_nursery() as nursery:
            for address in candidates:
                nursery.start_soon(attempt, address)
        if not attested:
            raise ProtocolError(f"cannot re-join: none of the agent's {len(candidates)} "
                                f"seed(s) could be joined ({failures[0]})")
        joined = [a for a in candidates if a in attested]
        self._join_through(joined)
        return {"joined": joined}

    def _join_through(self, addresses: list[str]) -> None:
        """Membership push-pulls (join) to these attested agents."""
        if self.node is not None:
            self.node.command(Join(tuple(addresses)), self.now())
            self.flush()

    async def _rpc_leave(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        refuse_fields("agent.leave", body)  # a misspelt option must not stop the agent
        node = self.node
        if node is None:
            raise ProtocolError("membership not started")
        assert self._nursery is not None
        self._nursery.start_soon(self.agent.leave)  # gossips via self.leave, then stops
        return {"left": True}

    async def leave(self) -> None:
        """Agent.leave hook: gossip a signed leave and give it a few gossip rounds to
        spread (Agent.leave caps the whole wait), so peers see "left", not "dead"."""
        node = self.node
        if node is None:
            return
        node.command(Leave(), self.now())
        self.flush()
        await trio.sleep(max(1.0, 5 * self.config.gossip_interval))


def _host_capacity() -> Capacity:
    return offered_capacity(None)[0]


def offered_capacity(memory_bytes: int | None) -> tuple[Capacity, int]:
    """The capacity advertised in our record: `memory_bytes` offered to keeps (None: the
    machine's memory) and every CPU. Advisory: the lease table decides."""
    cpu = (os.cpu_count() or 1) * 1000
    mem = memory_bytes // (1024 * 1024) if memory_bytes is not None else _memory_mb()
    mem = min(mem, 2**32 - 1)
    cap = Capacity(memory_mb=mem, cpu_milli=cpu, free_memory_mb=mem, free_cpu_milli=cpu)
    return cap, mem * 1024 * 1024


def _memory_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return 0


# The name startup.py and older callers use.
MembershipService = MeshService
