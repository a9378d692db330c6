"""Migration composed into MeshNode: real SWIM membership detects the crash, the
MigrationMachine restores the keep on its standby, all in virtual time.

The driver here only carries out effects (deliver bytes with the sender's id
as an attested channel would, answer attestation, run a counter as the
keep's state); every decision is MeshNode's, membership's and migration's.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass, field, replace
from typing import Any

from keepmesh.protocol.attestation.policy import load_policy
from keepmesh.protocol.deployment import deployment_id
from keepmesh.protocol.effects import (
    AttestationVerdict,
    Drain,
    MemberDead,
    MemberJoined,
    MemberLeft,
    Persist,
    RequestAttestation,
    Send,
)
from keepmesh.protocol.membership import Capacity, Claims, MembershipConfig, make_record
from keepmesh.protocol.membership.signing import Ed25519Signer, Ed25519Verifier
from keepmesh.protocol.migration import effects as fx
from keepmesh.protocol.migration.engine import Migration
from keepmesh.protocol.migration.location import sign_location
from keepmesh.protocol.migration.machine import PRUNE_S, MigrationMachine
from keepmesh.protocol.migration.messages import Location, LocationStatement, Replicate
from keepmesh.protocol.migration.transfer import split
from keepmesh.protocol.migration.triggers import Attested
from keepmesh.protocol.node import MeshNode
from keepmesh.protocol.placement import PlacementMachine
from keepmesh.protocol.wire import encode_payload
from migration_net import BASE_POLICY, deployment, evidence

LAN = MembershipConfig.profile("lan")


@dataclass
class Host:
    node: MeshNode
    machine: MigrationMachine
    up: bool = True
    counters: dict[str, int] = field(default_factory=dict)
    checkpoints: dict[str, dict[int, bytes]] = field(default_factory=dict)
    held: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    events: list[object] = field(default_factory=list)


class MeshSim:
    """`placement`: every node also runs a PlacementMachine (standbys chosen and held
    by placement); `labels[i]`, `lease_mb[i]`: node i's advertised labels and the
    memory its lease table really offers (advertised: 1024 MiB)."""

    def __init__(self, n: int, seed: int = 1, *, placement: bool = False,
                 labels: list[dict[str, str]] | None = None,
                 lease_mb: list[int] | None = None) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.heap: list[tuple[float, int, str, str, bytes, bytes]] = []
        self.seq = 0
        self.hosts: dict[str, Host] = {}
        self.deployments: dict[str, Any] = {}
        policy = load_policy(BASE_POLICY)
        for i in range(n):
            signer = Ed25519Signer(hashlib.sha256(f"mesh{i}".encode()).digest())
            addr = f"10.1.0.{i + 1}:7946"
            record = make_record(signer, addr, 1, Claims("sim", "ab", "1"),
                                 Capacity(1024, 1000, 1024, 1000),
                                 labels[i] if labels else {})
            node = MeshNode(LAN, record, signer, Ed25519Verifier(),
                            random.Random(self.rng.getrandbits(64)), 0.0)
            if placement:
                node.add(PlacementMachine(node, random.Random(i),
                                          memory_mb=lease_mb[i] if lease_mb else 1024,
                                          max_keeps=16))
            eng = Migration(signer, Ed25519Verifier(), addr,
                            random.Random(self.rng.getrandbits(64)), 0.0, default_policy=policy)
            machine = MigrationMachine(node, eng)
            node.add(machine)
            self.hosts[addr] = Host(node, machine)
        addrs = list(self.hosts)
        for h in self.hosts.values():  # the driver re-verifies its own evidence
            h.node.complete(fx.OwnEvidence(Attested(evidence(h.node.node_id), 0.0)), 0.0)
        for a in addrs[1:]:
            self.hosts[a].node.join([addrs[0]], 0.0)
        for a in addrs:
            self.after(a)

    def addr_of(self, node_id: bytes) -> str:
        return next(a for a, h in self.hosts.items() if h.node.node_id == node_id)

    def push(self, at: float, kind: str, dst: str, data: bytes = b"", src: bytes = b"") -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, dst, data, src))

    def run_until(self, t: float) -> None:
        while self.heap and self.heap[0][0] <= t:
            at, _, kind, dst, data, src = heapq.heappop(self.heap)
            self.now = at
            h = self.hosts[dst]
            if not h.up:
                continue
            if kind == "timer":
                if h.node.get_timer() is not None and h.node.get_timer() <= at:  # type: ignore[operator]
                    h.node.handle_timer(at)
            else:
                h.node.receive(data, self.addr_of(src), src, at)
            self.after(dst)
        self.now = t

    def after(self, addr: str) -> None:
        h = self.hosts[addr]
        node, now = h.node, self.now
        while (item := node.next_effect()) is not None:
            if isinstance(item, Send):
                if item.dst in self.hosts:
                    self.push(now + self.rng.uniform(0.001, 0.01), "msg", item.dst, item.data,
                              node.node_id)
            elif isinstance(item, RequestAttestation):
                node.complete(AttestationVerdict(item.node_id, True), now)
                node.complete(fx.MemberEvidence(item.node_id, Attested(evidence(item.node_id),
                                                                       now)), now)
            elif isinstance(item, fx.AttestStandby):
                att = Attested(evidence(item.node, nonce=item.nonce, issued_at=int(now)),
                               float(int(now)))
                node.complete(fx.StandbyAttested(item.keep, item.node, item.nonce, att), now)
            elif isinstance(item, fx.SendReplicate):
                d = self.deployments[item.keep]
                pkg = b"pkg" + d.package_digest
                msgs: list[Any] = [Replicate(keep=item.keep, epoch=item.epoch,
                                             deployment=encode_payload(d), package_size=len(pkg),
                                             package_digest=hashlib.sha256(pkg).digest())]
                msgs += split(item.keep, item.epoch, "package", 0, 0.0, pkg)
                self._send_all(h, item.node, msgs)
            elif isinstance(item, fx.TakeCheckpoint):
                h.checkpoints.setdefault(item.keep, {})[item.seq] = \
                    h.counters[item.keep].to_bytes(8, "big")
                node.complete(fx.CheckpointTaken(item.keep, item.seq, now, item.final), now)
            elif isinstance(item, fx.SendCheckpoint):
                data = h.checkpoints[item.keep][item.seq]
                self._send_all(h, item.node, split(item.keep, item.epoch, "checkpoint",
                                                   item.seq, now, data))
            elif isinstance(item, fx.StoreStandby):
                if item.kind == "checkpoint":
                    h.held[item.keep] = (item.seq, item.data)
            elif isinstance(item, fx.StartFromCheckpoint):
                seq, data = h.held.get(item.keep, (0, bytes(8)))
                h.counters[item.keep] = int.from_bytes(data, "big") if item.seq else 0
                if item.seq:
                    h.checkpoints.setdefault(item.keep, {})[seq] = data
                node.complete(fx.KeepRestored(item.keep, item.epoch,
                                              self.deployments[item.keep], True, ""), now)
            elif isinstance(item, fx.StopKeep):
                h.counters.pop(item.keep, None)
            elif isinstance(item, Persist | fx.PauseKeep | fx.ResumeKeep):
                pass
            else:
                h.events.append(item)
        t = node.get_timer()
        if t is not None and h.up:
            self.push(max(t, now), "timer", addr)

    def _send_all(self, h: Host, to: bytes, msgs: list[Any]) -> None:
        # ordered, like one stream: the same small delay for the whole batch
        at = self.now + 0.005
        for m in msgs:
            self.push(at, "msg", self.addr_of(to), encode_payload(m), h.node.node_id)


def test_crash_detected_by_membership_moves_the_keep_through_meshnode() -> None:
    sim = MeshSim(5, seed=4)
    sim.run_until(15.0)
    host_addr = next(iter(sim.hosts))
    host = sim.hosts[host_addr]
    d = deployment("mesh-counter")
    keep = deployment_id(d)
    sim.deployments[keep] = d
    host.counters[keep] = 7
    host.node.complete(fx.KeepHosted(d, 1), sim.now)
    sim.after(host_addr)
    sim.run_until(25.0)  # a standby, and a checkpoint (checkpoint_s = 5)
    loc = host.machine.engine.locations.get(keep)
    assert loc is not None and loc.standbys and loc.checkpoint_seq >= 1
    crashed_at = sim.now
    host.up = False
    sim.run_until(crashed_at + 25.0)
    running = [a for a, h in sim.hosts.items() if h.up and keep in h.counters]
    assert len(running) == 1 and running[0] != host_addr
    new = sim.hosts[running[0]]
    assert new.counters[keep] == 7
    moved = [e for e in new.events if isinstance(e, fx.KeepMoved)]
    assert moved and moved[0].trigger == "dead" and moved[0].epoch == 2
    for h in sim.hosts.values():
        if h.up:
            got = h.machine.engine.locations.get(keep)
            assert got is not None and got.epoch == 2 and got.address == running[0]


def test_drain_command_through_meshnode_hands_every_keep_over() -> None:
    sim = MeshSim(4, seed=6)
    sim.run_until(15.0)
    host_addr = next(iter(sim.hosts))
    host = sim.hosts[host_addr]
    keeps = []
    for i in range(3):
        d = deployment(f"drain-{i}", seed=i)
        keep = deployment_id(d)
        sim.deployments[keep] = d
        host.counters[keep] = 10 + i
        host.node.complete(fx.KeepHosted(d, 1), sim.now)
        keeps.append(keep)
    sim.after(host_addr)
    sim.run_until(20.0)
    host.node.command(Drain(), sim.now)
    sim.after(host_addr)
    sim.run_until(25.0)
    assert not host.counters
    [done] = [e for e in host.events if isinstance(e, fx.DrainFinished)]
    assert sorted(m.keep for m in done.moved) == sorted(keeps) and not done.failed
    for i, k in enumerate(keeps):
        [h] = [h for h in sim.hosts.values() if k in h.counters]
        assert h.counters[k] == 10 + i


class _CountingId(bytes):
    """A node id that counts comparisons with it (`loc.host == node` calls this first)."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        type(self).compared += 1
        return bytes.__eq__(self, other)  # type: ignore[arg-type]

    __hash__ = bytes.__hash__


