"""MeshNode, driven by hand with explicit time: the seam's contract (typed effects and
events, attestation verdicts decide trust, persisted incarnation, sub-machine routing)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from keepmesh.protocol.effects import (
    AttestationVerdict,
    Drain,
    Join,
    MemberJoined,
    MemberUntrusted,
    Output,
    Persist,
    RequestAttestation,
    Send,
    TimerKind,
)
from keepmesh.protocol.errors import ProtocolError
from keepmesh.protocol.membership import Capacity, Claims, MembershipConfig, make_record
from keepmesh.protocol.membership.signing import CachingVerifier
from keepmesh.protocol.node import MeshNode, wire_type_at
from keepmesh.simulations.keyring import SimulationKeyring
from keepmesh.simulations.testnet import TestNet, sim_node_id

LAN = MembershipConfig.profile("lan")
KEYRING = SimulationKeyring(b"node-test")
VERIFIER = CachingVerifier(KEYRING.verifier())


def addr(i: int) -> str:
    return f"10.0.0.{i}:7946"


def make(i: int, now: float = 0.0, incarnation: int = 1) -> MeshNode:
    signer = KEYRING.signer(sim_node_id(i))
    record = make_record(signer, addr(i), incarnation, Claims("sim", "ab", "1"),
                         Capacity(1024, 1000, 1024, 1000), {"zone": "a"})
    return MeshNode(LAN, record, signer, VERIFIER, random.Random(i), now)


def drain(node: MeshNode) -> list[Output]:
    out = []
    while (item := node.next_effect()) is not None:
        out.append(item)
    return out


def exchange(a: MeshNode, b: MeshNode, now: float, verdict: bool = True) -> list[Output]:
    """Deliver every Send between a and b until quiet; answer attestation requests."""
    seen: list[Output] = []
    nodes = {n.address: n for n in (a, b)}
    for _ in range(50):
        moved = False
        for node in (a, b):
            for item in drain(node):
                seen.append(item)
                if isinstance(item, Send) and item.dst in nodes:
                    nodes[item.dst].receive(item.data, node.address, node.node_id, now)
                    moved = True
                elif isinstance(item, RequestAttestation):
                    node.complete(AttestationVerdict(item.node_id, verdict, 30.0,
                                                     "" if verdict else "policy: tcb"), now)
                    moved = True
        if not moved:
            break
    return seen


def test_first_output_persists_incarnation() -> None:
    node = make(1, incarnation=7)
    out = drain(node)
    assert Persist("incarnation", 7) in out


def test_join_attest_then_trusted_member_event() -> None:
    a, b = make(1), make(2)
    a.command(Join((addr(2),)), 0.0)
    seen = exchange(a, b, 0.0)
    reqs = [x for x in seen if isinstance(x, RequestAttestation)]
    assert reqs and all(r.kind == "attest" for r in reqs)
    joins = [x for x in seen if isinstance(x, MemberJoined)]
    assert {j.node_id for j in joins} == {a.node_id, b.node_id}
    assert b.node_id in a.alive_ids() and a.node_id in b.alive_ids()
    sends = [x for x in seen if isinstance(x, Send)]
    # once known, sends name the identity they are for
    assert any(s.dst_id == b.node_id for s in sends if s.dst == addr(2)) or \
        all(s.dst_id is None for s in sends)


def test_failed_verdict_leaves_member_untrusted_and_out_of_view() -> None:
    a, b = make(1), make(2)
    a.command(Join((addr(2),)), 0.0)
    seen = exchange(a, b, 0.0, verdict=False)
    assert any(isinstance(x, MemberUntrusted) for x in seen)
    assert b.node_id not in a.alive_ids()


def test_verdict_expiry_needs_fresh_attestation() -> None:
    a, b = make(1), make(2)
    a.command(Join((addr(2),)), 0.0)
    exchange(a, b, 0.0)  # verdicts valid for 30 s
    assert b.node_id in a.alive_ids()
    a.handle_timer(31.0)
    drain(a)
    assert b.node_id not in a.alive_ids()


def test_timers_are_typed() -> None:
    node = make(1)
    timers = node.timers()
    assert timers and timers[0].kind is TimerKind.MEMBERSHIP
    assert node.get_timer() == timers[0].at


def test_unhandled_command_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        make(1).command(Drain(), 0.0)


class Recorder:
    """A minimal sub-machine: records what MeshNode routes to it."""

    prefix = b"place."
    timer_kind = TimerKind.PLACEMENT

    def __init__(self) -> None:
        self.got: list[Any] = []
        self.timer: float | None = 5.0

    def receive(self, data: bytes, src: str, src_id: bytes | None, now: float) -> None:
        self.got.append(("recv", data))

    def handle_timer(self, now: float) -> None:
        self.got.append(("timer", now))
        self.timer = None

    def get_timer(self) -> float | None:
        return self.timer

    def command(self, cmd: object, now: float) -> bool:
        self.got.append(("cmd", cmd))
        return isinstance(cmd, Drain)

    def complete(self, result: object, now: float) -> bool:
        return False

    def on_member_event(self, event: Any, now: float) -> None:
        self.got.append(("event", event.kind))

    def next_output(self) -> Output | None:
        return None


def test_sub_machine_gets_its_prefix_commands_and_timer() -> None:
    import msgpack
    node = make(1)
    rec = Recorder()
    node.add(rec)
    msg = msgpack.packb([1, "place.probe", {}])
    assert wire_type_at(msg) == 3
    node.receive(msg, addr(2), sim_node_id(2), 0.0)
    assert rec.got == [("recv", msg)]
    swim = msgpack.packb([1, "swim.ping", {}])
    node.receive(swim, addr(2), sim_node_id(2), 0.0)   # membership's, counted malformed there
    assert len(rec.got) == 1 and node.membership.stats.get("malformed") == 1
    node.command(Drain(), 0.0)
    assert node.get_timer() is not None and node.get_timer() <= 5.0
    node.handle_timer(5.0)
    assert ("timer", 5.0) in rec.got
    with pytest.raises(ProtocolError):
        node.add(type("Bad", (Recorder,), {"prefix": b"swim.x"})())


def test_testnet_drives_mesh_nodes_to_convergence() -> None:
    net = TestNet(LAN, seed=3)
    net.add(0)
    for i in range(1, 6):
        net.add(i, seeds=["n0"])
    expected = {sim_node_id(i) for i in range(6)}
    net.run_until(20.0)
    assert net.converged(expected)
    assert all(d.get("incarnation") == 0 for d in net.disk.values())


def test_drain_reaches_every_sub_machine() -> None:
    """Placement stops taking keeps and migration hands them over: a drain is everyone's,
    unlike other commands (the first machine that takes one ends its routing)."""
    node = make(1)
    first, second = Recorder(), type("Other", (Recorder,), {"prefix": b"migrate."})()
    node.add(first)
    node.add(second)
    node.command(Drain(), 0.0)
    assert ("cmd", Drain()) in first.got and ("cmd", Drain()) in second.got
