"""SWIM + Lifeguard membership as a sans-IO state machine.

Why sans-IO: the agent drives it from trio and QUIC, the simulator drives
10,000 of them from a heap of virtual-time events, and both run exactly this
code. Inputs are `join`, `leave`, `receive`, `handle_timer`, `set_trust`,
`update_local`; outputs are drained with `datagrams_to_send`, `next_event`
and `get_timer`. Nothing here reads a clock or draws global randomness.

Follows HashiCorp memberlist (state.go) closely where it is proven, and
departs where keepmesh's threat model demands (records signed by their
subject, accusations only about the exact record version held, senders
penalised for forgeries, attestation gating "alive"). specs/membership.md
is the reference.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ..address import canonical_address
from ..errors import ProtocolError
from ..wire import Message, encode_payload
from .awareness import Awareness
from .broadcast import BroadcastQueue
from .config import MembershipConfig
from .messages import (
    PRIMARY,
    Ack,
    Alive,
    Dead,
    Gossip,
    Leave,
    LeaveStatement,
    Nack,
    Ping,
    PingReq,
    PushPull,
    PushPullEntry,
    Suspect,
    Sync,
    accusation_signed_bytes,
    carrying,
    decode_gossip_item,
    decode_swim,
    with_gossip,
)
from .penalties import FORGERY, INVALID_RECORD, UNFOUNDED, Penalties
from .records import (
    MAX_RECORD_BYTES,
    Capacity,
    Claims,
    NodeRecord,
    decode_record,
    intern_record,
    make_record,
)
from .signing import Address, CachingVerifier, NodeId, RecordSigner, RecordVerifier
from .suspicion import Suspicion
from .table import (
    MemberBase,
    MemberState,
    MemberTable,
    ProbeOrder,
    Trust,
    _Member,
    bucket_of,
    differing_buckets,
    entry_hash,
    pack_digest,
    unpack_digest,
)

_GOSSIP_ITEM_MAX = MAX_RECORD_BYTES + 64
_ITEM_OVERHEAD = 3      # msgpack bin8/bin16 header per piggybacked item
_LIST_GROWTH = 3        # fixarray -> array16 header when items are added
_MAX_RELAYS = 1024      # outstanding ping-req relays we serve at once
_MAX_REQUESTERS = 8     # ping-reqs for one target folded into one outstanding relay ping
_NACK_FRACTION = 0.8    # of probe_timeout, when a relay gives up and nacks


@dataclass(frozen=True)
class MemberEvent:
    kind: str  # join | update | suspect | alive | dead | left | untrusted | attest
    node_id: NodeId
    incarnation: int
    at: float
    reason: str = ""


class Outgoing(NamedTuple):
    """One message to send. A tuple, not a frozen dataclass: one is built per datagram
    and a frozen dataclass's constructor cost three times as much."""

    dst: Address
    data: bytes
    reliable: bool


@dataclass(frozen=True)
class MemberView:
    node_id: NodeId
    address: Address
    state: MemberState      # UNTRUSTED whenever trust is not TRUSTED, else liveness
    incarnation: int
    claims: Claims
    capacity: Capacity
    labels: dict[str, str]
    since: float
    trust: Trust
    liveness: MemberState   # alive/suspect/dead/left regardless of trust
    record: NodeRecord


class _Probe:
    __slots__ = ("target", "seq", "timeout_at", "end_at", "indirect_sent", "expected_nacks",
                 "nackers", "late", "fallback_seq")

    def __init__(self, target: NodeId, seq: int, timeout_at: float, end_at: float) -> None:
        self.target = target
        self.seq = seq
        self.timeout_at = timeout_at
        self.end_at = end_at
        self.indirect_sent = False
        self.expected_nacks = 0
        self.nackers: set[NodeId] = set()
        self.late = False  # our own timers ran late during it: a missed ack proves nothing
        self.fallback_seq: int | None = None  # seq of the stream ping sent with the ping_reqs


class _Relay:
    """One outstanding ping toward `target`, answering every requester that asked."""

    __slots__ = ("target", "requesters", "nacked")

    def __init__(self, target: NodeId) -> None:
        self.target = target
        self.nacked = False  # its nack time passed: a later requester needs a relay of its own
        # (requester address, requester's seq, still owes a nack)
        self.requesters: list[tuple[Address, int, bool]] = []


_LIVE = (MemberState.ALIVE, MemberState.SUSPECT)
_SENT = {cls.TYPE: "sent." + cls.TYPE for cls in (*PRIMARY, PushPull, Sync)}
_RECV = {cls.TYPE: "recv." + cls.TYPE for cls in (*PRIMARY, PushPull, Sync)}