def _running_at_another_host(name: bytes) -> tuple[Ed25519Signer, Location]:
    """A keep's signed record saying it runs at a host (`name` seeds its key) at 10.9.9.9."""
    host = Ed25519Signer(hashlib.sha256(name).digest())
    st = LocationStatement(keep="00" * 16, owner=bytes(32), host=host.node_id,
                           address="10.9.9.9:7946", epoch=1, version=0, standbys=(),
                           checkpoint_seq=0, checkpoint_at=0.0, state="running")
    return host, sign_location(host, st)


def test_send_to_a_non_member_is_addressed_without_scanning_the_location_table() -> None:
    sim = MeshSim(1)
    m = next(iter(sim.hosts.values())).machine
    host, signed = _running_at_another_host(b"far host")
    for i in range(2000):  # the table takes records its caller verified: copies suffice
        m.engine.locations.learn(replace(signed, keep=f"{i:032x}"))
    assert m._address(host.node_id) == "10.9.9.9:7946"  # a non-member with records
    stranger = _CountingId(hashlib.sha256(b"stranger").digest())
    _CountingId.compared = 0
    assert m._address(stranger) is None
    assert _CountingId.compared <= 1  # was one comparison per record in the table


def test_members_membership_reaped_are_forgotten_and_only_they() -> None:
    """Found sweeping per-identity state: the engine's liveness and evidence (and the
    machine's set of members seen) grew with every member identity ever seen, since
    membership sends no event when it reaps a member. They now last as long as
    membership's own entry: a member declared dead or left is forgotten once reaped."""
    sim = MeshSim(2)
    h0, h1 = sim.hosts.values()
    m, eng = h0.machine, h0.machine.engine
    sim.run_until(5.0)
    assert h0.node.member(h1.node.node_id) is not None  # a member membership still holds
    strangers = [hashlib.sha256(b"gone%d" % i).digest() for i in range(3)]
    live = hashlib.sha256(b"live").digest()
    now = sim.now
    for n in [*strangers, live, h1.node.node_id]:
        m.on_member_event(MemberJoined(n, 1, now), now)
        eng.member_evidence(n, Attested(evidence(n), now), now)
    for n in [*strangers, h1.node.node_id]:
        m.on_member_event(MemberDead(n, 1, now) if n != strangers[0] else
                          MemberLeft(n, 1, now), now)
    m.handle_timer(now + PRUNE_S)
    for n in strangers:  # dead or left, and not in membership's table (reaped): forgotten
        assert n not in eng.view.live and n not in eng.view.evidence
    assert live in eng.view.live and live in eng.view.evidence          # live: kept
    n1 = h1.node.node_id  # dead but not reaped yet: kept (and counted not live)
    assert eng.view.live[n1] is False and n1 in eng.view.evidence
    assert m._gone == {n1}


def test_a_join_of_a_member_some_record_names_is_a_rejoin() -> None:
    sim = MeshSim(1)
    m = next(iter(sim.hosts.values())).machine
    host, signed = _running_at_another_host(b"restarted host")
    m.engine.locations.learn(signed)
    while m.engine.next_output() is not None:
        pass
    fresh = hashlib.sha256(b"fresh").digest()
    for n in (fresh, host.node_id):
        m.on_member_event(MemberJoined(n, 1, 1.0), 1.0)
    sent = []
    while (out := m.engine.next_output()) is not None:
        if isinstance(out, fx.Send) and isinstance(out.message, Location):
            sent.append((out.to, out.message.keep))
    assert sent == [(host.node_id, "00" * 16)]  # the records naming it, to it only
