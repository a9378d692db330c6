"""Deterministic discrete-event engine that drives sans-IO protocol objects directly.

Why a plain event queue and not trio's MockClock: NOTES-platform.md measured ~30k
messages per wall second at 20k agents with trio tasks; a loop calling
the state machines directly removes the scheduler from the hot path.

Determinism: the queue (event_queue.py, a calendar queue that pops in heapq's
order) holds tuples ``(time, key, kind, a, b, c, d)``. `key` is unique and says
who made the entry: a node's timers and sends carry ``node.key_base + node.seq``
(its own counter), world entries (scheduled actions, resumes) carry the global
`world_seq`, below every node key, so an action runs before node work due at the
same instant. Ties are therefore broken by origin, not by the order in which the
loop happened to insert entries, and the tuple comparison never reaches the
payload. Each node's history is then a function of its own inputs alone, which is
what lets simulations/parallel.py run agents in several processes and still get
the one-process answer. All randomness comes from RNGs derived from the one
seeded `random.Random` the caller hands in (the network draws from one stream per
sender). The trace hash is a BLAKE2b over every node's own trace, in index order;
a node's trace absorbs (time, src, dst, length) of every delivery to it, every
drop of its sends (and of deliveries to it while it is down), and every protocol
event it emits. Two runs with the same topology and seed print the same hash,
however many processes ran them.

A protocol object must offer the sans-IO face of keepmesh.protocol.membership:
``receive(data, src, src_id, now)`` (MeshNode's order), ``handle_timer(now)``, ``get_timer()``,
``datagrams_to_send()`` (objects with dst, data, reliable) and
``next_event()``.

Object mode (`Engine(object_mode=True)`): a protocol object may also expose a
``handover`` dict (id of each sent bytes object -> the decoded message equal to
decoding those bytes) and accept ``receive(data, src, src_id, now, decoded)``; the engine then hands
the receiver that object together with the bytes, so it skips decoding. The bytes
are still produced, routed, sized and hashed exactly as in byte mode, so the
trace hash is the same (a CI test runs both and compares).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from heapq import heappop, heappush
from math import inf, nextafter
from typing import Any

from .event_queue import EventQueue
from .network import DROP_DOWN, DROP_UNKNOWN, Network

DELIVER = 0
TIMER = 1
ACTION = 2
RESUME = 3

_TRACE_MSG = struct.Struct("<dBiiI")
_TRACE_EV = struct.Struct("<diB")
_MIN_STEP = 1e-6
KEY_BITS = 40  # a node makes fewer than 2**40 entries; world keys stay below 2**40
_KIND_CODE = {"join": 1, "update": 2, "suspect": 3, "alive": 4, "dead": 5, "left": 6,
              "untrusted": 7, "attest": 8}


class SimNode:
    """One simulated agent: its protocol object plus what the engine needs to drive it."""

    __slots__ = ("idx", "address", "proto", "up", "paused_until", "pending", "timer_at",
                 "timer_gen", "node_id", "group", "crashed_at", "left", "handover",
                 "key_base", "seq", "trace", "local")

    def __init__(self, idx: int, address: str, proto: Any, node_id: bytes, group: int) -> None:
        self.idx = idx
        # entry keys of this node's timers and sends: key_base + seq (see module doc)
        self.key_base = (idx + 1) << KEY_BITS
        self.seq = 0
        self.trace = hashlib.blake2b(digest_size=16)
        # False: another process runs this agent; here only its world flags are kept
        self.local = True
        self.address = address
        self.proto = proto
        self.node_id = node_id
        self.group = group
        self.up = True
        self.left = False
        self.paused_until = -1.0
        self.pending: list[tuple[int, bytes, Any]] | None = None
        self.timer_at: float | None = None
        self.timer_gen = 0
        self.crashed_at: float | None = None
        # object mode: the protocol's {id(sent bytes): decoded message}, else None
        self.handover: dict[int, Any] | None = None


EventHook = Callable[[SimNode, Any, float], None]


class Engine:
    """Virtual-time loop.

    Counters prove message conservation: sent = delivered + dropped + in flight.
    """

    def __init__(self, network: Network, object_mode: bool = False) -> None:
        self.network = network
        self.object_mode = object_mode
        self.queue = EventQueue()  # (time, key, kind, a, b, c, d) entries
        self.world_seq = 0      # keys of world entries (actions, resumes)
        self.world_times: list[float] = []  # heap: when world entries are due (parallel windows)
        self.key = 0            # key of the entry being run (metric calls are stamped with it)
        # sends to agents another process runs: (time, key, dst, src, data, decoded or
        # None), taken by parallel.py
        self.outgoing: list[tuple[float, int, int, int, bytes, Any]] = []
        self.remote_traces: dict[int, bytes] = {}  # other processes' agents (parallel.py)
        self.now = 0.0
        self.nodes: list[SimNode] = []
        self.by_address: dict[str, int] = {}
        self.by_id: dict[bytes, int] = {}
        self.on_event: EventHook = lambda node, ev, now: None
        self.sent = 0
        self.delivered = 0
        self.in_flight = 0
        self.dropped: dict[str, int] = {}
        self.bytes_sent = 0
        self.sent_reliable = 0
        self.steps = 0          # events that did something (see run())
        self.stale_timers = 0   # superseded timer entries popped and skipped
        self.world_steps = 0    # of which world entries (every process of a parallel run runs them)
        self.idle_timers = 0    # timer firings after which the protocol had nothing to do
        self.handed_over = 0    # deliveries that carried the decoded object (object mode)
        self.protocol_errors = 0

    # ------------------------------------------------------------- setup

    def add_node(self, address: str, site: int, proto: Any, node_id: bytes,
                 group: int = 0) -> SimNode:
        idx = self.network.add_agent(site)
        assert idx == len(self.nodes)
        node = SimNode(idx, address, proto, node_id, group)
        self.nodes.append(node)
        self.by_address[address] = idx
        self.by_id[node_id] = idx
        return node

    def schedule(self, at: float, fn: Callable[..., None], *args: Any) -> None:
        """Run fn(*args) at virtual time `at` (a fault, a measurement, a join)."""
        self._push_world((at, 0, ACTION, fn, args, None, None))

    def _push_world(self, entry: tuple[Any, ...]) -> None:
        self.world_seq += 1
        at = entry[0]
        self.queue.push((at, self.world_seq) + entry[2:])
        heappush(self.world_times, at)

    # ----------------------------------------------------------- driving

    def pump(self, node: SimNode) -> int:
        """Collect what a protocol object wants after an input: events, sends, its timer.

        Returns how many events and sends it collected (0: the input changed nothing
        the world can see). Sending never calls back into the protocol, so only an
        event (whose hook may answer with an input, e.g. set_trust) warrants another
        pass; a pass that found no event ends the pump.
        """
        proto = node.proto
        now = self.now
        on_event = self.on_event
        trace = node.trace.update
        pack = _TRACE_EV.pack
        code = _KIND_CODE.get
        did = 0
        for _ in range(1000):
            ev = proto.next_event()
            got = ev is not None
            while ev is not None:
                did += 1
                trace(pack(now, node.idx, code(ev.kind, 0)) + ev.node_id[:8])
                on_event(node, ev, now)
                if proto is not node.proto or not node.up:
                    return did
                ev = proto.next_event()
            outs = proto.datagrams_to_send()
            if outs:
                did += len(outs)
                send = self._send
                for out in outs:
                    send(node, out.dst, out.data, out.reliable)
            if not got:
                break
        handover = node.handover
        if handover:
            # Every send collected above popped its own entry; one left now belongs to
            # bytes that never reached the network. Keys are ids, valid only while those
            # bytes live: drop it, so a later object at the same address cannot match.
            handover.clear()
        self._arm_timer(node)
        return did

    def _arm_timer(self, node: SimNode) -> None:
        t = node.proto.get_timer()
        if t is None:
            node.timer_at = None
            return
        if t < self.now + _MIN_STEP:
            t = self.now + _MIN_STEP
        if node.timer_at is not None and node.timer_at == t:
            return
        node.timer_at = t
        node.timer_gen += 1
        node.seq += 1
        self.queue.push((t, node.key_base + node.seq, TIMER, node, node.timer_gen, None, None))

    def _send(self, node: SimNode, dst: str, data: bytes, reliable: bool) -> None:
        n = len(data)
        self.sent += 1
        self.bytes_sent += n
        if reliable:
            self.sent_reliable += 1
        # object mode: take the decoded twin of these bytes (if the protocol left one)
        handover = node.handover
        obj = handover.pop(id(data), None) if handover else None
        now = self.now
        di = self.by_address.get(dst)
        if di is None:
            self._drop(node, -1, n, DROP_UNKNOWN)
            return
        t, reason = self.network.route(node.idx, di, n, reliable, now)
        if reason:
            self._drop(node, di, n, reason)
            return
        self.in_flight += 1
        node.seq += 1
        if self.nodes[di].local:
            self.queue.push((t, node.key_base + node.seq, DELIVER, di, node.idx, data, obj))
        else:  # the decoded twin crosses too (pickled: cheaper than decoding there)
            self.outgoing.append((t, node.key_base + node.seq, di, node.idx, data, obj))

    def _drop(self, node: SimNode, dst: int, n: int, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        node.trace.update(_TRACE_MSG.pack(self.now, 1, node.idx, dst, n))

    def deliver_remote(self, messages: list[tuple[float, int, int, int, bytes, Any]]) -> None:
        """Queue sends another process made to agents this process runs."""
        push = self.queue.push
        for t, key, di, src, data, obj in messages:
            push((t, key, DELIVER, di, src, data, obj))

    def next_world_after(self, t: float) -> float | None:
        """When the first world entry due after `t` runs (None: none is pending)."""
        times = self.world_times
        while times and times[0] <= t:
            heappop(times)
        return times[0] if times else None

    def run(self, until: float, progress: Callable[[float], None] | None = None,
            before: float | None = None, one: bool = False) -> None:
        """Run every entry due at or before `until` (and, given `before`, strictly
        before it: one window of a parallel run, whose ends are time-aligned in every
        process; `one`: only the next entry)."""
        current = self.queue.current  # the heap of the slot being drained (refilled in place)
        refill = self.queue.refill
        pop = heappop
        nodes = self.nodes
        pack = _TRACE_MSG.pack
        pump = self.pump
        if before is not None and before <= until:
            until = nextafter(before, -inf)  # t <= that iff t < before
        next_progress = 0.0
        step = until / 1000.0 if until > 0 else 1.0
        attach = getattr(progress, "attach", None)
        if attach is not None:  # a progress reporter may read counters (events/s)
            attach(self)
        while (current or refill()) and current[0][0] <= until:
            t, key, kind, a, b, c, d = pop(current)
            self.now = t
            self.key = key
            if kind == DELIVER:
                self.steps += 1
                self.in_flight -= 1
                node = nodes[a]
                if not node.up:
                    self.dropped[DROP_DOWN] = self.dropped.get(DROP_DOWN, 0) + 1
                    node.trace.update(pack(t, 1, b, a, len(c)))
                    continue
                self.delivered += 1
                node.trace.update(pack(t, 0, b, a, len(c)))
                if node.pending is not None:
                    node.pending.append((b, c, d))
                    continue
                src = nodes[b]
                try:
                    if d is None:
                        node.proto.receive(c, src.address, src.node_id, t)
                    else:
                        self.handed_over += 1
                        node.proto.receive(c, src.address, src.node_id, t, d)
                except Exception:  # the protocol must not raise on bad input; counted
                    self.protocol_errors += 1
                pump(node)
            elif kind == TIMER:
                node = a
                if b != node.timer_gen or not node.up:
                    # A re-armed timer leaves its old entry in the queue (no decrease-key);
                    # popping it is bookkeeping, not an event.
                    self.stale_timers += 1
                    continue
                self.steps += 1
                node.timer_at = None
                if node.pending is not None:
                    continue  # paused: resume() fires the timer
                try:
                    node.proto.handle_timer(t)
                except Exception:
                    self.protocol_errors += 1
                if not pump(node):
                    self.idle_timers += 1
            elif kind == RESUME:
                self.steps += 1
                self.world_steps += 1
                self._resume(a)
            else:
                self.steps += 1
                self.world_steps += 1
                a(*b)
            if progress is not None and t >= next_progress:
                progress(t)
                next_progress = t + step
            if one:
                return
        self.now = max(self.now, until)

    def peek(self) -> tuple[float, int] | None:
        """(time, key) of the next entry, or None."""
        current = self.queue.current
        if not current and not self.queue.refill():
            return None
        head = current[0]
        return head[0], head[1]

    # ------------------------------------------------------------ faults

    def crash(self, node: SimNode) -> None:
        """Stop a node: it loses volatile state; messages to it are dropped."""
        node.up = False
        node.crashed_at = self.now
        node.pending = None
        node.handover = None
        node.timer_at = None
        node.timer_gen += 1

    def restart(self, node: SimNode, proto: Any) -> None:
        node.proto = proto
        node.handover = getattr(proto, "handover", None) if self.object_mode else None
        node.up = True
        node.left = False
        node.crashed_at = None
        node.timer_at = None
        node.timer_gen += 1
        if node.local:
            self.pump(node)

    def pause(self, node: SimNode, duration: float) -> None:
        """A stalled process (GC pause, overloaded host): inputs queue until it resumes."""
        if not node.up:
            return
        until = self.now + duration
        if node.pending is None:
            node.pending = []
        if until > node.paused_until:
            node.paused_until = until
            self._push_world((until, 0, RESUME, node, None, None, None))

    def _resume(self, node: SimNode) -> None:
        if node.pending is None or self.now < node.paused_until or not node.up:
            return
        queued = node.pending
        node.pending = None
        if not node.local:
            return  # another process delivers what it queued
        for src_idx, data, obj in queued:
            src = self.nodes[src_idx]
            try:
                if obj is None:
                    node.proto.receive(data, src.address, src.node_id, self.now)
                else:
                    self.handed_over += 1
                    node.proto.receive(data, src.address, src.node_id, self.now, obj)
            except Exception:
                self.protocol_errors += 1
        t = node.proto.get_timer()
        if t is not None and t <= self.now:
            try:
                node.proto.handle_timer(self.now)
            except Exception:
                self.protocol_errors += 1
        node.timer_at = None
        self.pump(node)

    # ------------------------------------------------------------ checks

    def conservation(self) -> dict[str, int]:
        """Every sent message is delivered, dropped (by reason) or still in flight."""
        dropped = sum(self.dropped.values())
        return {"sent": self.sent, "delivered": self.delivered, "dropped": dropped,
                "in_flight": self.in_flight,
                "balanced": int(self.sent == self.delivered + dropped + self.in_flight)}

    def node_traces(self) -> dict[int, bytes]:
        """The trace digest of every agent this process runs, by index."""
        return {n.idx: n.trace.digest() for n in self.nodes if n.local}

    def trace_hash(self) -> str:
        return combine_traces({**self.node_traces(), **self.remote_traces}, len(self.nodes))


def combine_traces(traces: dict[int, bytes], n: int) -> str:
    """The run's trace hash from every agent's trace digest (all n of them, from
    however many processes ran them)."""
    if len(traces) != n:
        raise ValueError(f"trace digests of {len(traces)} agents, expected {n}")
    h = hashlib.blake2b(digest_size=16)
    for i in range(n):
        h.update(traces[i])
    return h.hexdigest()
