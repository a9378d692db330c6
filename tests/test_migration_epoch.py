"""Epoch on every message addressed to a keep (specs/migration.md §3): a copy serves
only its own epoch; a stale epoch is refused with `stale_epoch` (the sender is told
where the keep runs); a message proving a newer epoch fences the copy it reaches; an
unproven or forged claim fences nothing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from keepmesh.protocol.deployment import CallRequest
from keepmesh.protocol.errors import ProtocolError
from keepmesh.protocol.migration import effects as fx
from keepmesh.protocol.migration.location import StaleEpoch
from keepmesh.protocol.migration.messages import MAX_EPOCH, Location
from keepmesh.protocol.rpc import error_code
from keepmesh.protocol.wire import decode_payload, encode_payload
from migration_net import Net, Node


def _split(seed: int = 11) -> tuple[Net, str, Node, Node]:
    """A keep running at epoch 1 on a cut-off host and at epoch 2 on its standby."""
    net = Net(5, seed=seed)
    host = net.nodes[0]
    keep = net.deploy(host, "e")
    net.run(6.0)
    standby = net.by_id(host.engine.running[keep].replication.ready()[0])
    rest = [n for n in net.nodes if n is not host]
    net.partition([host], rest)
    net.run(2.0)
    assert {n.name for n in net.running(keep)} == {host.name, standby.name}
    assert standby.engine.running[keep].epoch == 2
    return net, keep, host, standby


def _record(node: Node, keep: str) -> bytes:
    loc = node.engine.locations.get(keep)
    assert loc is not None
    return encode_payload(loc)


def test_current_epoch_is_served_and_unknown_epoch_is_served_at_the_current_one() -> None:
    net = Net(3)
    keep = net.deploy(net.nodes[0], "e")
    eng = net.nodes[0].engine
    assert eng.admit(keep, 1, None, net.now) == 1
    assert eng.admit(keep, None, None, net.now) == 1
    assert eng.admit("0" * 32, 7, None, net.now) is None  # not migration's: served as before


def test_stale_epoch_is_refused_with_a_typed_error_and_the_sender_learns_the_winner() -> None:
    net, keep, host, standby = _split()
    net.heal()
    net.run(1.0)
    assert [n.name for n in net.running(keep)] == [standby.name]
    with pytest.raises(StaleEpoch) as err:
        standby.engine.admit(keep, 1, None, net.now, src=host.id)
    assert error_code(err.value) == "stale_epoch"
    sent = [o for o in _drain(standby) if isinstance(o, fx.Send)]
    assert sent and sent[0].to == host.id and isinstance(sent[0].message, Location)
    assert sent[0].message.epoch == 2
    # the old host, asked at its old epoch after the move, refuses too: it runs nothing
    with pytest.raises(StaleEpoch):
        host.engine.admit(keep, 1, None, net.now, src=standby.id)


def test_a_message_proving_a_newer_epoch_fences_the_copy_it_reaches() -> None:
    net, keep, host, standby = _split()
    # still partitioned: the host has not heard of epoch 2 ...
    assert host.engine.running[keep].epoch == 1
    # ... until a message addressed to the keep at epoch 2 arrives with its record
    with pytest.raises(StaleEpoch):
        host.engine.admit(keep, 2, _record(standby, keep), net.now)
    out = _drain(host)
    stops = [o for o in out if isinstance(o, fx.StopKeep)]
    assert stops and stops[0].reason == "fenced" and stops[0].epoch == 1
    assert any(isinstance(o, fx.KeepFenced) and o.winner_epoch == 2 for o in out)
    assert keep not in host.engine.running


def test_a_newer_epoch_without_proof_fences_nothing() -> None:
    net, keep, host, standby = _split()
    with pytest.raises(ProtocolError) as err:
        host.engine.admit(keep, 2, None, net.now)
    assert not isinstance(err.value, StaleEpoch)
    assert keep in host.engine.running and host.engine.running[keep].epoch == 1
    assert not any(isinstance(o, fx.StopKeep) for o in _drain(host))


def test_a_forged_record_fences_nothing() -> None:
    net, keep, host, standby = _split()
    loc = decode_payload(_record(standby, keep), 4096, (Location,))
    assert isinstance(loc, Location)
    forged = dataclasses.replace(loc, epoch=9)           # signature no longer matches
    with pytest.raises(ProtocolError):
        host.engine.admit(keep, 9, encode_payload(forged), net.now)
    garbage = b"\x93\x01\xaf" + b"x" * 40
    with pytest.raises(ProtocolError):
        host.engine.admit(keep, 2, garbage, net.now)
    assert keep in host.engine.running
    assert not any(isinstance(o, fx.StopKeep) for o in _drain(host))


def test_paused_for_hand_over_and_moved_copies_refuse() -> None:
    net = Net(3)
    host = net.nodes[0]
    keep = net.deploy(host, "d")
    net.run(2.0)
    host.engine.drain(net.now)
    net.pump()
    net.run(3.0)
    assert keep not in host.engine.running
    with pytest.raises(StaleEpoch):
        host.engine.admit(keep, None, None, net.now)


def test_call_request_carries_a_bounded_epoch_and_location() -> None:
    ok = CallRequest.from_fields({"keep": "k", "message": b"m", "epoch": 3,
                                  "location": b"x" * 4096})
    assert ok.epoch == 3
    assert CallRequest.from_fields({"keep": "k", "message": b"m"}).epoch is None
    for bad in ({"epoch": -1}, {"epoch": 1 << 63}, {"epoch": "2"}, {"location": b"x" * 4097},
                {"location": "text"}):
        with pytest.raises(ProtocolError):
            CallRequest.from_fields({"keep": "k", "message": b"m", **bad})


def _drain(node: Node) -> list[object]:
    out = []
    while (o := node.engine.next_output()) is not None:
        out.append(o)
    return out


def test_replicated_keeps_are_not_fenced_by_migration() -> None:
    net = Net(3)
    d_spec = {"replicas": 2, "labels": {}}
    from keepmesh.protocol.deployment import deployment_id
    from migration_net import deployment
    d = deployment("rep", placement=d_spec)
    keep = deployment_id(d)
    for n in net.nodes[:2]:
        n.counters[keep] = 0
        n.engine.keep_running(d, 1, net.now)
    net.pump()
    net.run(3.0)
    assert len(net.running(keep)) == 2
    assert not any(isinstance(o, fx.StopKeep) for n in net.nodes for o in n.stopped)
    assert net.nodes[0].engine.locations.get(keep) is None


class _Ctx:
    def __init__(self, deliveries: list[bytes]) -> None:
        self.deliveries = deliveries

    def deliver(self, message: bytes) -> bool:
        self.deliveries.append(message)
        return True


class _Epochs:
    """MigrationService's face for the router, over a bare engine."""

    def __init__(self, node: Node, now: float) -> None:
        self.node, self.now = node, now

    def keep_epoch(self, keep: str) -> tuple[int, bytes] | None:
        loc = self.node.engine.locations.get(keep)
        return None if loc is None else (loc.epoch, encode_payload(loc))

    def admit(self, keep: str, epoch: int | None, location: bytes | None,
              src: bytes | None) -> None:
        self.node.engine.admit(keep, epoch, location, self.now, src)


