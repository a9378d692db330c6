"""Placement as a MeshNode sub-machine: entry-side negotiation, host-side leases, and
gossip of where keeps run. specs/placement.md is the reference.

Entry (the agent a deploy arrives at): filter candidates from the membership
view (alive and trusted, claims the policy can accept, labels, advertised
room), probe a sample (power of d choices, d per missing replica, grown by
the recent refusal rate as in Tarcil), reserve at the best bids with a short
lease (late binding: the host's lease table decides, not the advertisement),
move on after a refusal, and either hold every replica or release every
lease (all-or-nothing). With `commit_by_entry` (the simulator, where no owner
CLI ships bytes) the entry also commits; in the agent the owner's CLI commits
each lease when it ships the package it sealed after checking fresh evidence.

Host: answers probes from its LeaseTable, reserves or refuses, commits, and
expires reservations nobody committed.

Everyone: a bounded table keep -> (host, epoch, state), spread epidemically
(each change retransmitted a few times to a few random members).
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..effects import (
    Commit,
    Deploy,
    Drain,
    KeepFailed,
    KeepLocated,
    KeepStarted,
    KeepStopped,
    MemberEvent,
    Output,
    Placement,
    PlacementDone,
    PlacementFailed,
    Release,
    Send,
    StartKeep,
    Stop,
    StopKeep,
    TimerKind,
)
from ..errors import ProtocolError
from ..membership import MemberState, MemberView
from ..wire import Message, encode_payload
from .leases import LeaseTable, Refused
from .messages import (
    MAX_WHERE_ENTRIES,
    Location,
    PlaceBid,
    PlaceCommit,
    PlaceCommitted,
    PlaceProbe,
    PlaceRefused,
    PlaceRelease,
    PlaceReserve,
    PlaceReserved,
    PlaceWhere,
    decode_place,
)
from .requirements import Requirements

if TYPE_CHECKING:
    from ..node import MeshNode

MAX_REQUESTS = 256        # concurrent deploys one entry negotiates
MAX_LOCATIONS = 65536     # keeps one member tracks the location of
# The reply each phase asks for (a host may refuse anything). A reply of another kind
# carrying a waiting `req` is not an answer: a bid to a reservation used to consume the
# wait and wedge the request, a "reserved" to a probe to place a replica never reserved.
_ANSWERS: dict[str, tuple[type[Message], ...]] = {
    "probe": (PlaceBid, PlaceRefused),
    "reserve": (PlaceReserved, PlaceRefused),
    "commit": (PlaceCommitted, PlaceRefused),
}


@dataclass(frozen=True)
class PlacementConfig:
    lease_ttl: float = 30.0        # reservation life; the owner ships within it
    probe_timeout: float = 1.0     # a bid not back by then is a refusal
    reserve_timeout: float = 2.0
    base_d: int = 2                # candidates probed per missing replica
    max_d: int = 16
    max_rounds: int = 6
    gossip_interval: float = 0.5
    gossip_fanout: int = 3
    retransmit_mult: int = 3       # each location change is sent mult * log2(N+1) times
    refusal_alpha: float = 0.2     # EWMA weight of the latest reservation outcome
    commit_by_entry: bool = False  # simulator: the entry commits (no owner CLI)


@dataclass
class _Rumour:
    loc: Location
    left: int


@dataclass
class _Reserved:
    host_id: bytes
    host: str
    lease: int
    spread_value: str | None


@dataclass
class _Request:
    cmd: Deploy
    req: Requirements
    started: float
    placed: list[_Reserved] = field(default_factory=list)
    tried: set[bytes] = field(default_factory=set)
    phase: str = "probe"            # probe | reserve | commit
    waiting: dict[int, bytes] = field(default_factory=dict)   # wire req -> host id
    bids: list[tuple[int, int, bytes]] = field(default_factory=list)  # (-free, -slots, id)
    deadline: float = 0.0
    rounds: int = 0
    refusals: list[str] = field(default_factory=list)
    messages: int = 0


class PlacementMachine:
    """One node's placement state (entry, host and location table)."""

    prefix = b"place."
    timer_kind = TimerKind.PLACEMENT

    def __init__(self, node: MeshNode, rng: random.Random, *, memory_mb: int,
                 max_keeps: int, config: PlacementConfig | None = None) -> None:
        self.node = node
        self.rng = rng
        self.config = config or PlacementConfig()
        self.leases = LeaseTable(memory_mb, max_keeps)
        # (keep, host id) -> where a replica runs or ran (hosts' statements, gossiped)
        self.locations: dict[tuple[str, bytes], Location] = {}
        # keys of `locations` whose state is "stopped", oldest first: what a full table
        # gives up for a new entry (else the keeps ever stopped fill it for good)
        self._stopped: dict[tuple[str, bytes], None] = {}
        # what this entry placed recently, until the host's own statement arrives
        self.placed: dict[tuple[str, bytes], Location] = {}
        self.refusal_rate = 0.0
        self.stats: dict[str, int] = {}
        self.last_error = ""
        self._requests: dict[int, _Request] = {}       # by Deploy.request
        self._by_wire: dict[int, int] = {}             # wire req -> Deploy.request
        self._out: deque[Output] = deque()
        self._gossip: list[_Rumour] = []
        self._next_gossip: float | None = None
        # Members told what runs here again at the next gossip round (_announce_to):
        # one that just joined may not trust us yet when the first telling arrives.
        # members to announce our keeps to again, in the order they joined: a set would
        # send in hash order (PYTHONHASHSEED), and with jitter each send's draw from the
        # sender's RNG would then differ between processes (a simulation's hash with it)
        self._greet: dict[bytes, None] = {}
        # keep id -> True when another machine (migration) spreads that keep's location
        # in its own signed records: placement keeps its statement local, not gossiped
        self.located_elsewhere: Callable[[str], bool] | None = None

    # ============================================================ SubMachine face

    def receive(self, data: bytes, src: str, src_id: bytes | None, now: float) -> None:
        try:
            msg = decode_place(data)
            if src_id is None:
                raise ProtocolError("placement messages need an authenticated sender")
            self._on_message(msg, src, src_id, now)
        except ProtocolError as err:
            self._count("malformed")
            self.last_error = err.reason

    def handle_timer(self, now: float) -> None:
        expired = self.leases.expire(now)
        if expired:
            self._count("lease.expired", len(expired))
        for request in list(self._requests.values()):
            if request.deadline and now >= request.deadline:
                self._on_deadline(request, now)
        if self._next_gossip is not None and now >= self._next_gossip:
            self._gossip_round(now)

    def get_timer(self) -> float | None:
        times = [t for t in (self.leases.next_expiry(), self._next_gossip) if t is not None]
        times.extend(r.deadline for r in self._requests.values() if r.deadline)
        return min(times) if times else None

    def command(self, cmd: object, now: float) -> bool:
        if isinstance(cmd, Deploy):
            self._deploy(cmd, now)
        elif isinstance(cmd, Commit):
            if cmd.lease == 0:
                held = self.leases.holds(cmd.keep_id)
                if held is not None and held.committed:
                    return True  # already runs here (a redeploy)
                try:
                    fresh = self.leases.reserve(cmd.keep_id, cmd.memory_mb, now,
                                                self.config.lease_ttl)
                except Refused as err:
                    raise Refused(f"this agent cannot take the keep: {err.reason}") from None
                self._commit_local(fresh.lease_id, cmd.keep_id, cmd.epoch, cmd.owner, now)
            else:
                self._commit_local(cmd.lease, cmd.keep_id, cmd.epoch, cmd.owner, now)
        elif isinstance(cmd, Release):
            gone = self.leases.release_keep(cmd.keep_id)
            if gone is not None:
                self._locate(cmd.keep_id, self.node.node_id, self.node.address, gone.epoch,
                             "stopped", self._owner_of(cmd.keep_id), now)
        elif isinstance(cmd, Stop):
            running = self.leases.holds(cmd.keep_id)
            if running is None:
                raise ProtocolError(f"keep {cmd.keep_id[:64]!r} does not run here")
            self._out.append(StopKeep(cmd.keep_id, running.epoch, "stopped by owner"))
        elif isinstance(cmd, Drain):
            self.leases.draining = True
        else:
            return False
        return True

    def complete(self, result: object, now: float) -> bool:
        if isinstance(result, KeepFailed | KeepStopped):
            lease = self.leases.holds(result.keep_id)
            if lease is not None and lease.epoch == result.epoch:
                self.leases.release(lease.lease_id)
                self._locate(result.keep_id, self.node.node_id, self.node.address,
                             result.epoch, "stopped", self._owner_of(result.keep_id), now)
            return True
        return isinstance(result, KeepStarted)

    def on_member_event(self, event: MemberEvent, now: float) -> None:
        """A host that died or lost trust no longer counts for pending requests; a member
        that joined (or came back) is told what runs here."""
        if event.kind in ("join", "alive"):
            self._announce_to(event.node_id)
            self._greet[event.node_id] = None
            if self._next_gossip is None:
                self._next_gossip = now + self.config.gossip_interval
        if event.kind in ("dead", "left", "untrusted"):
            for request in list(self._requests.values()):
                if event.node_id in request.waiting.values():
                    for wire, host in list(request.waiting.items()):
                        if host == event.node_id:
                            self._refused(request, wire, f"host {event.kind}", now)

    def next_output(self) -> Output | None:
        return self._out.popleft() if self._out else None

    # ============================================================ entry side

    def candidates(self, req: Requirements) -> tuple[list[MemberView], str]:
        """Members that can be asked, and if none, what could not be met (one line)."""
        views = [v for v in self.node.members() if v.state is MemberState.ALIVE
                 and v.node_id not in req.exclude]
        trusted = [v for v in views if req.claims_ok(v)]
        if not trusted:
            return [], f"no attested member whose claims meet the policy ({req.describe()})"
        labelled = [v for v in trusted if req.labels_ok(v)]
        if not labelled:
            return [], f"no {req.describe()}"
        roomy = [v for v in labelled if req.room_ok(v)]
        if not roomy:
            return [], f"no {req.describe()}"
        spread = req.placement.spread
        if spread is not None:
            values = {v.labels.get(spread) for v in roomy}
            if len(values) < req.replicas:
                return [], (f"{req.replicas} replicas need {req.replicas} distinct values of "
                            f"label {spread}, only {len(values)} among {req.describe()}")
        elif len(roomy) < req.replicas:
            return [], (f"{req.replicas} replicas need {req.replicas} distinct hosts, only "
                        f"{len(roomy)} {req.describe()}")
        return roomy, ""

    def _deploy(self, cmd: Deploy, now: float) -> None:
        req = cmd.requirements
        if not isinstance(req, Requirements):
            raise ProtocolError("deploy: requirements missing")
        if cmd.request in self._requests:
            raise ProtocolError(f"deploy: request {cmd.request} already in progress")
        if len(self._requests) >= MAX_REQUESTS:
            self._fail_now(cmd, "entry agent busy: too many placements in progress", now)
            return
        _, why = self.candidates(req)
        if why:
            self._fail_now(cmd, why, now)
            return
        request = _Request(cmd, req, now)
        self._requests[cmd.request] = request
        self._probe_round(request, now)

    def _fail_now(self, cmd: Deploy, reason: str, now: float) -> None:
        self._count("placement.failed")
        self._out.append(PlacementFailed(cmd.request, cmd.keep_id, reason, now))

    def sample_size(self, missing: int) -> int:
        """Power of d choices, d grown by recent refusals (Tarcil's adaptive sampling)."""
        d = self.config.base_d * (1.0 + 3.0 * self.refusal_rate)
        return max(1, min(self.config.max_d * missing, math.ceil(d * missing)))

    def _missing(self, request: _Request) -> int:
        return request.req.replicas - len(request.placed)

    def _eligible(self, request: _Request) -> list[MemberView]:
        cands, _ = self.candidates(request.req)
        used_hosts = {p.host_id for p in request.placed}
        spread = request.req.placement.spread
        used_values = {p.spread_value for p in request.placed}
        return [v for v in cands if v.node_id not in request.tried
                and v.node_id not in used_hosts
                and (spread is None or v.labels.get(spread) not in used_values)]

    def _probe_round(self, request: _Request, now: float) -> None:
        request.rounds += 1
        missing = self._missing(request)
        pool = self._eligible(request)
        if request.rounds > self.config.max_rounds or len(pool) < 1:
            self._give_up(request, now)
            return
        k = min(len(pool), self.sample_size(missing))
        sample = self.rng.sample(pool, k)
        request.phase = "probe"
        request.bids = []
        request.waiting = {}
        request.deadline = now + self.config.probe_timeout
        sends: list[tuple[MemberView, Message]] = []
        for view in sample:
            wire = self._wire_id(request)
            request.waiting[wire] = view.node_id
            sends.append((view, PlaceProbe(req=wire, keep=request.cmd.keep_id,
                                           memory_mb=request.req.memory_mb)))
        self._send_all(request, sends, now)

    def _reserve_best(self, request: _Request, now: float) -> None:
        request.phase = "reserve"
        request.waiting = {}
        missing = self._missing(request)
        spread = request.req.placement.spread
        used = {p.spread_value for p in request.placed}
        chosen = 0
        sends: list[tuple[MemberView, Message]] = []
        for _, _, host_id in sorted(request.bids):
            if chosen >= missing:
                break
            view = self.node.member(host_id)
            if view is None:
                continue
            value = view.labels.get(spread) if spread is not None else None
            if spread is not None and value in used:
                continue
            used.add(value)
            wire = self._wire_id(request)
            request.waiting[wire] = host_id
            sends.append((view, PlaceReserve(
                req=wire, keep=request.cmd.keep_id, memory_mb=request.req.memory_mb,
                ttl_ms=int(self.config.lease_ttl * 1000))))
            chosen += 1
        if chosen == 0:
            self._probe_round(request, now)
            return
        request.deadline = now + self.config.reserve_timeout
        self._send_all(request, sends, now)

    def _on_bid(self, request: _Request, wire: int, bid: PlaceBid, now: float) -> None:
        host = request.waiting.pop(wire, None)
        if host is None or request.phase != "probe":
            return
        if bid.ok and bid.free_mb >= request.req.memory_mb and bid.free_slots > 0:
            # best = most free memory after placing (least loaded), then most slots
            request.bids.append((-bid.free_mb, -bid.free_slots, host))
        else:
            request.tried.add(host)  # full: not asked again by this request
            self._note_outcome(refused=True)
            request.refusals.append(f"a host had {bid.free_mb} MiB and {bid.free_slots} "
                                    f"slots free for {request.req.memory_mb} MiB asked"
                                    + ("" if bid.ok else " (it bid full)"))
        if not request.waiting:
            self._after_probe(request, now)

    def _after_probe(self, request: _Request, now: float) -> None:
        if request.bids:
            self._reserve_best(request, now)
        else:
            self._probe_round(request, now)

    def _on_reserved(self, request: _Request, wire: int, msg: PlaceReserved, now: float) -> None:
        host = request.waiting.pop(wire)
        self._note_outcome(refused=False)
        view = self.node.member(host)
        spread = request.req.placement.spread
        request.placed.append(_Reserved(host, view.address if view else "", msg.lease,
                                        view.labels.get(spread) if view and spread else None))
        if not request.waiting:
            self._after_reserve(request, now)

    def _refused(self, request: _Request, wire: int, reason: str, now: float) -> None:
        host = request.waiting.pop(wire, None)
        if host is None:
            return
        request.tried.add(host)
        self._note_outcome(refused=True)
        request.refusals.append(reason)
        if not request.waiting:
            if request.phase == "probe":
                self._after_probe(request, now)
            elif request.phase == "reserve":
                self._after_reserve(request, now)
            else:
                self._give_up(request, now)

    def _after_reserve(self, request: _Request, now: float) -> None:
        if self._missing(request) > 0:
            self._probe_round(request, now)
            return
        if self.config.commit_by_entry:
            request.phase = "commit"
            request.waiting = {}
            sends: list[tuple[MemberView, Message]] = []
            for p in request.placed:
                view = self.node.member(p.host_id)
                if view is None:
                    continue
                wire = self._wire_id(request)
                request.waiting[wire] = p.host_id
                sends.append((view, PlaceCommit(req=wire, lease=p.lease,
                                                keep=request.cmd.keep_id, epoch=1)))
            request.deadline = now + self.config.reserve_timeout
            if not request.waiting:
                self._give_up(request, now)
                return
            self._send_all(request, sends, now)
            return
        self._done(request, now)

    def _on_committed(self, request: _Request, wire: int, now: float) -> None:
        if request.waiting.pop(wire, None) is None or request.phase != "commit":
            return
        if not request.waiting:
            self._done(request, now)

    def _on_deadline(self, request: _Request, now: float) -> None:
        for wire in list(request.waiting):
            self._refused(request, wire, "no answer in time", now)
            if request.cmd.request not in self._requests:
                return

    def _done(self, request: _Request, now: float) -> None:
        self._finish(request)
        self._count("placement.done")
        for p in request.placed:
            # The entry routes the owner's next call at once; only the host's own
            # statement is gossiped (this one is local and may be superseded).
            if len(self.placed) >= MAX_REQUESTS:
                self.placed.pop(next(iter(self.placed)))
            self.placed[(request.cmd.keep_id, p.host_id)] = Location(
                keep=request.cmd.keep_id, host_id=p.host_id, host=p.host, epoch=1,
                state="running", owner=request.req.owner)
        placements = tuple(Placement(p.host_id, p.host, 1, p.lease) for p in request.placed)
        self._out.append(PlacementDone(request.cmd.request, request.cmd.keep_id, placements, now))

    def _give_up(self, request: _Request, now: float) -> None:
        """All-or-nothing: every lease this request holds is released."""
        self._finish(request)
        for p in request.placed:
            view = self.node.member(p.host_id)
            if view is not None:
                self._send(request, view, PlaceRelease(lease=p.lease, keep=request.cmd.keep_id),
                           now)
        self._count("placement.failed")
        reason = f"no {request.req.describe()} accepted a reservation"
        if request.placed:
            reason = (f"only {len(request.placed)} of {request.req.replicas} replicas could be "
                      f"reserved ({request.req.describe()})")
        if request.refusals:
            reason += f"; last refusal: {request.refusals[-1]}"
        self._out.append(PlacementFailed(request.cmd.request, request.cmd.keep_id, reason, now))

    def _finish(self, request: _Request) -> None:
        self._requests.pop(request.cmd.request, None)
        for wire in [w for w, r in self._by_wire.items() if r == request.cmd.request]:
            del self._by_wire[wire]
        request.deadline = 0.0


    def _note_outcome(self, refused: bool) -> None:
        a = self.config.refusal_alpha
        self.refusal_rate = (1 - a) * self.refusal_rate + a * (1.0 if refused else 0.0)

    def _wire_id(self, request: _Request) -> int:
        wire = self.rng.getrandbits(62)
        while wire in self._by_wire:
            wire = self.rng.getrandbits(62)
        self._by_wire[wire] = request.cmd.request
        return wire

    def _send(self, request: _Request | None, view: MemberView, msg: Message,
              now: float) -> None:
        if request is not None:
            request.messages += 1
        self._count("sent." + msg.TYPE)
        if view.node_id == self.node.node_id:
            # to ourselves: handled at once, as if delivered
            self._on_message(msg, view.address, view.node_id, now)
            return
        self._out.append(Send(view.address, encode_payload(msg), True, view.node_id))

    def _send_all(self, request: _Request, sends: list[tuple[MemberView, Message]],
                  now: float) -> None:
        """Send after every expected reply is registered: a message to ourselves is
        answered synchronously and must not find the round half set up."""
        for view, msg in sends:
            if request.cmd.request not in self._requests:
                return  # finished by a synchronous answer
            if getattr(msg, "req", None) in request.waiting:  # still this round's
                self._send(request, view, msg, now)

    def _reply(self, src: str, src_id: bytes, msg: Message, now: float) -> None:
        if src_id == self.node.node_id:
            self._on_message(msg, src, src_id, now)
            return
        self._out.append(Send(src, encode_payload(msg), True, src_id))

    def messages_for(self, request_id: int) -> int:
        r = self._requests.get(request_id)
        return 0 if r is None else r.messages

    # ============================================================ host side

    def _on_message(self, msg: Message, src: str, src_id: bytes, now: float) -> None:
        if isinstance(msg, PlaceProbe):
            self.leases.expire(now)
            ok = not self.leases.draining and self.leases.free_mb() >= msg.memory_mb \
                and self.leases.free_slots() > 0
            self._reply(src, src_id, PlaceBid(req=msg.req, free_mb=max(0, self.leases.free_mb()),
                                              free_slots=max(0, self.leases.free_slots()),
                                              ok=ok), now)
        elif isinstance(msg, PlaceReserve):
            ttl = min(msg.ttl_ms / 1000.0, self.config.lease_ttl)
            try:
                lease = self.leases.reserve(msg.keep, msg.memory_mb, now, ttl, holder=src_id)
            except Refused as err:
                self._count("reserve.refused")
                self._reply(src, src_id, PlaceRefused(req=msg.req, reason=err.reason[:200]), now)
                return
            self._count("reserve.granted")
            self._reply(src, src_id, PlaceReserved(req=msg.req, lease=lease.lease_id,
                                                   ttl_ms=int(ttl * 1000)), now)
        elif isinstance(msg, PlaceCommit):
            try:
                self._commit_by_wire(msg, src_id, now)
            except ProtocolError as err:
                self._reply(src, src_id, PlaceRefused(req=msg.req, reason=err.reason[:200]), now)
                return
            self._reply(src, src_id, PlaceCommitted(req=msg.req, lease=msg.lease), now)
        elif isinstance(msg, PlaceRelease):
            held = self.leases.leases.get(msg.lease)
            if held is not None and msg.keep in (held.keep_id, "") and not held.committed \
                    and held.holder == src_id:  # lease ids are small counters: guessable
                self.leases.release(msg.lease)
                self._count("lease.released")
        elif isinstance(msg, PlaceWhere):
            self._on_where(msg, src_id, now)
        else:
            self._on_reply(msg, src_id, now)

    def _on_reply(self, msg: Message, src_id: bytes, now: float) -> None:
        wire = getattr(msg, "req", None)
        if not isinstance(wire, int):
            return
        rid = self._by_wire.get(wire)
        request = self._requests.get(rid) if rid is not None else None
        if request is None or request.waiting.get(wire) != src_id:
            if request is not None and isinstance(msg, PlaceReserved) and any(
                    p.host_id == src_id and p.lease == msg.lease for p in request.placed):
                self._count("reply.duplicate")  # the one this request holds: keep it
            elif rid is not None and isinstance(msg, PlaceReserved):
                # too late (we moved on): give the lease back rather than strand it
                view = self.node.member(src_id)
                keep = request.cmd.keep_id if request is not None else ""
                if view is not None:
                    self._send(None, view, PlaceRelease(lease=msg.lease, keep=keep), now)
            else:
                self._count("reply.unexpected")
            return
        if not isinstance(msg, _ANSWERS[request.phase]):
            self._count("reply.unexpected")  # the member asked, but not this question
            return
        if isinstance(msg, PlaceBid):
            self._on_bid(request, wire, msg, now)
        elif isinstance(msg, PlaceReserved):
            self._on_reserved(request, wire, msg, now)
        elif isinstance(msg, PlaceRefused):
            self._refused(request, wire, msg.reason, now)
        elif isinstance(msg, PlaceCommitted):
            self._on_committed(request, wire, now)

    def _commit_by_wire(self, msg: PlaceCommit, src_id: bytes, now: float) -> None:
        """`place.commit` is the simulator's (commit_by_entry): in the agent the owner
        commits (keeps.deploy), and a commit over the wire from any member would turn a
        reservation into a hold that never expires, for a keep that never starts. Only
        the member that reserved the lease may commit it (lease ids are guessable)."""
        if not self.config.commit_by_entry:
            raise Refused("this host is committed to by the owner, not over place.commit")
        held = self.leases.leases.get(msg.lease)
        if held is not None and held.holder != src_id:
            raise Refused(f"lease {msg.lease} was not reserved by this member")
        if held is not None and held.committed:
            if (held.keep_id, held.epoch) != (msg.keep, msg.epoch):
                raise Refused(f"lease {msg.lease} is already committed")
            self._count("commit.duplicate")  # answered again, the keep not started twice
            return
        self._commit_local(msg.lease, msg.keep, msg.epoch, b"", now)

    def _commit_local(self, lease_id: int, keep_id: str, epoch: int, owner: bytes,
                      now: float) -> None:
        lease = self.leases.commit(lease_id, keep_id, epoch, now)
        self._count("lease.committed")
        if self.config.commit_by_entry:
            self._out.append(StartKeep(keep_id, epoch, b"", lease.memory_mb))
        self._locate(keep_id, self.node.node_id, self.node.address, epoch, "running", owner, now)

    # ============================================================ locations

    def where(self, keep_id: str) -> list[Location]:
        """Every replica of `keep_id` this node has heard of (running or stopped)."""
        return [loc for (keep, _), loc in self.locations.items() if keep == keep_id]

    def known(self) -> list[Location]:
        """Hosts' statements, plus this entry's own recent placements not yet confirmed
        (for routing the owner's next command; never gossiped)."""
        extra = [loc for key, loc in self.placed.items() if key not in self.locations]
        return list(self.locations.values()) + extra

    def _owner_of(self, keep_id: str) -> bytes:
        loc = self.locations.get((keep_id, self.node.node_id))
        return loc.owner if loc is not None else b""

    def _locate(self, keep_id: str, host_id: bytes, host: str, epoch: int, state: str,
                owner: bytes, now: float) -> None:
        loc = Location(keep=keep_id, host_id=host_id, host=host, epoch=epoch, state=state,
                       owner=owner)
        self._accept(loc, now)

    def _newer(self, loc: Location) -> bool:
        cur = self.locations.get((loc.keep, loc.host_id))
        if cur is None:
            return True
        if loc.epoch != cur.epoch:
            return loc.epoch > cur.epoch
        return cur.state == "running" and loc.state == "stopped" and cur.host_id == loc.host_id

    def _accept(self, loc: Location, now: float) -> None:
        if not self._newer(loc):
            return
        key = (loc.keep, loc.host_id)
        if key not in self.locations and len(self.locations) >= MAX_LOCATIONS:
            if not self._stopped:
                self._count("locations.full")
                return
            oldest = next(iter(self._stopped))
            del self._stopped[oldest], self.locations[oldest]
            self._count("locations.evicted")
        self.locations[key] = loc
        if loc.state == "stopped":
            self._stopped.pop(key, None)
            self._stopped[key] = None
        else:
            self._stopped.pop(key, None)
        self._out.append(KeepLocated(loc.keep, loc.host_id, loc.host, loc.epoch, loc.state, now))
        if self.located_elsewhere is not None and self.located_elsewhere(loc.keep):
            return  # one location system: the signed record carries it
        n = max(1, self.node.membership.num_known())
        sends = self.config.retransmit_mult * max(1, math.ceil(math.log2(n + 1)))
        self._gossip = [g for g in self._gossip
                        if (g.loc.keep, g.loc.host_id) != (loc.keep, loc.host_id)]
        self._gossip.append(_Rumour(loc, sends))
        if self._next_gossip is None:
            self._next_gossip = now + self.config.gossip_interval * self.rng.random()

    def _on_where(self, msg: PlaceWhere, src_id: bytes, now: float) -> None:
        for loc in msg.entries:
            # Only a trusted live member may be named as host; the host itself is
            # authoritative about its own keeps (a relay can only repeat it).
            if loc.host_id != self.node.node_id:
                view = self.node.member(loc.host_id)
                if view is None or view.state is not MemberState.ALIVE:
                    self._count("where.unknown_host")
                    continue
            elif src_id != self.node.node_id:
                continue  # nobody tells us what runs here
            self._accept(loc, now)

    def _announce_to(self, node_id: bytes) -> None:
        """Send a member that joined, or came back (restarted, refuted), this host's own
        running copies: at once, and again at the next gossip round (it drops entries
        from a host it does not trust yet, and its verdict on us may come later than
        ours on it). Gossip repeats each location a bounded number of times, so a
        member arriving later would otherwise never learn of copies placed before it
        (`keeps.list` and `keeps.call` from it would not find them). Only our own
        entries, which the receiver takes from us as their host; keeps migration tracks
        travel in its signed records instead."""
        view = self.node.member(node_id)
        if view is None or node_id == self.node.node_id:
            return
        me = self.node.node_id
        own = [loc for (keep, host), loc in self.locations.items()
               if host == me and loc.state == "running"
               and not (self.located_elsewhere is not None and self.located_elsewhere(keep))]
        for i in range(0, len(own), MAX_WHERE_ENTRIES):
            data = encode_payload(PlaceWhere(entries=tuple(own[i:i + MAX_WHERE_ENTRIES])))
            self._out.append(Send(view.address, data, True, node_id))
            self._count("sent.place.where")

    def _gossip_round(self, now: float) -> None:
        greet, self._greet = self._greet, {}
        for node_id in greet:  # once more, now that it has had time to attest us
            self._announce_to(node_id)
        self._gossip = [g for g in self._gossip if g.left > 0]
        if not self._gossip:
            self._next_gossip = None
            return
        batch = self._gossip[:MAX_WHERE_ENTRIES]
        peers = [v for v in self.node.members() if v.state is MemberState.ALIVE
                 and v.node_id != self.node.node_id]
        targets = self.rng.sample(peers, min(len(peers), self.config.gossip_fanout))
        if targets:
            data = encode_payload(PlaceWhere(entries=tuple(g.loc for g in batch)))
            for view in targets:
                self._out.append(Send(view.address, data, True, view.node_id))
            self._count("sent.place.where", len(targets))
            for g in batch:
                g.left -= 1
        self._next_gossip = now + self.config.gossip_interval

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n