class Membership:
    """One node's view of the mesh. Not thread-safe; drive it from one task."""

    def __init__(self, config: MembershipConfig, record: NodeRecord, signer: RecordSigner,
                 verifier: RecordVerifier, rng: random.Random, now: float, *,
                 require_attestation: bool = True) -> None:
        if record.node_id != signer.node_id:
            raise ProtocolError("membership: record node_id is not the signer's key")
        self.config = config
        self.signer = signer
        self.verifier = verifier
        self.rng = rng
        self.require_attestation = require_attestation
        self.node_id: NodeId = signer.node_id
        self.record = make_record(signer, record.address, record.incarnation, record.claims,
                                  record.capacity, record.labels)
        self.awareness = Awareness(config.awareness_max_multiplier)
        self.stats: dict[str, int] = {}
        self.last_error = ""
        self._members = MemberTable()
        self._n_live = 0
        self._probe_order = ProbeOrder()
        self._dead_ids: dict[NodeId, None] = {}  # members we declared dead (reconnect)
        self._limit_n = 0   # n for which _limit is the gossip retransmit limit
        self._limit = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._relay_by_target: dict[NodeId, int] = {}
        self._seq = rng.getrandbits(31)
        self._heap: list[tuple[float, int, str, NodeId | int]] = []
        self._heap_n = 0
        self._queue = BroadcastQueue(config.max_broadcasts)
        self._outbox: list[Outgoing] = []
        # Simulator object mode only (None in the agent): id(sent bytes) -> the message
        # equal to decoding them, handed to the receiving simulated member with the bytes.
        self.handover: dict[int, Message] | None = None
        self._events: deque[MemberEvent] = deque()
        self._penalties = Penalties(config.penalty_threshold, config.penalty_decay_s,
                                    config.ban_s)
        # Refuted accusations per accuser: past max_unfounded its accusations are ignored.
        self._unfounded = Penalties(config.max_unfounded, config.penalty_decay_s, config.ban_s)
        self._n_pending = 0
        self._late_counted_at = -math.inf
        self._clock = now  # latest `now` seen (bans' default clock for is_banned)
        self.max_timer_lateness = 0.0
        self._seeds: tuple[Address, ...] = ()
        self._leaving = False
        self._leave_sig: bytes | None = None
        self._joined_cluster = False
        self._next_probe = now + rng.uniform(0.0, config.probe_interval)
        self._next_gossip = now + rng.uniform(0.0, config.gossip_interval)
        self._next_push_pull = (now + rng.uniform(0.0, config.push_pull_interval)
                                if config.push_pull_interval > 0 else None)
        self._join_retry_at: float | None = None
        self._priority: list[NodeId] = []   # suspects to verify with our own probe
        self._accused = False               # an accusation about us arrived in this packet

    # ================================================================ inputs

    def join(self, seeds: Sequence[Address], now: float) -> None:
        """Contact seeds with a push-pull; retried while we know nobody. Seeds are
        canonicalised; one that is not a valid address is skipped (`seeds.invalid`,
        last_error), never dialled: a bad flag must not stop the agent."""
        canon: list[Address] = []
        for a in seeds:
            try:
                canon.append(canonical_address(a))
            except ProtocolError as err:
                self._count("seeds.invalid")
                self.last_error = err.reason
        self._seeds = tuple(a for a in dict.fromkeys(canon) if a != self.record.address)[:64]
        self._contact_seeds(now)

    def leave(self, now: float) -> None:
        """Graceful leave: a signed notice, gossiped; we stop probing but keep gossiping."""
        if self._leaving:
            return
        self._catch_up_gossip(now)
        self._leaving = True
        statement = LeaveStatement(node=self.node_id, incarnation=self.record.incarnation)
        self._leave_sig = self.signer.sign(encode_payload(statement))
        leave = Leave(node=self.node_id, incarnation=self.record.incarnation,
                      signature=self._leave_sig)
        self._queue.queue(self.node_id, encode_payload(leave))
        self._probe = None

    @property
    def leaving(self) -> bool:
        return self._leaving

    def pending_broadcasts(self) -> int:
        """How much gossip is still queued (the agent may wait for 0 before exiting after leave)."""
        return len(self._queue)

    def receive(self, data: bytes, src: Address, now: float, src_id: NodeId | None = None,
                decoded: Message | None = None) -> None:
        """Feed one datagram or stream message. Never raises on bad input: it is
        counted (stats["malformed"], last_error) and dropped. `decoded` (simulator object
        mode only) is the message equal to decoding `data`, so decoding is skipped; every
        other check runs on it and on len(data) as usual."""
        stats = self.stats
        stats["recv.bytes"] = stats.get("recv.bytes", 0) + len(data)
        if now > self._clock:
            self._clock = now
        if self._next_gossip < now:
            self._catch_up_gossip(now)
        try:
            self._receive(data, src, now, src_id, decoded)
        except ProtocolError as err:
            self._count("malformed")
            self.last_error = err.reason
        except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as err:
            self._count("malformed")
            self.last_error = f"malformed message: {type(err).__name__}"

    def handle_timer(self, now: float) -> None:
        """Run whatever is due. A call later than `late_timer_slack` x probe_timeout
        after the deadline means our own process was starved: counted against our
        health, never against members whose replies we could not read in time."""
        cfg = self.config
        due = self.get_timer()
        late = due is not None and now - due > cfg.late_timer_slack * cfg.probe_timeout
        if late:
            assert due is not None
            self._timer_late(now, now - due)
        self._clock = max(self._clock, now)
        if self._next_gossip < now:
            self._catch_up_gossip(now)
        # probe state machine
        probe = self._probe
        if probe is not None:
            if not probe.indirect_sent and now >= probe.timeout_at:
                self._send_indirect(probe, now)
            if now >= probe.end_at:
                self._finish_probe(probe, now)
        if self._probe is None and not self._leaving and now >= self._next_probe:
            self._start_probe(now)
        # dissemination
        if now >= self._next_gossip:
            self._gossip(now)
            self._next_gossip = max(self._next_gossip + cfg.gossip_interval, now)
        if self._next_push_pull is not None and now >= self._next_push_pull:
            if not self._leaving:
                self._periodic_push_pull(now)
            self._next_push_pull = now + cfg.push_pull_scaled(self._n_live + 1)
        if self._join_retry_at is not None and now >= self._join_retry_at:
            if self._n_live == 0 and not self._leaving:
                self._contact_seeds(now)
            else:
                self._join_retry_at = None
        # one-shot timers
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, kind, key = heapq.heappop(heap)
            if kind == "suspect":
                assert isinstance(key, bytes)
                self._suspicion_timeout(key, now, late)
            elif kind == "relay_nack":
                assert isinstance(key, int)
                self._relay_nack(key)
            elif kind == "relay":
                assert isinstance(key, int)
                self._relay_timeout(key)
            elif kind == "trust":
                assert isinstance(key, bytes)
                self._trust_timeout(key, now)
            elif kind == "reap":
                assert isinstance(key, bytes)
                self._reap(key, now)
            elif kind == "pending":
                assert isinstance(key, bytes)
                self._pending_timeout(key, now)
            elif kind == "unban":
                assert isinstance(key, bytes)
                self._unban(key, now)

    def _timer_late(self, now: float, lateness: float) -> None:
        """Lifeguard local health, for a starved event loop: our timers fire late, so
        acks may sit unread. Raise awareness (at most once per probe period, so a
        long stall climbs one step per period), and make the probe in flight
        inconclusive: a missed ack then proves nothing about its target."""
        self._count("timers.late")
        self.max_timer_lateness = max(self.max_timer_lateness, lateness)
        if self._probe is not None:
            self._probe.late = True
        if now - self._late_counted_at >= self.config.probe_interval:
            self._late_counted_at = now
            self.awareness.apply_delta(1)

    def set_trust(self, node_id: NodeId, trusted: bool, now: float, until: float | None = None,
                  reason: str = "") -> None:
        """The glue's verdict on a member's evidence (after an "attest" event, or any time)."""
        m = self._members.get(node_id)
        if m is None:
            return
        if (trusted and m.trust is Trust.TRUSTED and until is None and m.trust_until is None
                and not m.penalised) or (not trusted and m.trust is Trust.FAILED):
            return  # nothing changes (and a shared base entry stays shared)
        m = self._members.own(node_id)
        assert m is not None
        if trusted:
            was = m.trust
            if was is Trust.PENDING:
                self._n_pending -= 1
            m.trust = Trust.TRUSTED
            m.penalised = False
            m.trust_until = until
            if until is not None:
                self._push_timer(until, "trust", node_id)
            if was is not Trust.TRUSTED and m.state in _LIVE:
                if not m.joined:
                    m.joined = True
                    self._emit("join", m, now)
                else:
                    self._emit("alive", m, now)
                if m.state is MemberState.ALIVE and not m.in_probe:
                    self._insert_probe(node_id, m)
        else:
            if m.trust is not Trust.FAILED:
                if m.trust is Trust.PENDING:
                    self._n_pending -= 1
                m.trust = Trust.FAILED
                m.trust_until = None
                self._emit("untrusted", m, now, reason[:200])

    def update_local(self, now: float, *, claims: Claims | None = None,
                     capacity: Capacity | None = None,
                     labels: dict[str, str] | None = None) -> None:
        """Publish a new version of our own record (next incarnation)."""
        self._catch_up_gossip(now)
        r = self.record
        self._republish(r.incarnation + 1, claims or r.claims, capacity or r.capacity,
                        r.labels if labels is None else labels)

    def learn(self, records: Iterable[NodeRecord] | MemberBase, now: float, *,
              trusted: bool = False) -> int:
        """Prime the table without gossip or per-member events (simulator warm start,
        peers persisted by the agent). Signatures are still checked; with
        trusted=False and require_attestation each new member emits "attest" as usual.
        A `MemberBase` (its records verified once when it was built) is adopted
        as is by an empty table when its members need no attestation: O(1) and
        no per-member copy. Returns how many members were added."""
        if isinstance(records, MemberBase):
            base = records
            if (len(self._members) == 0 and base.since == now
                    and (trusted or not self.require_attestation)
                    and len(base) <= self.config.max_members):
                self._members.adopt(base, self.node_id)
                added = len(self._members)
                self._n_live += added
                self._probe_order.set_base(base.ids, self.rng)
                self._primed(added, now)
                return added
            records = [m.record for m in base.members]
        added = 0
        for record in records:
            nid = record.node_id
            if nid == self.node_id or nid in self._members:
                continue
            if len(self._members) >= self.config.max_members:
                break
            if not record.signature or not self.verifier.verify(nid, record.signed_bytes,
                                                                record.signature):
                self._count("rejected.signature")
                continue
            ok = trusted or not self.require_attestation
            if not ok and self._n_pending >= self.config.max_pending:
                self._count("dropped.pending_full")
                continue
            record = intern_record(record)
            m = _Member(record, Trust.TRUSTED if ok else Trust.PENDING, now)
            self._members.add(nid, m)
            self._n_live += 1
            added += 1
            if ok:
                m.joined = True
                self._insert_probe(nid, m)
            else:
                self._n_pending += 1
                self._push_timer(now + self.config.attest_timeout, "pending", nid)
                self._emit("attest", m, now)
        self._primed(added, now)
        return added

    def _primed(self, added: int, now: float) -> None:
        if added and self._next_push_pull is not None:
            # A primed table is already in sync: spread the first anti-entropy round over
            # the interval for this size, not the unscaled one (else N full-state
            # exchanges would all land in the first 30 s).
            self._next_push_pull = now + self.rng.uniform(
                0.0, self.config.push_pull_scaled(self._n_live + 1))

    # =============================================================== outputs

    def get_timer(self) -> float | None:
        """The next deadline, or None. The gossip tick counts only while something is
        queued (see _catch_up_gossip): a tick with nothing to send does no work, and
        neither do one-shot timers whose work was cancelled (_drop_cancelled)."""
        t = self._next_gossip if self._queue.pending else math.inf
        if not self._leaving and self._next_probe < t:
            t = self._next_probe
        probe = self._probe
        if probe is not None:
            p = probe.end_at if probe.indirect_sent else probe.timeout_at
            if p < t:
                t = p
        if self._next_push_pull is not None and self._next_push_pull < t:
            t = self._next_push_pull
        if self._join_retry_at is not None and self._join_retry_at < t:
            t = self._join_retry_at
        heap = self._heap
        if heap:
            self._drop_cancelled()
            if heap and heap[0][0] < t:
                t = heap[0][0]
        return None if t == math.inf else t

    def _drop_cancelled(self) -> None:
        """Pop one-shot timers at the head whose firing would do nothing: a relay (or its
        nack) already answered, a suspicion refuted, cleared or re-armed for later.
        Why: they were ~10% of all simulator timer events, each waking a driver for no
        work. Dropping them changes nothing else: such a firing only re-checks state
        that, by then, every path has already handled (see the handlers' guards)."""
        heap = self._heap
        relays = self._relays
        while heap:
            at, _, kind, key = heap[0]
            if kind == "relay" or kind == "relay_nack":
                if key in relays:
                    return
            elif kind == "suspect":
                assert isinstance(key, bytes)
                m = self._members.get(key)
                s = None if m is None or m.state is not MemberState.SUSPECT else m.suspicion
                if s is not None and at >= s.deadline:
                    return
            else:
                return
            heapq.heappop(heap)

    def datagrams_to_send(self) -> list[Outgoing]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> MemberEvent | None:
        return self._events.popleft() if self._events else None

    # =============================================================== queries

    def members(self) -> list[MemberView]:
        views = [self._self_view()]
        views.extend(self._view(m) for m in self._members.values())
        return views

    def member(self, node_id: NodeId) -> MemberView | None:
        if node_id == self.node_id:
            return self._self_view()
        m = self._members.get(node_id)
        return None if m is None else self._view(m)

    def alive_ids(self) -> set[NodeId]:
        """Members counted alive: liveness ALIVE and trusted (self included unless leaving)."""
        ids = {nid for nid, m in self._members.items()
               if m.state is MemberState.ALIVE and m.trust is Trust.TRUSTED}
        if not self._leaving:
            ids.add(self.node_id)
        return ids

    def num_alive(self) -> int:
        return len(self.alive_ids())

    def num_known(self) -> int:
        """Members not dead/left, self included: the N in every log(N) formula."""
        return self._n_live + 1

    def state_of(self, node_id: NodeId) -> MemberState | None:
        view = self.member(node_id)
        return None if view is None else view.state

    # ======================================================= receive paths

    def _receive(self, data: bytes, src: Address, now: float, src_id: NodeId | None,
                 decoded: Message | None = None) -> None:
        penalties = self._penalties
        any_ban = now < penalties.no_bans_from  # else no lookup can find a ban
        if any_ban and penalties.banned(src_id if src_id is not None else src, now):
            self._count("dropped.banned")
            return
        msg = decoded if decoded is not None else decode_swim(
            data, self.config.max_stream_message, (*PRIMARY, PushPull, Sync))
        if not isinstance(msg, (PushPull, Sync)) and len(data) > self.config.max_packet:
            raise ProtocolError(f"datagram of {len(data)} bytes exceeds {self.config.max_packet}")
        stats = self.stats
        key = _RECV[msg.TYPE]
        stats[key] = stats.get(key, 0) + 1
        sender: NodeId = msg.sender  # type: ignore[attr-defined]
        if src_id is not None and sender != src_id:
            self._count("rejected.sender")
            self._penalise(src_id, now, FORGERY, "claimed another sender")
            raise ProtocolError("message claims a sender other than its channel's identity")
        if sender == self.node_id:
            raise ProtocolError("message claims to come from this node")
        known = self._members.get(sender)
        if known is not None and known.trust is Trust.FAILED:
            self._count("dropped.untrusted")
            return
        if any_ban and penalties.banned(sender, now):
            self._count("dropped.banned")
            return
        penalty_key: bytes | str = src_id if src_id is not None else src
        if isinstance(msg, PushPull):
            self._on_push_pull(msg, src, now, penalty_key)
            return
        if isinstance(msg, Sync):
            self._on_sync(msg, src)
            return
        if isinstance(msg, Ping):
            # Gossip first: if it accuses us, the ack carries our current record, so
            # the prober (who suspects us) is corrected in the same round trip.
            self._accused = False
            self._on_gossip(msg.gossip, now, penalty_key)
            self._on_ping(msg, src)
            return
        if isinstance(msg, Ack):
            self._on_ack(msg, now)
        elif isinstance(msg, Nack):
            self._on_nack(msg)
        elif isinstance(msg, PingReq):
            self._on_ping_req(msg, src, now, penalty_key)
        self._on_gossip(msg.gossip, now, penalty_key)  # type: ignore[attr-defined]

    def _on_gossip(self, items: Iterable[bytes], now: float, penalty_key: bytes | str) -> None:
        penalties = self._penalties
        for item in items:
            if penalties.banned(penalty_key, now):
                self._count("dropped.banned")
                return
            try:
                g = decode_gossip_item(item, _GOSSIP_ITEM_MAX)
            except ProtocolError as err:
                self._count("malformed")
                self.last_error = err.reason
                continue
            if isinstance(g, Alive):
                self._alive_bytes(g.record, now, penalty_key)
            elif isinstance(g, (Suspect, Dead)):
                self._on_accusation(g, item, now, penalty_key)
            elif isinstance(g, Leave):
                self._leave(g, now, penalty_key)

    def _on_accusation(self, g: Suspect | Dead, item: bytes, now: float,
                       penalty_key: bytes | str) -> None:
        """A signed suspect/dead from gossip. Only ever a suspicion (or a confirmation
        by its accuser): no single member can get a live member declared dead faster
        than the suspicion timeout. Forged signatures penalise the sender."""
        nid, accuser = g.node, g.accuser
        if nid == self.node_id:
            if accuser == self.node_id:  # we never accuse ourselves: a forgery, unchecked
                self._reject_forgery(penalty_key, now, "a forged accusation")
                return
            if g.incarnation > self.record.incarnation:
                return
            if not self.verifier.verify(accuser, accusation_signed_bytes(g), g.signature):
                self._reject_forgery(penalty_key, now, "a forged accusation")
                return
            self._accused_self(g.incarnation, now)
            return
        m = self._members.get(nid)
        # Accusations must name the exact record version we hold: an older one is
        # stale, a newer one is unverifiable (and would let a liar pin a member's
        # incarnation out of reach of refutation).
        if m is None or g.incarnation != m.record.incarnation or m.state not in _LIVE:
            return
        if accuser == self.node_id:
            # Our own accusation, back by gossip (the signer remembered it: a memo hit, no
            # signature check), or a forgery in our name, which costs its sender.
            if not self._accusation_verified(g, item):
                self._reject_forgery(penalty_key, now, "a forged accusation")
            return
        accused_by = self._members.get(accuser)
        if (accused_by is None or accused_by.trust is not Trust.TRUSTED
                or accused_by.state not in _LIVE):
            self._count("accusation.ignored")  # only attested live members may accuse
            return
        s = m.suspicion
        dead = isinstance(g, Dead)
        counted = s is not None and (accuser in s.confirmers or s.full())
        if counted and (not dead or s is None or s.dead_heard):
            # Already counted, or nothing left to confirm (k confirmations: the timeout
            # is at its minimum and the item would not be re-gossiped): it can change
            # nothing here, so it is dropped like a duplicate, before the signature
            # check that was most of the cost of a crash in a large mesh. The first
            # "dead" still counts: it spares our verification probe (_dead_heard).
            return
        if not self._accusation_verified(g, item):
            self._reject_forgery(penalty_key, now, "a forged accusation")
            return
        if self._unfounded.banned(accuser, now):
            self._count("accusation.discredited")
            return
        if not counted:
            self._suspect(nid, g.incarnation, accuser, now, item)
        if dead:
            self._dead_heard(nid, now)

    def _accusation_verified(self, g: Suspect | Dead, item: bytes) -> bool:
        """The accuser's signature on `g` (encoded as `item`) holds. Why by item: every
        member of a simulated mesh checks every accusation, and the shared verifier
        answers the same bytes again without re-encoding what was signed."""
        verifier = self.verifier
        caching = verifier if isinstance(verifier, CachingVerifier) else None
        if caching is not None and caching.verified_item(item):
            return True
        if not verifier.verify(g.accuser, accusation_signed_bytes(g), g.signature):
            return False
        if caching is not None:
            caching.remember_item(item)
        return True

    def _dead_heard(self, nid: NodeId, now: float) -> None:
        """Another accuser's own suspicion of `nid` expired (its "dead"): once the
        suspicion is also corroborated (k confirmations), ours needs no verification
        probe (§6), and one waiting for it ends now unless our probe was answered.
        Why corroborated: a lone accuser's "dead" (a liar, or the one member that missed
        a refutation under loss) must still face our own probe of the suspect."""
        m = self._members.get(nid)
        s = None if m is None or m.state is not MemberState.SUSPECT else m.suspicion
        if s is not None:
            s.dead_heard = True  # a suspect's entry is already this table's own
            if s.verifying and not s.answered and s.full():
                assert m is not None
                self._dead(nid, m, now)

    def _on_ping(self, msg: Ping, src: Address) -> None:
        if msg.target != self.node_id:
            self._count("misdirected")
            return
        extra: tuple[bytes, ...] = ()
        if self._accused:
            extra = (encode_payload(Alive(record=self.record.encoded)),)
            self._accused = False
        self._send(src, Ack(seq=msg.seq, sender=self.node_id, gossip=()), extra,
                   reliable=bool(msg.stream))

    def _on_ack(self, msg: Ack, now: float) -> None:
        relay = self._relays.get(msg.seq)
        if relay is not None:
            if msg.sender != relay.target:
                return  # only the target's own ack answers a relayed probe
            self._end_relay(msg.seq)
            for requester, requester_seq, _ in relay.requesters:
                self._send(requester, Ack(seq=requester_seq, sender=self.node_id, gossip=()))
            return
        probe = self._probe
        if probe is None:
            return
        if msg.seq == probe.seq:
            # memberlist: a probe that got its ack improves our health score
            self.awareness.apply_delta(-1)
        elif msg.seq == probe.fallback_seq and msg.sender == probe.target:
            # memberlist's "was able to connect over TCP but UDP probes failed": the
            # target is alive, our datagrams are what failed. No suspicion, and no
            # health change either way (memberlist returns before its awareness update).
            self._count("probes.fallback_acked")
        else:
            return
        self._probe = None
        m = self._members.get(probe.target)
        if m is not None and m.suspicion is not None:
            m.suspicion.answered = True

    def _on_nack(self, msg: Nack) -> None:
        probe = self._probe
        if probe is not None and msg.seq == probe.seq:
            probe.nackers.add(msg.sender)

    def _on_ping_req(self, msg: PingReq, src: Address, now: float,
                     penalty_key: bytes | str) -> None:
        """Relay dialling rule: probe only a member we hold, at the address in its
        signed record, which must be the address the requester named; one outstanding
        ping per target, shared by every requester (a ping_req causes at most one
        datagram toward its target, whatever its spelling or repetition)."""
        target = msg.target
        if target == self.node_id:
            self._count("relay.refused")
            return
        m = self._members.get(target)
        if m is None or m.state is MemberState.LEFT or m.trust is Trust.FAILED:
            self._count("relay.refused.unknown_target")
            self._penalise(penalty_key, now, UNFOUNDED, "asked to probe a non-member")
            return
        if msg.target_addr != m.record.address:
            self._count("relay.refused.address")
            self._penalise(penalty_key, now, UNFOUNDED,
                           "asked to probe a member at another address")
            return
        if m.trust is not Trust.TRUSTED:
            self._count("relay.refused")  # not attested yet: we would not probe it either
            return
        seq = self._relay_by_target.get(target)
        relay = self._relays.get(seq) if seq is not None else None
        if relay is not None and not relay.nacked:
            if (len(relay.requesters) < _MAX_REQUESTERS
                    and all(r[0] != src or r[1] != msg.seq for r in relay.requesters)):
                relay.requesters.append((src, msg.seq, msg.nack))
            self._count("relay.coalesced")
            return
        if len(self._relays) >= _MAX_RELAYS:
            self._count("relay.refused")
            return
        seq = self._next_seq()
        relay = _Relay(target)
        relay.requesters.append((src, msg.seq, msg.nack))
        self._relays[seq] = relay
        self._relay_by_target[target] = seq
        # The requester stops listening probe_interval after its ping, i.e. about
        # probe_timeout after sending us this request; nack at 80% of that so the
        # nack arrives in time to count (else every relay looks like a missed nack
        # and Lifeguard slows down healthy probers). Late acks are still forwarded.
        self._push_timer(now + _NACK_FRACTION * self.config.probe_timeout, "relay_nack", seq)
        self._push_timer(now + self.config.probe_timeout, "relay", seq)
        self._send(m.record.address, Ping(seq=seq, sender=self.node_id, target=target,
                                          gossip=()))

    def _relay_nack(self, seq: int) -> None:
        relay = self._relays.get(seq)
        if relay is None:
            return
        relay.nacked = True
        for i, (requester, requester_seq, owes) in enumerate(relay.requesters):
            if owes:
                relay.requesters[i] = (requester, requester_seq, False)
                self._send(requester, Nack(seq=requester_seq, sender=self.node_id, gossip=()))

    def _relay_timeout(self, seq: int) -> None:
        self._end_relay(seq)

    def _end_relay(self, seq: int) -> None:
        relay = self._relays.pop(seq, None)
        if relay is not None and self._relay_by_target.get(relay.target) == seq:
            del self._relay_by_target[relay.target]

    def _on_sync(self, msg: Sync, src: Address) -> None:
        """A peer's digest: answer with the buckets where our state differs, if any."""
        self._joined_cluster = True
        mask = differing_buckets(self._digest_sums(), unpack_digest(msg.digest))
        if not mask:
            self._count("sync.in_sync")
            return
        self._count("sync.buckets", mask.bit_count())
        self._send_push_pull(src, join=False, reply=False, buckets=mask)

    def _digest_sums(self) -> list[int]:
        """Bucket sums over exactly the entries a full push-pull from us carries."""
        sums = self._members.digest_sums()
        k = bucket_of(self.node_id)
        own = entry_hash(self.record.encoded, "left" if self._leaving else "alive")
        sums[k] = (sums[k] + own) & 0xFFFFFFFFFFFFFFFF
        return sums

    def digest(self) -> bytes:
        """Our push-pull digest as sent in swim.sync (specs/membership.md §3)."""
        return pack_digest(self._digest_sums())

    def _on_push_pull(self, msg: PushPull, src: Address, now: float,
                      penalty_key: bytes | str) -> None:
        self._joined_cluster = True
        accuser = self._members.get(msg.sender)
        may_accuse = (accuser is not None and accuser.trust is Trust.TRUSTED
                      and accuser.state in _LIVE and not self._unfounded.banned(msg.sender, now))
        mask = msg.buckets
        for entry in msg.entries():
            if self._penalties.banned(penalty_key, now):
                self._count("dropped.banned")
                return  # banned half-way through: ignore the rest
            record = self._decode_record(entry.record, now, penalty_key)
            if record is None:
                continue
            if mask is not None and not mask >> bucket_of(record.node_id) & 1:
                self._count("rejected.bucket")  # not what this partial state covers
                continue
            if not self._alive(record, now, penalty_key):
                continue
            nid = record.node_id
            if (entry.state == "suspect" or entry.state == "dead") and (
                    may_accuse or nid == self.node_id):
                # The sender's own accusation (it is authenticated; entries carry no
                # accuser signature): a suspicion by the sender, never a verdict, and
                # not re-gossiped (we cannot sign for the sender; our own probes decide).
                self._suspect(nid, entry.incarnation, msg.sender, now, None)
                if entry.state == "dead" and nid != self.node_id:
                    self._dead_heard(nid, now)
            elif entry.state == "left" and entry.leave_sig is not None:
                self._leave(Leave(node=nid, incarnation=entry.incarnation,
                                  signature=entry.leave_sig), now, penalty_key)
        if not msg.reply and not msg.more:
            self._send_push_pull(src, join=False, reply=True, buckets=mask)

    # ================================================== state transitions

    def _decode_record(self, data: bytes, now: float,
                       penalty_key: bytes | str) -> NodeRecord | None:
        """Decode record bytes from the network; an undecodable record (malformed,
        non-canonical address) counts against the sender that relayed it: honest
        members only relay records they accepted."""
        try:
            return decode_record(data)
        except ProtocolError as err:
            self._count("malformed")
            self._count("rejected.record")
            self.last_error = err.reason
            self._penalise(penalty_key, now, INVALID_RECORD, "sent an invalid record")
            return None

    def _alive_bytes(self, data: bytes, now: float, penalty_key: bytes | str) -> None:
        record = self._decode_record(data, now, penalty_key)
        if record is not None:
            self._alive(record, now, penalty_key)

    def _alive(self, record: NodeRecord, now: float, penalty_key: bytes | str) -> bool:
        """Apply a signed record. Returns False only if it was rejected as forged."""
        nid = record.node_id
        if nid == self.node_id:
            mine = self.record
            if record is mine or record.incarnation < mine.incarnation:
                return True
            if record.incarnation == mine.incarnation and record.encoded == mine.encoded:
                return True
            if self._verified(record, now, penalty_key) is None:
                return False
            # An older life of ours (restart) or a replay: out-bid it.
            self._refute(record.incarnation, now)
            return True
        m = self._members.get(nid)
        if m is not None and record.incarnation <= m.record.incarnation:
            return True  # stale or duplicate: no signature check needed
        verified = self._verified(record, now, penalty_key)
        if verified is None:
            return False
        record = verified  # interned only now, after its signature was checked
        if m is None:
            if len(self._members) >= self.config.max_members:
                self._count("dropped.full")
                return True
            trust = Trust.PENDING if self.require_attestation else Trust.TRUSTED
            if trust is Trust.PENDING and self._n_pending >= self.config.max_pending:
                # Unattested records cost a dial each and anyone with a key can sign
                # one: bounded. Dropped ones come back with later gossip/push-pull.
                self._count("dropped.pending_full")
                return True
            m = _Member(record, trust, now)
            self._members.add(nid, m)
            self._n_live += 1
            if trust is Trust.TRUSTED:
                m.joined = True
                self._insert_probe(nid, m)
                self._emit("join", m, now)
            else:
                self._n_pending += 1
                self._push_timer(now + self.config.attest_timeout, "pending", nid)
                self._emit("attest", m, now)
            self._queue.queue(nid, encode_payload(Alive(record=record.encoded)))
            return True
        m = self._members.own(nid)
        assert m is not None
        old = m.record
        was = m.state
        if was is MemberState.SUSPECT and m.suspicion is not None:
            # Refuted: every other accuser was wrong. Counted (decaying) against each;
            # past max_unfounded an accuser's accusations are ignored for a while.
            for accuser in m.suspicion.confirmers:
                if accuser != self.node_id:
                    self._count("accusation.unfounded")
                    self._unfounded.add(accuser, 1.0, now)
        m.record = record
        if was not in _LIVE:
            self._n_live += 1
        m.state = MemberState.ALIVE
        m.suspicion = None
        m.leave_sig = None
        if was is not MemberState.ALIVE:
            m.since = now
        self._queue.queue(nid, encode_payload(Alive(record=record.encoded)))
        if self.require_attestation and not record.same_claims(old):
            # New claims need new evidence: excluded until the glue re-attests.
            if m.trust is not Trust.PENDING:
                self._n_pending += 1
                self._push_timer(now + self.config.attest_timeout, "pending", nid)
            m.trust = Trust.PENDING
            m.trust_until = None
            self._emit("attest", m, now)
            return True
        if m.trust is Trust.TRUSTED and not m.in_probe:
            self._insert_probe(nid, m)
        if was is MemberState.ALIVE:
            self._emit("update", m, now)
        else:
            self._emit("alive", m, now)
        return True

    def _accused_self(self, incarnation: int, now: float) -> None:
        """Someone suspects or declares us dead: refute with a higher incarnation, and
        count it against our own health (Lifeguard: we may be the slow one)."""
        if incarnation <= self.record.incarnation:
            self._accused = True
        if incarnation == self.record.incarnation and not self._leaving:
            self.awareness.apply_delta(1)
            self._refute(incarnation, now)

    def _suspect(self, nid: NodeId, incarnation: int, accuser: NodeId, now: float,
                 item: bytes | None) -> None:
        """Start (or confirm) a suspicion of `nid` by `accuser`; `item` is the accuser's
        signed accusation to re-gossip (None: nothing we may forward)."""
        if nid == self.node_id:
            self._accused_self(incarnation, now)
            return
        m = self._members.get(nid)
        if m is None or incarnation != m.record.incarnation:
            return
        if m.state is MemberState.SUSPECT:
            if m.suspicion is not None and m.suspicion.confirm(accuser):
                self._push_timer(m.suspicion.deadline, "suspect", nid)
                if item is not None:
                    self._queue.queue(nid, item)
            return
        if m.state is not MemberState.ALIVE:
            return
        m = self._members.own(nid)
        assert m is not None
        m.state = MemberState.SUSPECT
        m.since = now
        n = self._n_live + 1
        k = self.config.suspicion_mult - 2
        if n - 2 < k:
            k = 0
        lo = self.config.suspicion_min(n)
        hi = self.config.suspicion_max_timeout_mult * lo
        m.suspicion = Suspicion(accuser, k, lo, hi, now)
        self._push_timer(m.suspicion.deadline, "suspect", nid)
        if item is not None:
            self._queue.queue(nid, item)
        self._emit("suspect", m, now)

    def _accusation(self, kind: type[Suspect] | type[Dead], nid: NodeId,
                    incarnation: int) -> bytes:
        """Our own signed accusation, encoded for gossip."""
        unsigned = kind(node=nid, incarnation=incarnation, accuser=self.node_id, signature=b"")
        signature = self.signer.sign(accusation_signed_bytes(unsigned))
        item = encode_payload(kind(node=nid, incarnation=incarnation, accuser=self.node_id,
                                   signature=signature))
        if isinstance(self.verifier, CachingVerifier):
            self.verifier.remember_item(item)  # its echoes come back to us by gossip
        return item

    def _suspicion_timeout(self, nid: NodeId, now: float, late: bool) -> None:
        m = self._members.get(nid)
        if m is None or m.state is not MemberState.SUSPECT or m.suspicion is None:
            return
        s = m.suspicion
        if now < s.deadline:
            return  # a stale heap entry; the live one is still queued
        if late and not s.deferred:
            # Our own loop was starved: the suspect's refutation may be waiting unread.
            # Decide one (scaled) probe period later, once, after reading our input.
            s.deferred = True
            s.deadline = now + self.awareness.scale(self.config.probe_interval)
            self._push_timer(s.deadline, "suspect", nid)
            return
        if s.answered:
            # Our own probe got an ack during the suspicion: it is reachable; wait
            # for its refutation (or anti-entropy) rather than declare it dead.
            s.answered = False
            s.deadline = now + s.hi
            self._push_timer(s.deadline, "suspect", nid)
            return
        if (not s.verifying and not (s.dead_heard and s.full())
                and self.node_id not in s.confirmers
                and not self._leaving and m.trust is Trust.TRUSTED):
            # We only heard the accusation. A refutation can miss one member in an
            # epidemic; probe the suspect ourselves (its ack carries its newer record)
            # before declaring it dead. Costs real failures <= 2 periods here, and
            # only at members that no accuser's "dead" gossip reached first.
            s.verifying = True
            self._priority.append(nid)
            s.deadline = now + 2.0 * self.awareness.scale(self.config.probe_interval)
            self._push_timer(s.deadline, "suspect", nid)
            return
        self._dead(nid, m, now)

    def _dead(self, nid: NodeId, m: _Member, now: float) -> None:
        """Our own suspicion expired: only this member's view changes. The signed Dead
        we gossip is one more accusation to others (a confirmation), not a verdict."""
        owned = self._members.own(nid)
        assert owned is m  # a suspect's entry is already this table's own
        self._n_live -= 1
        m.state = MemberState.DEAD
        self._dead_ids[nid] = None
        m.since = now
        m.suspicion = None
        self._push_timer(now + self.config.dead_reclaim_s, "reap", nid)
        self._queue.queue(nid, self._accusation(Dead, nid, m.record.incarnation))
        self._emit("dead", m, now)

    def _leave(self, msg: Leave, now: float, penalty_key: bytes | str) -> None:
        nid = msg.node
        data = encode_payload(LeaveStatement(node=nid, incarnation=msg.incarnation))
        if nid == self.node_id:
            if self._leaving or msg.incarnation < self.record.incarnation:
                return
            if not self.verifier.verify(nid, data, msg.signature):
                self._reject_forgery(penalty_key, now)
                return
            self._refute(msg.incarnation, now)  # a leave from an earlier life
            return
        m = self._members.get(nid)
        if m is None or msg.incarnation != m.record.incarnation or m.state is MemberState.LEFT:
            return
        if not self.verifier.verify(nid, data, msg.signature):
            self._reject_forgery(penalty_key, now)
            return
        m = self._members.own(nid)
        assert m is not None
        if m.state in _LIVE:
            self._n_live -= 1
        m.state = MemberState.LEFT
        m.since = now
        m.suspicion = None
        m.leave_sig = msg.signature
        self._push_timer(now + self.config.dead_reclaim_s, "reap", nid)
        self._queue.queue(nid, encode_payload(msg))
        self._emit("left", m, now)

    def _refute(self, beat: int, now: float) -> None:
        self._count("refutations")
        r = self.record
        self._republish(max(beat, r.incarnation) + 1, r.claims, r.capacity, r.labels)

    def _republish(self, incarnation: int, claims: Claims, capacity: Capacity,
                   labels: dict[str, str]) -> None:
        self.record = make_record(self.signer, self.record.address, incarnation, claims,
                                  capacity, labels)
        self._queue.queue(self.node_id, encode_payload(Alive(record=self.record.encoded)))

    def _verified(self, record: NodeRecord, now: float,
                  penalty_key: bytes | str) -> NodeRecord | None:
        """The shared (interned) record if its subject's signature is valid, else None
        (and the sender is penalised). Nothing is interned before this check."""
        if record.signature and self.verifier.verify(record.node_id, record.signed_bytes,
                                                     record.signature):
            return intern_record(record)
        self._reject_forgery(penalty_key, now)
        return None

    def _reject_forgery(self, penalty_key: bytes | str, now: float,
                        what: str = "a forged record") -> None:
        self._count("rejected.signature")
        self.last_error = f"bad signature: {what}"
        self._penalise(penalty_key, now, FORGERY, f"sent {what}")

    def _penalise(self, key: bytes | str, now: float, weight: float, reason: str) -> None:
        """Count an offence (weights in penalties.py); at penalty_threshold the sender is
        banned for ban_s (all its messages dropped), a "banned" event tells the driver
        (which may close its session), and a member becomes untrusted until the ban
        ends and it is attested again."""
        self._count("penalties")
        until = self._penalties.add(key, weight, now)
        if until is None:
            return
        self._count("banned")
        node_id = key if isinstance(key, bytes) else b""
        where = "" if isinstance(key, bytes) else f" from {key[:64]}"
        self._events.append(MemberEvent("banned", node_id, 0, now,
                                        f"{reason}{where}; banned for {until - now:.0f} s"))
        if isinstance(key, bytes):
            self._push_timer(until, "unban", key)
            m = self._members.get(key)
            if m is not None and m.trust is not Trust.FAILED:
                m = self._members.own(key)
                assert m is not None
                if m.trust is Trust.PENDING:
                    self._n_pending -= 1
                m.trust = Trust.FAILED
                m.trust_until = None
                m.penalised = True
                self._emit("untrusted", m, now, f"penalised: {reason}")

    def _unban(self, key: bytes, now: float) -> None:
        """A ban ended: a member we distrusted only for its offences must be attested
        again before it counts ("attest"), like one whose evidence expired."""
        if self._penalties.banned(key, now):
            return
        m = self._members.get(key)
        if m is not None and m.trust is Trust.FAILED and m.penalised:
            m = self._members.own(key)
            assert m is not None
            m.penalised = False
            m.trust = Trust.EXPIRED
            self._emit("attest", m, now)

    def penalties(self, key: bytes | str) -> int:
        """Offences counted against `key` (an identity, or an address)."""
        return self._penalties.offences(key)

    def is_banned(self, key: bytes | str, now: float | None = None) -> bool:
        """Whether `key` is banned at `now` (default: as of the last input we saw)."""
        if now is None:
            until = self._penalties.banned_until(key)
            return until is not None and until > self._clock
        return self._penalties.banned(key, now)

    def banned_until(self, key: bytes | str) -> float | None:
        return self._penalties.banned_until(key)

    def _pending_timeout(self, nid: NodeId, now: float) -> None:
        """Still unattested after attest_timeout: forget it (bounded table; a real
        member is learned again from gossip and attested then)."""
        m = self._members.get(nid)
        if m is None or m.trust is not Trust.PENDING or now - m.since < self.config.attest_timeout:
            return
        self._count("pending.expired")
        self._forget(nid, m)

    def _forget(self, nid: NodeId, m: _Member) -> None:
        if m.trust is Trust.PENDING:
            self._n_pending -= 1
        if m.state in _LIVE:
            self._n_live -= 1
        self._members.remove(nid)

    def _trust_timeout(self, nid: NodeId, now: float) -> None:
        m = self._members.get(nid)
        if (m is None or m.trust is not Trust.TRUSTED or m.trust_until is None
                or now < m.trust_until):
            return
        m = self._members.own(nid)
        assert m is not None
        m.trust = Trust.EXPIRED
        m.trust_until = None
        self._emit("untrusted", m, now, "evidence expired")
        self._emit("attest", m, now)

    def _reap(self, nid: NodeId, now: float) -> None:
        m = self._members.get(nid)
        if m is None or m.state in _LIVE or now - m.since < self.config.dead_reclaim_s:
            return
        self._forget(nid, m)

    # ========================================================== probing

    def _insert_probe(self, nid: NodeId, m: _Member) -> None:
        """memberlist: new members go to a random position so they are probed soon.
        Base identities are always candidates (ProbeOrder): nothing to insert."""
        if self._members.in_base(nid):
            return
        m.in_probe = True
        self._probe_order.insert(nid, self.rng)

    def _probeable(self, m: _Member | None) -> bool:
        return m is not None and m.state in _LIVE and m.trust is Trust.TRUSTED

    def _next_target(self) -> NodeId | None:
        """Next probeable member of this round; at its end, a new round (at most one)."""
        order = self._probe_order
        for _ in range(2):
            nid = order.next()
            while nid is not None:
                if self._probeable(self._members.get(nid)):
                    return nid
                nid = order.next()
            self._reset_probe_order()
            if not len(order):
                return None
        return None

    def _reset_probe_order(self) -> None:
        """End of a round: drop members no longer worth probing, draw a new permutation."""
        members = self._members

        def keep(nid: NodeId) -> bool:
            m = members.get(nid)
            if m is None:
                return False
            if m.state in _LIVE and m.trust is not Trust.FAILED:
                return True
            m.in_probe = False  # a member that is not in the base: this table's own entry
            return False

        self._probe_order.new_round(self.rng, keep)

    def _start_probe(self, now: float) -> None:
        cfg = self.config
        interval = self.awareness.scale(cfg.probe_interval)
        self._next_probe = now + interval
        target = None
        while self._priority and target is None:
            nid = self._priority.pop(0)
            if self._probeable(self._members.get(nid)):
                target = nid
        if target is None:
            target = self._next_target()
        if target is None:
            return
        m = self._members[target]
        seq = self._next_seq()
        timeout = self.awareness.scale(cfg.probe_timeout)
        self._probe = _Probe(target, seq, now + timeout, now + interval)
        self._send(m.record.address,
                   Ping(seq=seq, sender=self.node_id, target=target, gossip=()),
                   self._suspect_extra(target, m))
        self._count("probes")

    def _suspect_extra(self, target: NodeId, m: _Member) -> tuple[bytes, ...]:
        """What a ping to `target` carries besides gossip: to a suspect, our own signed
        accusation, so it can refute even if gossip is slow to reach it."""
        if m.state is MemberState.SUSPECT:
            return (self._accusation(Suspect, target, m.record.incarnation),)
        return ()

    def _send_indirect(self, probe: _Probe, now: float) -> None:
        probe.indirect_sent = True
        m = self._members.get(probe.target)
        if m is None:
            return
        helpers = self._random_members(self.config.indirect_checks, exclude=probe.target,
                                       include_dead=False)
        for hid in helpers:
            h = self._members[hid]
            self._send(h.record.address,
                       PingReq(seq=probe.seq, sender=self.node_id, target=probe.target,
                               target_addr=m.record.address, nack=True, gossip=()))
        probe.expected_nacks = len(helpers)
        if self.config.fallback_ping:
            # memberlist's TCP fallback: the same ping on a reliable stream, its own seq.
            # A target that only lost datagrams answers it; a crashed one cannot.
            probe.fallback_seq = seq = self._next_seq()
            self._send(m.record.address,
                       Ping(seq=seq, sender=self.node_id, target=probe.target, gossip=(),
                            stream=True), self._suspect_extra(probe.target, m),
                       reliable=True)
            self._count("probes.fallback")

    def _finish_probe(self, probe: _Probe, now: float) -> None:
        self._probe = None
        if probe.late:
            # Our own timers ran late during this probe (starved loop): the ack may be
            # sitting unread. Already counted against our health; accuse nobody.
            self._count("probes.inconclusive")
            return
        # Lifeguard LHA: missing nacks mean *we* are likely the slow one.
        if probe.expected_nacks > 0:
            missed = probe.expected_nacks - len(probe.nackers)
            self.awareness.apply_delta(max(missed, 0))
        else:
            self.awareness.apply_delta(1)
        m = self._members.get(probe.target)
        if m is not None:
            inc = m.record.incarnation
            self._suspect(probe.target, inc, self.node_id, now,
                          self._accusation(Suspect, probe.target, inc))

    # ====================================================== dissemination

    def _random_members(self, k: int, exclude: NodeId | None, include_dead: bool,
                        now: float = 0.0) -> list[NodeId]:
        """memberlist kRandomNodes: up to k distinct probeable members, O(k) expected."""
        order = self._probe_order
        if k <= 0 or not len(order):
            return []
        chosen: list[NodeId] = []
        dead_cutoff = now - self.config.gossip_to_the_dead_time
        for _ in range(3 * len(order) if len(order) < 3 * k else 6 * k):
            nid = order.at(self.rng.randrange(len(order)))
            if nid == exclude or nid in chosen:
                continue
            m = self._members.get(nid)
            if m is None or m.trust is not Trust.TRUSTED:
                continue
            if m.state is MemberState.ALIVE or (
                    include_dead and (m.state is MemberState.SUSPECT or (
                        m.state is MemberState.DEAD and m.since > dead_cutoff))):
                chosen.append(nid)
                if len(chosen) >= k:
                    break
        return chosen

    def _catch_up_gossip(self, now: float) -> None:
        """Advance the gossip deadline over the ticks get_timer() left out.

        Why lazy: a gossip tick with an empty queue sends nothing and draws no
        randomness, yet such ticks were about half of all simulator events. While
        the queue is empty get_timer() omits the gossip deadline; before any input
        that may queue something, the skipped ticks' only effect (the deadline
        moving one interval per tick, by the same float additions) is replayed,
        so gossip keeps the phase it would have had had every tick fired.
        """
        nxt = self._next_gossip
        if nxt >= now or self._queue.pending:
            return
        step = self.config.gossip_interval
        if now - nxt > 10_000 * step:  # long idle (agent): skip ahead, phase within a step
            nxt += math.floor((now - nxt) / step - 1.0) * step
        while nxt < now:
            nxt += step
        self._next_gossip = nxt

    def _gossip(self, now: float) -> None:
        if not self._queue.pending:
            return
        for nid in self._random_members(self.config.gossip_nodes, exclude=None,
                                        include_dead=True, now=now):
            if not self._queue.pending:
                break
            self._send(self._members[nid].record.address,
                       Gossip(sender=self.node_id, gossip=()), require_gossip=True)

    def _periodic_push_pull(self, now: float) -> None:
        """Anti-entropy with one random live member: our digest first (swim.sync); it
        sends back only the buckets that differ and we answer with ours."""
        peers = self._random_members(1, exclude=None, include_dead=False)
        if peers:
            sync = Sync(sender=self.node_id, digest=self.digest())
            data = encode_payload(sync)
            self._outbox.append(Outgoing(self._members[peers[0]].record.address, data, True))
            if self.handover is not None:
                self.handover[id(data)] = sync
            self._count("sent." + Sync.TYPE)
            self._count("sent.bytes", len(data))
        self._reconnect(now)

    def _reconnect(self, now: float) -> None:
        """Serf's reconnect: sometimes also sync with one random member we believe dead.

        After a partition long enough for both sides to declare each other dead,
        nothing else ever contacts the other side again (probes and gossip skip
        the dead). If it is in fact alive, hearing itself declared dead makes it
        refute with a higher incarnation, and its reply does the same for us, so
        the halves merge. Members that left or failed attestation are not retried.

        As Serf does, each member tries with probability dead / alive (ourselves
        counted alive), so the mesh as a whole tries each dead member about once
        per interval; after a real partition (half of the mesh dead to the other
        half) every member tries every interval. Why not every member every
        interval: after 20 crashes in a mesh of 10,000, that was 10,000 partial
        push-pulls of ~300 records each, all to dead addresses, every interval
        (a fifth of a simulation's time for the rest of its run).
        """
        dead = self._reconnect_candidates()
        if not dead:
            return
        alive = self._n_live + 1
        if len(dead) < alive and self.rng.random() * alive >= len(dead):
            return
        self._reconnect_to(dead[self.rng.randrange(len(dead))])

    def _reconnect_candidates(self) -> list[_Member]:
        """The trusted members we declared dead (pruning those no longer dead)."""
        dead = []
        for nid in list(self._dead_ids):  # O(dead), not O(table): pruned as we go
            m = self._members.get(nid)
            if m is None or m.state is not MemberState.DEAD:
                del self._dead_ids[nid]
            elif m.trust is Trust.TRUSTED:
                dead.append(m)
        return dead

    def _reconnect_to(self, target: _Member) -> None:
        """Only the digest buckets holding it and us travel (a partial push-pull, §3):
        that is all the exchange needs; a full state was O(N) per attempt."""
        self._count("reconnect")
        mask = 1 << bucket_of(self.node_id) | 1 << bucket_of(target.record.node_id)
        self._send_push_pull(target.record.address, join=False, reply=False, buckets=mask)

    def _contact_seeds(self, now: float) -> None:
        for addr in self._seeds:
            self._send_push_pull(addr, join=True, reply=False)
        self._join_retry_at = now + self.config.join_retry_interval if self._seeds else None

    def _send_push_pull(self, dst: Address, join: bool, reply: bool,
                        buckets: int | None = None) -> None:
        """Our full signed state (or the digest `buckets` of it), split into chunks no
        larger than max_stream_message."""
        entries: list[PushPullEntry] = []
        self_state = "left" if self._leaving else "alive"
        if buckets is None or buckets >> bucket_of(self.node_id) & 1:
            entries.append(PushPullEntry(record=self.record.encoded, state=self_state,
                                         incarnation=self.record.incarnation,
                                         leave_sig=self._leave_sig if self._leaving else None))
        members = (self._members.values() if buckets is None
                   else (m for _, m in self._members.bucket_items(buckets)))
        for m in members:
            if m.trust is Trust.FAILED:
                continue  # do not spread what we ourselves reject
            entries.append(PushPullEntry(record=m.record.encoded, state=m.state.value,
                                         incarnation=m.record.incarnation,
                                         leave_sig=m.leave_sig))
        budget = self.config.max_stream_message - 256
        chunk: list[PushPullEntry] = []
        size = 0
        chunks: list[list[PushPullEntry]] = []
        for e in entries:
            cost = len(e.record) + 16 + len(e.leave_sig or b"")
            if chunk and (size + cost > budget or len(chunk) >= 65535):
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(e)
            size += cost
        chunks.append(chunk)
        for i, part in enumerate(chunks):
            msg = PushPull.build(self.node_id, join, reply, i < len(chunks) - 1, part, buckets)
            data = encode_payload(msg)
            self._outbox.append(Outgoing(dst, data, True))
            if self.handover is not None:
                self.handover[id(data)] = msg
            self._count("sent." + msg.TYPE)
            self._count("sent.bytes", len(data))

    def _send(self, dst: Address, msg: Message, extra: tuple[bytes, ...] = (),
              require_gossip: bool = False, reliable: bool = False) -> None:
        """Encode a primary message and fill the rest of the packet with piggybacked gossip
        (`reliable`: on a stream, still sized as a datagram)."""
        limit = self.config.max_packet
        encoded = encode_payload(msg)
        budget = limit - len(encoded) - _LIST_GROWTH
        items = list(extra)
        for x in extra:
            budget -= len(x) + _ITEM_OVERHEAD
        queue = self._queue
        if budget > _ITEM_OVERHEAD and queue.pending:
            n = self._n_live + 1
            if n != self._limit_n:  # retransmit limit (a log10) for this size, cached
                self._limit_n = n
                self._limit = self.config.retransmit_limit(n)
            items.extend(queue.take(budget, _ITEM_OVERHEAD, self._limit))
        if require_gossip and not items:
            return
        data = with_gossip(encoded, items)  # one encoding per send (exact same bytes)
        while len(data) > limit and items:  # cannot happen with the arithmetic above; be safe
            items.pop()
            data = with_gossip(encoded, items)
        self._outbox.append(Outgoing(dst, data, reliable))
        if self.handover is not None:  # the object equal to decoding `data`
            self.handover[id(data)] = carrying(msg, items) if items else msg
        stats = self.stats
        key = _SENT[msg.TYPE]
        stats[key] = stats.get(key, 0) + 1
        stats["sent.bytes"] = stats.get("sent.bytes", 0) + len(data)
        if items:
            stats["sent.gossip_items"] = stats.get("sent.gossip_items", 0) + len(items)

    # ============================================================ helpers

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _push_timer(self, at: float, kind: str, key: NodeId | int) -> None:
        # A deadline that is already past when set (a confirmation shortening a
        # suspicion below its elapsed time) is due now, not overdue: clamped, so the
        # late-timer check (handle_timer) only sees lateness of the driver.
        self._heap_n += 1
        heapq.heappush(self._heap, (max(at, self._clock), self._heap_n, kind, key))

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def _emit(self, kind: str, m: _Member, now: float, reason: str = "") -> None:
        self._events.append(MemberEvent(kind, m.record.node_id, m.record.incarnation, now,
                                        reason))

    def _view(self, m: _Member) -> MemberView:
        r = m.record
        state = m.state if m.trust is Trust.TRUSTED else MemberState.UNTRUSTED
        return MemberView(r.node_id, r.address, state, r.incarnation, r.claims, r.capacity,
                          r.labels, m.since, m.trust, m.state, r)

    def _self_view(self) -> MemberView:
        r = self.record
        state = MemberState.LEFT if self._leaving else MemberState.ALIVE
        return MemberView(r.node_id, r.address, state, r.incarnation, r.claims, r.capacity,
                          r.labels, 0.0, Trust.TRUSTED, state, r)