async def test_keep_to_keep_delivery_carries_and_checks_the_epoch() -> None:
    from types import SimpleNamespace

    from keepmesh.agent.workload_router import WorkloadRouter
    net, keep, host, standby = _split()
    delivered: list[bytes] = []
    manager = SimpleNamespace(keeps={keep: SimpleNamespace(ctx=_Ctx(delivered))}, outbound=None)
    agent = SimpleNamespace(register=lambda methods: None, services=[], peers={})
    router = WorkloadRouter(agent, SimpleNamespace(manager=manager),  # type: ignore[arg-type]
                            epochs=_Epochs(host, net.now))
    ctx = SimpleNamespace(role="agent", peer_key=standby.id)
    body = {"sender": "a" * 32, "target": keep, "message": b"hi"}
    # the host's own copy at its epoch: delivered
    assert (await router._rpc_deliver(ctx, dict(body, epoch=1)))["delivered"]  # type: ignore[arg-type]
    # a delivery proving epoch 2 fences the host's epoch-1 copy and is not delivered there
    with pytest.raises(StaleEpoch):
        await router._rpc_deliver(ctx, dict(body, epoch=2,  # type: ignore[arg-type]
                                            location=_record(standby, keep)))
    assert delivered == [b"hi"] and keep not in host.engine.running
    for bad in ({"epoch": -1}, {"epoch": True}, {"location": b"x" * 4097}):
        with pytest.raises(ProtocolError):
            await router._rpc_deliver(ctx, dict(body, **bad))  # type: ignore[arg-type]
    # the sender side attaches what it knows
    router_at_standby = WorkloadRouter(agent, SimpleNamespace(manager=manager),  # type: ignore[arg-type]
                                       epochs=_Epochs(standby, net.now))
    assert router_at_standby.epochs is not None
    assert router_at_standby.epochs.keep_epoch(keep) == (2, _record(standby, keep))


