"""Test driver for protocol/migration: N `Migration` engines on a virtual network.

It only carries out effects (deliver encoded messages, keep a counter per
keep as its durable state, store what standbys receive, restore from it), so
tests exercise the real decisions in protocol/migration with explicit time
and a seeded random.Random. Partitions drop messages between groups; a
crashed node neither sends nor receives.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from keepmesh.protocol.attestation.evidence import VerifiedEvidence
from keepmesh.protocol.attestation.policy import load_policy
from keepmesh.protocol.channel import evidence_report_data
from keepmesh.protocol.deployment import Deployment, deployment_id, make_deployment, manifest_for
from keepmesh.protocol.membership.signing import Ed25519Signer, Ed25519Verifier
from keepmesh.protocol.migration import effects as fx
from keepmesh.protocol.migration.engine import Migration
from keepmesh.protocol.migration.messages import Replicate
from keepmesh.protocol.migration.transfer import split
from keepmesh.protocol.migration.triggers import Attested
from keepmesh.protocol.wire import encode_payload

SIM_ROOT = b"\x11" * 32
BASE_POLICY = "allow_sim = true\nallowed_tee = [\"sim\"]\n"
OWNER_SEED = b"\x07" * 32


def evidence(node: bytes, *, microcode: int = 213, nonce: bytes = b"",
             issued_at: int = 0) -> VerifiedEvidence:
    return VerifiedEvidence(
        format="sev-snp", tee="sim", measurement=b"\x00" * 48,
        report_data=evidence_report_data(node, issued_at, nonce), debug=False, signer=(),
        root_fingerprint=SIM_ROOT, vendor_root=False,
        tcb={"bootloader": 3, "tee": 0, "snp": 22, "microcode": microcode},
        claims={"vmpl": 0, "guest_svn": 0})


def deployment(name: str, policy: str = BASE_POLICY, seed: int = 0,
               migration: dict[str, Any] | None = None, **manifest: Any) -> Deployment:
    extra = dict(manifest)
    if migration is not None:
        extra["migration"] = migration
    return make_deployment(manifest_for(name, stateful=True, **extra), b"\0asm" + name.encode(),
                           policy, OWNER_SEED, 1000.0, random.Random(seed))


@dataclass
class Node:
    name: str
    engine: Migration
    signer: Ed25519Signer
    microcode: int = 213
    up: bool = True
    # driver state
    counters: dict[str, int] = field(default_factory=dict)       # running keeps: value
    paused: set[str] = field(default_factory=set)
    checkpoints: dict[str, dict[int, bytes]] = field(default_factory=dict)
    held: dict[str, dict[str, Any]] = field(default_factory=dict)  # standby store
    stopped: list[fx.StopKeep] = field(default_factory=list)
    fenced_state: dict[str, int] = field(default_factory=dict)
    events: list[object] = field(default_factory=list)

    @property
    def id(self) -> bytes:
        return self.signer.node_id


class Net:
    def __init__(self, n: int, seed: int = 1, default_policy: str = BASE_POLICY) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.nodes: list[Node] = []
        self.deployments: dict[str, Deployment] = {}
        self.groups: dict[bytes, int] = {}
        self.delivered = 0
        pol = load_policy(default_policy)
        for i in range(n):
            signer = Ed25519Signer(hashlib.sha256(f"node{i}-{seed}".encode()).digest())
            eng = Migration(signer, Ed25519Verifier(), f"10.0.0.{i}:7000",
                            random.Random(self.rng.random()), 0.0, default_policy=pol)
            self.nodes.append(Node(f"n{i}", eng, signer))
        for a in self.nodes:
            for b in self.nodes:
                a.engine.member_state(b.id, True, 0.0)
                a.engine.member_evidence(b.id, Attested(evidence(b.id), 0.0), 0.0)
        self.pump()

    def by_id(self, node_id: bytes) -> Node:
        return next(n for n in self.nodes if n.id == node_id)

    def reachable(self, a: Node, b: Node) -> bool:
        return a.up and b.up and self.groups.get(a.id, 0) == self.groups.get(b.id, 0)

    # ---------------------------------------------------------------- actions

    def deploy(self, host: Node, name: str, policy: str = BASE_POLICY, epoch: int = 1,
               migration: dict[str, Any] | None = None) -> str:
        d = deployment(name, policy, migration=migration)
        keep = deployment_id(d)
        self.deployments[keep] = d
        host.counters[keep] = 0
        host.engine.keep_running(d, epoch, self.now)
        self.pump()
        return keep

    def call(self, keep: str) -> Node | None:
        """Increment the keep's counter on whichever copy serves it (None: paused/none)."""
        serving = [n for n in self.nodes if n.up and keep in n.counters and keep not in n.paused]
        for n in serving:
            n.counters[keep] += 1
        return serving[0] if len(serving) == 1 else None

    def running(self, keep: str) -> list[Node]:
        return [n for n in self.nodes if n.up and keep in n.counters]

    def crash(self, node: Node) -> None:
        node.up = False
        for other in self.nodes:
            if other is not node and other.up:
                other.engine.member_state(node.id, False, self.now)
        self.pump()

    def set_tcb(self, node: Node, microcode: int) -> None:
        node.microcode = microcode
        att = Attested(evidence(node.id, microcode=microcode), self.now)
        for other in self.nodes:
            if other.up:
                if other is node:
                    other.engine.own_evidence(att, self.now)
                else:
                    other.engine.member_evidence(node.id, att, self.now)
        self.pump()

    def partition(self, *sides: list[Node]) -> None:
        """Split into groups; each side declares the other dead (as membership would)."""
        for g, side in enumerate(sides):
            for n in side:
                self.groups[n.id] = g
        for a in self.nodes:
            for b in self.nodes:
                if a is not b and a.up:
                    a.engine.member_state(b.id, self.reachable(a, b), self.now)
        self.pump()

    def heal(self) -> None:
        self.groups.clear()
        for a in self.nodes:
            for b in self.nodes:
                if a is not b and a.up and b.up:
                    a.engine.member_state(b.id, True, self.now)
        self.pump()

    def run(self, seconds: float, step: float = 0.25) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            for n in self.nodes:
                t = n.engine.get_timer()
                if n.up and t is not None and t <= self.now:
                    n.engine.handle_timer(self.now)
            self.pump()

    # ---------------------------------------------------------------- effects

    def pump(self) -> None:
        for _ in range(100_000):
            busy = False
            for n in self.nodes:
                while n.up:
                    out = n.engine.next_output()
                    if out is None:
                        break
                    busy = True
                    self._do(n, out)
            if not busy:
                return
        raise AssertionError("effects did not quiesce")

    def _send(self, src: Node, dst_id: bytes, msg: Any) -> None:
        dst = self.by_id(dst_id)
        if self.reachable(src, dst):
            self.delivered += 1
            dst.engine.receive(encode_payload(msg), src.id, self.now)

    def _do(self, n: Node, out: object) -> None:
        now = self.now
        if isinstance(out, fx.Send):
            self._send(n, out.to, out.message)
        elif isinstance(out, fx.AttestStandby):
            peer = self.by_id(out.node)
            if self.reachable(n, peer):
                att = Attested(evidence(peer.id, microcode=peer.microcode, nonce=out.nonce,
                                        issued_at=int(now)), float(int(now)))
                n.engine.standby_attested(out.keep, out.node, out.nonce, att, now)
        elif isinstance(out, fx.SendReplicate):
            d = self.deployments[out.keep]
            pkg = b"sealed-for-" + out.node + b"-" + d.package_digest
            self._send(n, out.node, Replicate(
                keep=out.keep, epoch=out.epoch, deployment=encode_payload(d),
                package_size=len(pkg), package_digest=hashlib.sha256(pkg).digest()))
            for t in split(out.keep, out.epoch, "package", 0, 0.0, pkg):
                self._send(n, out.node, t)
        elif isinstance(out, fx.TakeCheckpoint):
            value = n.counters[out.keep]
            n.checkpoints.setdefault(out.keep, {})[out.seq] = value.to_bytes(8, "big")
            n.engine.checkpoint_taken(out.keep, out.seq, now, now, final=out.final)
        elif isinstance(out, fx.SendCheckpoint):
            data = n.checkpoints[out.keep][out.seq]
            for t in split(out.keep, out.epoch, "checkpoint", out.seq, now, data,
                           chunk_size=3):
                self._send(n, out.node, t)
        elif isinstance(out, fx.StoreStandby):
            n.held.setdefault(out.keep, {})[out.kind] = (out.seq, out.data)
        elif isinstance(out, fx.DropStandby):
            n.held.pop(out.keep, None)  # as the agent deletes its standby folder
        elif isinstance(out, fx.StartFromCheckpoint):
            held = n.held.get(out.keep, {})
            value = 0
            if out.seq > 0:
                seq, data = held["checkpoint"]
                assert seq == out.seq
                value = int.from_bytes(data, "big")
                n.checkpoints.setdefault(out.keep, {})[seq] = data
            n.counters[out.keep] = value
            n.engine.keep_started(out.keep, out.epoch, self.deployments[out.keep], True, "",
                                  now)
        elif isinstance(out, fx.PauseKeep):
            n.paused.add(out.keep)
        elif isinstance(out, fx.ResumeKeep):
            n.paused.discard(out.keep)
        elif isinstance(out, fx.StopKeep):
            n.stopped.append(out)
            value = n.counters.pop(out.keep)
            n.paused.discard(out.keep)
            if out.reason == "fenced":
                n.fenced_state[out.keep] = value
        else:
            n.events.append(out)
