"""MeshNode: one sans-IO object per agent that composes membership, placement and
(later) migration, and is the only thing the agent and the simulator drive.

Why one object: before it, the agent, the simulator and the unit-test harness
each pumped `Membership` with their own loop and each decided "this member
attested, trust it" in its own way. Now every decision is here and in the
sub-machines; a driver feeds bytes, timers, commands and effect results in
with `now`, and carries out what `next_effect()` hands back (see
protocol/effects.py for the closed set of types). Shape: h11's `Connection`
and aioquic's `QuicConnection`, one level up.

Sub-machines (placement, migration) plug in with `add()`; each owns a wire
type prefix ("place.", "migrate.") that `receive` routes on, its own timer,
and a queue of outputs. They observe membership through typed events and read
this node's membership view directly; membership never knows they exist.
Ordering of outputs is part of the contract (the simulator's trace hash
depends on it): membership events one at a time (so a driver's immediate
verdict on an attestation request is applied before the next event is
read), then membership's sends, then each sub-machine's outputs in the order
they were added, then a Persist if the incarnation changed.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Protocol

from .effects import (
    MEMBER_EVENTS,
    Address,
    AttestationVerdict,
    Command,
    Completion,
    Drain,
    Join,
    Leave,
    MemberEvent,
    NodeId,
    Output,
    Persist,
    RequestAttestation,
    Send,
    Timer,
    TimerKind,
    UpdateLocal,
)
from .errors import ProtocolError
from .membership import MemberBase, Membership, MembershipConfig, MemberView, NodeRecord
from .membership.signing import RecordSigner, RecordVerifier
from .wire import Message

PERSIST_INCARNATION = "incarnation"


class SubMachine(Protocol):
    """What a sub-machine (placement, migration) offers MeshNode.

    `prefix` is the start of every wire type name it owns (b"place."); it must
    not be b"swim.". Every method takes `now`; none may raise on untrusted
    bytes (count and drop, as membership does).
    """

    prefix: bytes
    timer_kind: TimerKind

    def receive(self, data: bytes, src: Address, src_id: NodeId | None, now: float) -> None: ...

    def handle_timer(self, now: float) -> None: ...

    def get_timer(self) -> float | None: ...

    def command(self, cmd: object, now: float) -> bool:
        """Handle `cmd` if it is one of ours (True), else leave it (False)."""
        ...

    def complete(self, result: object, now: float) -> bool: ...

    def on_member_event(self, event: MemberEvent, now: float) -> None: ...

    def next_output(self) -> Output | None: ...


def wire_type_at(data: bytes) -> int:
    """Offset of the type name inside a payload `[version, type, fields]` (specs/wire.md),
    or -1 if the header is not the expected shape (membership then rejects it)."""
    if len(data) < 4 or data[0] != 0x93:
        return -1
    head = data[2]
    if head & 0xE0 == 0xA0:  # fixstr
        return 3
    if head == 0xD9:         # str8
        return 4
    return -1


class MeshNode:
    """One agent's protocol state. Not thread-safe; drive it from one task."""

    def __init__(self, config: MembershipConfig, record: NodeRecord, signer: RecordSigner,
                 verifier: RecordVerifier, rng: random.Random, now: float, *,
                 require_attestation: bool = True) -> None:
        self.rng = rng
        self.membership = Membership(config, record, signer, verifier, rng, now,
                                     require_attestation=require_attestation)
        self.node_id: NodeId = self.membership.node_id
        self.machines: list[SubMachine] = []
        self._out: deque[Output] = deque()
        self._ids_at: dict[Address, NodeId] = {}
        self._persisted_incarnation = -1
        self._check_incarnation()

    # ================================================================ plumbing

    def add(self, machine: SubMachine) -> SubMachine:
        """Plug in a sub-machine; its outputs follow membership's (in order of adding)."""
        if machine.prefix.startswith(b"swim.") or not machine.prefix:
            raise ProtocolError("sub-machine prefix must be non-empty and not swim.")
        self.machines.append(machine)
        return machine

    def machine(self, kind: type) -> SubMachine | None:
        for m in self.machines:
            if isinstance(m, kind):
                return m
        return None

    # ================================================================ inputs

    def receive(self, data: bytes, src: Address, src_id: NodeId | None, now: float,
                decoded: Message | None = None) -> None:
        """One datagram or stream message from `src` (authenticated as `src_id` when the
        channel is attested). Never raises on bad input. `decoded`: simulator object mode
        only, the membership message equal to decoding `data` (see Membership.receive)."""
        if self.machines:
            at = wire_type_at(data)
            if at >= 0:
                for m in self.machines:
                    if data.startswith(m.prefix, at):
                        m.receive(data, src, src_id, now)
                        return
        self.membership.receive(data, src, now, src_id, decoded)

    def handle_timer(self, now: float) -> None:
        self.membership.handle_timer(now)
        for m in self.machines:
            t = m.get_timer()
            if t is not None and t <= now:
                m.handle_timer(now)

    def command(self, cmd: Command | object, now: float) -> None:
        """An operator's or owner's request. Raises ProtocolError if nothing handles it."""
        if isinstance(cmd, Join):
            self.membership.join(list(cmd.seeds), now)
        elif isinstance(cmd, Leave):
            self.membership.leave(now)
        elif isinstance(cmd, UpdateLocal):
            self.membership.update_local(now, labels=cmd.labels)
        elif isinstance(cmd, Drain):
            # Every machine has a part in a drain (placement stops taking keeps, migration
            # hands each over), so it is not "first taker wins" like the other commands.
            taken = [m.command(cmd, now) for m in self.machines]
            if not any(taken):
                raise ProtocolError("no sub-machine handles Drain")
        else:
            for m in self.machines:
                if m.command(cmd, now):
                    break
            else:
                raise ProtocolError(f"no sub-machine handles {type(cmd).__name__}")
        for m in self.machines:
            if isinstance(cmd, (Join, Leave, UpdateLocal)):
                m.command(cmd, now)

    def complete(self, result: Completion | object, now: float) -> None:
        """The result of an effect this node asked for (or an unsolicited verdict)."""
        if isinstance(result, AttestationVerdict):
            until = None if result.valid_for_s is None else now + max(0.0, result.valid_for_s)
            self.membership.set_trust(result.node_id, result.trusted, now, until=until,
                                      reason=result.reason)
        for m in self.machines:
            if m.complete(result, now):
                break

    def learn(self, records: Iterable[NodeRecord] | MemberBase, now: float, *,
              trusted: bool = False) -> int:
        """Prime the member table (warm start: a shared MemberBase; peers persisted by
        the agent)."""
        return self.membership.learn(records, now, trusted=trusted)

    # ================================================================ outputs

    def next_effect(self) -> Output | None:
        """The next effect to carry out or event to observe; None when idle."""
        out = self._out
        if out:
            return out.popleft()
        while self._refill():
            if out:
                return out.popleft()
        return None

    def get_timer(self) -> float | None:
        t = self.membership.get_timer()
        for m in self.machines:
            mt = m.get_timer()
            if mt is not None and (t is None or mt < t):
                t = mt
        return t

    def timers(self) -> list[Timer]:
        """Every pending deadline, typed (for tracing and tests; drivers use get_timer)."""
        found = []
        t = self.membership.get_timer()
        if t is not None:
            found.append(Timer(t, TimerKind.MEMBERSHIP))
        for m in self.machines:
            mt = m.get_timer()
            if mt is not None:
                found.append(Timer(mt, m.timer_kind))
        return sorted(found)

    def _refill(self) -> bool:
        ms = self.membership
        # Membership's queues are read in place before calling into it: this runs at
        # least twice per simulated event, and the calls that find nothing were a
        # measurable share of the simulator's time (same package, same order).
        ev = ms.next_event() if ms._events else None
        if ev is not None:
            if ev.kind == "attest":
                view = ms.member(ev.node_id)
                if view is not None:
                    self._out.append(RequestAttestation(ev.node_id, view.address,
                                                        ev.incarnation, ev.at))
                return True
            typed = MEMBER_EVENTS[ev.kind](ev.node_id, ev.incarnation, ev.at, ev.reason)
            if ev.kind in ("join", "update", "alive"):
                view = ms.member(ev.node_id)
                if view is not None:
                    self._ids_at[view.address] = ev.node_id
            self._out.append(typed)
            for m in self.machines:
                m.on_member_event(typed, ev.at)
            return True
        sends = ms.datagrams_to_send() if ms._outbox else None
        if sends:
            ids = self._ids_at
            out = self._out
            for o in sends:
                out.append(Send(o.dst, o.data, o.reliable, ids.get(o.dst)))
            return True
        for m in self.machines:
            item = m.next_output()
            if item is not None:
                self._out.append(item)
                return True
        if ms.record.incarnation == self._persisted_incarnation:
            return False
        return self._check_incarnation()

    def _check_incarnation(self) -> bool:
        inc = self.membership.record.incarnation
        if inc != self._persisted_incarnation:
            self._persisted_incarnation = inc
            self._out.append(Persist(PERSIST_INCARNATION, inc))
            return True
        return False

    # ================================================================ queries

    @property
    def record(self) -> NodeRecord:
        return self.membership.record

    @property
    def address(self) -> Address:
        return self.membership.record.address

    def members(self) -> list[MemberView]:
        return self.membership.members()

    def member(self, node_id: NodeId) -> MemberView | None:
        return self.membership.member(node_id)

    def alive_ids(self) -> set[NodeId]:
        return self.membership.alive_ids()

    def id_at(self, address: Address) -> NodeId | None:
        return self._ids_at.get(address)

    def join(self, seeds: Sequence[Address], now: float) -> None:
        """Shorthand for command(Join(seeds))."""
        self.command(Join(tuple(seeds)), now)