def test_replicating_to_a_member_still_running_an_older_copy_fences_it_first() -> None:
    net, keep, host, standby = _split()
    # The old host, cut off, still runs epoch 1; the partition heals only between the new
    # host and it, and the new host's next standby pick is the old host.
    assert host.engine.running[keep].epoch == 1
    r = standby.engine.running[keep]
    r.replication.links.clear()
    net.groups.clear()
    for a in net.nodes:
        for b in net.nodes:
            if a is not b and b is not host and a is not host:
                continue
            if a is not b:
                a.engine.member_state(b.id, True, net.now)
    standby.engine.standby_attested(keep, host.id, b"n" * 32, None, net.now)  # not asked
    standby.engine._reconcile(r, net.now)
    net.pump()
    net.run(3.0)
    assert keep not in host.engine.running           # fenced before it became a standby
    assert any(s.reason == "fenced" and s.epoch == 1 for s in host.stopped)
    assert [n.name for n in net.running(keep)] == [standby.name]


@pytest.mark.parametrize("epoch", [MAX_EPOCH - 1, MAX_EPOCH])
def test_no_standby_takes_over_at_an_epoch_the_wire_cannot_carry(epoch: int) -> None:
    net = Net(3, seed=2)
    host = net.nodes[0]
    keep = net.deploy(host, "ceiling", epoch=epoch)  # the host signs its own record there
    net.run(1.0)
    [standby] = host.engine.running[keep].replication.ready()
    net.crash(host)
    [copy] = net.running(keep) or [None]
    sb = net.by_id(standby)
    if epoch < MAX_EPOCH:  # within the ceiling: taken over at the last epoch there is
        assert copy is sb
        loc = sb.engine.locations.get(keep)
        assert loc is not None and loc.epoch == MAX_EPOCH
        assert decode_payload(encode_payload(loc)) == loc
    else:  # beyond: nobody runs it at 2^63, the keep is reported orphaned, once
        assert copy is None
        orphaned = [e for e in sb.events if isinstance(e, fx.KeepOrphaned)]
        assert len(orphaned) == 1 and "ceiling" in orphaned[0].reason
        net.run(2.0)
        assert net.running(keep) == []
        assert len([e for e in sb.events if isinstance(e, fx.KeepOrphaned)]) == 1


@pytest.mark.parametrize("epoch", [MAX_EPOCH - 2, MAX_EPOCH - 1])
def test_a_hand_over_never_produces_an_epoch_the_wire_cannot_carry(epoch: int) -> None:
    net = Net(3, seed=4)
    host = net.nodes[0]
    keep = net.deploy(host, "ceiling", epoch=epoch)
    net.run(1.0)
    host.engine.drain(net.now)
    net.pump()
    net.run(1.0)
    [done] = [e for e in host.events if isinstance(e, fx.DrainFinished)]
    [copy] = net.running(keep)
    if epoch == MAX_EPOCH - 2:  # epoch + 1, and epoch + 2 should it resume, both fit
        assert copy is not host and [m.epoch for m in done.moved] == [MAX_EPOCH - 1]
    else:  # a failed hand-over would resume at 2^63: refused, the keep stays and serves
        assert copy is host and keep not in host.paused and not done.moved
        assert [k for k, _ in done.failed] == [keep] and "ceiling" in done.failed[0][1]


def test_the_agent_does_not_restart_a_keep_at_an_epoch_the_wire_cannot_carry(
        tmp_path: Path) -> None:
    from keepmesh.agent.migration_service import MigrationService
    svc = MigrationService.__new__(MigrationService)
    svc.root = tmp_path
    ok, top, over = "aa" * 16, "bb" * 16, "cc" * 16
    (tmp_path / "epochs.json").write_text(json.dumps({ok: 3, top: MAX_EPOCH, over: MAX_EPOCH + 1,
                                                      "z": 0}))
    assert svc._load_epochs() == {ok: 3, top: MAX_EPOCH}  # beyond: the keep starts at 1
