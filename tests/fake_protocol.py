"""A tiny ping/ack failure detector used ONLY to test the simulator engine in isolation.

It is not what `keepmesh simulate` runs (that is protocol/membership); it has
just enough behaviour (joins, probes, suspicion, death, updates, attest
requests) to give the engine, network and metrics known answers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Ev:
    kind: str
    node_id: bytes
    incarnation: int
    at: float


@dataclass(frozen=True)
class Out:
    dst: str
    data: bytes
    reliable: bool


class FakeProto:
    PROBE = 1.0
    TIMEOUT = 0.5
    DEAD_AFTER = 3.0

    def __init__(self, node_id: bytes, address: str, rng: random.Random, now: float,
                 incarnation: int, attest: bool) -> None:
        self.id = node_id
        self.addr = address
        self.rng = rng
        self.inc = incarnation
        self.attest = attest
        self.peers: dict[bytes, list[Any]] = {}  # id -> [addr, inc, state, suspect_at]
        self.out: list[Out] = []
        self.events: list[Ev] = []
        self.next_probe = now + rng.random() * self.PROBE
        self.waiting: tuple[bytes, float] | None = None
        self.order: list[bytes] = []  # round-robin probe order, as SWIM does

    def _msg(self, kind: str) -> bytes:
        return b"|".join([kind.encode(), self.id.hex().encode(), self.addr.encode(),
                          str(self.inc).encode()])

    def _learn(self, nid: bytes, addr: str, inc: int, now: float) -> None:
        if nid == self.id:
            return
        p = self.peers.get(nid)
        if p is None:
            self.peers[nid] = [addr, inc, "alive", 0.0]
            self.events.append(Ev("join", nid, inc, now))
            if self.attest:
                self.events.append(Ev("attest", nid, inc, now))
        elif inc > p[1]:
            p[1] = inc
            was = p[2]
            p[2] = "alive"
            self.events.append(Ev("update" if was == "alive" else "alive", nid, inc, now))

    def join(self, seeds: list[str], now: float) -> None:
        for s in seeds:
            self.out.append(Out(s, self._msg("hello"), True))

    def leave(self, now: float) -> None:
        for p in self.peers.values():
            self.out.append(Out(p[0], self._msg("bye"), False))

    def update_local(self, now: float, labels: Any = None) -> None:
        self.inc += 1
        for p in list(self.peers.values())[:8]:
            self.out.append(Out(p[0], self._msg("hello"), False))

    def set_trust(self, nid: bytes, trusted: bool, now: float, reason: str = "") -> None:
        p = self.peers.get(nid)
        if p is not None and not trusted and p[2] != "untrusted":
            p[2] = "untrusted"
            self.events.append(Ev("untrusted", nid, p[1], now))

    def receive(self, data: bytes, src: str, src_id: bytes | None, now: float) -> None:
        parts = data.split(b"|")
        if len(parts) < 4:
            return
        kind, nid, addr, inc = parts[0], bytes.fromhex(parts[1].decode()), parts[2].decode(), \
            int(parts[3])
        if kind == b"bye":
            p = self.peers.get(nid)
            if p is not None and p[2] != "left":
                p[2] = "left"
                self.events.append(Ev("left", nid, inc, now))
            return
        new = nid not in self.peers and nid != self.id
        self._learn(nid, addr, inc, now)
        if kind == b"hello" and new:  # tell everyone we know about the newcomer
            for pid, p in list(self.peers.items())[:50]:
                if pid != nid:
                    self.out.append(Out(p[0], b"|".join([b"intro", data.split(b"|", 1)[1]]),
                                        True))
        if kind == b"hello":
            self.out.append(Out(src, self._msg("welcome"), True))
            for pid, p in list(self.peers.items())[:50]:
                if pid != nid:
                    self.out.append(Out(src, b"|".join([b"intro", pid.hex().encode(),
                                                        p[0].encode(), str(p[1]).encode()]),
                                        True))
        elif kind == b"ping":
            self.out.append(Out(src, self._msg("ack"), False))
        elif kind == b"ack" and self.waiting is not None and self.waiting[0] == nid:
            self.waiting = None
            p = self.peers[nid]
            if p[2] == "suspect":
                p[2] = "alive"
                self.events.append(Ev("alive", nid, p[1], now))

    def handle_timer(self, now: float) -> None:
        if self.waiting is not None and now >= self.waiting[1]:
            nid = self.waiting[0]
            self.waiting = None
            p = self.peers[nid]
            if p[2] == "alive":
                p[2] = "suspect"
                p[3] = now
                self.events.append(Ev("suspect", nid, p[1], now))
        for nid, p in self.peers.items():
            if p[2] == "suspect" and now >= p[3] + self.DEAD_AFTER:
                p[2] = "dead"
                self.events.append(Ev("dead", nid, p[1], now))
        if now >= self.next_probe:
            self.next_probe = now + self.PROBE
            if not self.order:
                self.order = [k for k, p in self.peers.items() if p[2] in ("alive", "suspect")]
                self.rng.shuffle(self.order)
            if self.order:
                target = self.order.pop()
                if self.peers[target][2] not in ("alive", "suspect"):
                    return
                self.out.append(Out(self.peers[target][0], self._msg("ping"), False))
                if self.waiting is None:
                    self.waiting = (target, now + self.TIMEOUT)

    def get_timer(self) -> float | None:
        t = self.next_probe
        if self.waiting is not None:
            t = min(t, self.waiting[1])
        for p in self.peers.values():
            if p[2] == "suspect":
                t = min(t, p[3] + self.DEAD_AFTER)
        return t

    def datagrams_to_send(self) -> list[Out]:
        out, self.out = self.out, []
        return out

    def next_event(self) -> Ev | None:
        return self.events.pop(0) if self.events else None


class FakeAdapter:
    probe_interval = 1.0
    probe_timeout = 0.5
    gossip_interval = 0.2
    gossip_nodes = 3
    max_packet = 1400

    def __init__(self, attest: bool = True) -> None:
        self.attest = attest

    def new_identity(self, rng: random.Random) -> bytes:
        return rng.randbytes(32)

    def create(self, node_id: bytes, address: str, labels: dict[str, str],
               rng: random.Random, now: float, incarnation: int) -> FakeProto:
        return FakeProto(node_id, address, rng, now, incarnation, self.attest)

    def incarnation(self, proto: FakeProto) -> int:
        return proto.inc

    def join(self, proto: FakeProto, seeds: list[str], now: float) -> None:
        proto.join(seeds, now)

    def leave(self, proto: FakeProto, now: float) -> None:
        proto.leave(now)

    def update(self, proto: FakeProto, labels: dict[str, str], now: float) -> int:
        proto.update_local(now, labels=labels)
        return proto.inc

    def set_trust(self, proto: FakeProto, subject: bytes, trusted: bool, now: float,
                  reason: str) -> None:
        proto.set_trust(subject, trusted, now, reason)
