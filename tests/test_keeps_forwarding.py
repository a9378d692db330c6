"""keeps.call/keeps.logs/keeps.stop forwarded by an agent that does not host the keep
(agent/placement_service.py), over real migration engines (tests/migration_net.py):
the client's epoch is fenced the same way directly and through a forwarder
(specs/migration.md §3), and a host that membership holds dead or left is not waited
on for FORWARD_TIMEOUT_S (specs/keeps.md §3, specs/wire.md `unavailable`).

The agents are PlacementService objects over fakes of their agent, mesh and keeps; the
agent-to-agent RPC is the forwarder calling the host's handler with the wire's body
round trip and error codes, so the routing code under test is the real one. Trio's
autojump clock makes the forwarder's backoffs and timeouts instant and measurable."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing
from keepmesh.agent import placement_service
from keepmesh.agent.cli import CommandError
from keepmesh.agent.cli.keeps import stopped
from keepmesh.agent.client import explain_rpc_error
from keepmesh.agent.placement_service import FORWARD_TIMEOUT_S, PlacementService
from keepmesh.agent.rpc import RpcError
from keepmesh.protocol.deployment import CallRequest, KeepRequest, deployment_id
from keepmesh.protocol.effects import MemberDead
from keepmesh.protocol.errors import ProtocolError
from keepmesh.protocol.membership import MemberState
from keepmesh.protocol.migration.location import StaleEpoch
from keepmesh.protocol.migration.machine import MigrationMachine
from keepmesh.protocol.placement.messages import Location
from keepmesh.protocol.rpc import RpcNotFound, error_code, pack_body, unpack_body
from migration_net import Net, Node, deployment


class _Session:
    """An attested agent session; `to` None is a host that died silently (no answer)."""

    def __init__(self, src: bytes, host: bytes, to: PlacementService | None) -> None:
        self.src, self.to = src, to
        self.peer = SimpleNamespace(identity=host)
        self.closed = trio.Event()
        self.calls = 0


async def _rpc(session: _Session, method: str, body: dict[str, Any],
               timeout: float = 30.0) -> dict[str, Any]:
    """agent/rpc.py's `call` as the forwarder sees it: the body crosses as msgpack, a
    handler's ProtocolError comes back as RpcError with its code, no answer is `busy`."""
    session.calls += 1
    if session.to is None:
        await trio.sleep(timeout)
        raise RpcError(f"{method}: no answer within {timeout:g}s", "busy", method)
    ctx = SimpleNamespace(role="agent", peer_key=session.src)
    handler = session.to.agent.methods[method]  # what the host registered
    try:
        out = await handler(ctx, unpack_body(pack_body(body)))  # type: ignore[arg-type]
    except ProtocolError as err:
        raise RpcError(err.reason, error_code(err), method) from None
    return unpack_body(pack_body(out))


class _Members:
    """Membership's view: liveness per member (all alive unless set)."""

    def __init__(self) -> None:
        self.state: dict[bytes, MemberState] = {}

    def member(self, node_id: bytes) -> Any:
        return SimpleNamespace(liveness=self.state.get(node_id, MemberState.ALIVE),
                               address="")  # unknown: locations keep their own


class Agent:
    """One agent of `net`: its PlacementService routing over node.engine."""

    def __init__(self, net: Net, node: Node) -> None:
        self.net, self.node = net, node
        self.members = _Members()
        self.sessions: dict[bytes, _Session] = {}
        self.ended: set[str] = set()  # copies stopped here: still known, as a KeepManager's
        self.migration = MigrationMachine(self, node.engine)  # type: ignore[arg-type]
        self.node_id, self.address = node.id, node.engine.address
        mesh = SimpleNamespace(node=self, now=lambda: net.now, flush=net.pump,
                               machine_factories=[], on_output=[], membership=self.members)
        manager = SimpleNamespace(get=self._get, keeps=self._keeps(), stop=self._stop_keep)
        keeps = SimpleNamespace(manager=manager, operator_keys=set(),
                                log_reply=self._log_reply,
                                methods=lambda: {"keeps.call": self._call,
                                                 "keeps.logs": self._logs,
                                                 "keeps.stop": self._stop})
        self.methods = dict(keeps.methods())  # the agent's table: KeepService's, then
        agent = SimpleNamespace(register=self.methods.update, services=[],  # placement's
                                peers={}, connect=self._connect, methods=self.methods)
        self.service = PlacementService(agent, mesh, keeps,  # type: ignore[arg-type]
                                        SimpleNamespace(keeps=4), 1 << 30)  # type: ignore[arg-type]
        self.agent = agent

    def machine(self, cls: type) -> object:
        return self.migration if cls is MigrationMachine else None

    def _keeps(self) -> dict[str, Any]:
        node = self.node

        class Running(dict[str, Any]):
            def get(self, keep: str, default: Any = None) -> Any:
                if keep in node.counters:
                    return SimpleNamespace(status="running")
                return SimpleNamespace(status="stopped") if keep in ended else default
        ended = self.ended
        return Running()

    def _get(self, keep: str) -> Any:
        """KeepManager.get: an id or a unique prefix of at least 8 characters."""
        found = {k for k in (*self.node.counters, *self.ended)
                 if k == keep or (len(keep) >= 8 and k.startswith(keep))}
        if len(found) != 1:
            raise ProtocolError(f"no keep {keep!r} on this agent")
        keep = found.pop()
        return SimpleNamespace(keep_id=keep, deployment=self.net.deployments[keep],
                               status="running" if keep in self.node.counters else "stopped")

    async def _call(self, ctx: Any, body: dict[str, Any]) -> dict[str, Any]:
        keep = self._get(CallRequest.from_fields(body).keep).keep_id
        self.node.counters[keep] += 1
        return {"keep": keep, "reply": b"%d" % self.node.counters[keep], "state": "running"}

    async def _logs(self, ctx: Any, body: dict[str, Any]) -> dict[str, Any]:
        req = KeepRequest.from_fields(body)
        keep = self._get(req.keep)
        if keep.deployment.owner_key != ctx.peer_key:
            raise RpcNotFound("no keep")
        return self._log_reply(keep, req)

    def _log_reply(self, keep: Any, req: KeepRequest) -> dict[str, Any]:
        """KeepService.log_reply: this copy's own log (one line naming the copy)."""
        return {"keep": keep.keep_id, "state": keep.status, "seq": 1,
                "lines": [{"stream": "stdout", "line": f"on {self.node.name}", "seq": 1}]}

    async def _stop(self, ctx: Any, body: dict[str, Any]) -> dict[str, Any]:
        keep = self._get(KeepRequest.from_fields(body).keep)
        if keep.deployment.owner_key != ctx.peer_key:
            raise RpcNotFound("no keep")
        return {"keep": keep.keep_id, "state": await self._stop_keep(keep.keep_id)}

    async def _stop_keep(self, keep: str) -> str:
        if self.node.counters.pop(keep, None) is not None:
            self.ended.add(keep)
        return "stopped"

    def command(self, cmd: object, now: float) -> None:
        """MeshNode.command: placement's lease release after a local stop."""

    async def _connect(self, address: str) -> Any:
        raise AssertionError(f"no session to {address}: peers are set up by link()")

    def link(self, other: Agent, *, dead: bool = False) -> _Session:
        s = _Session(self.node_id, other.node_id, None if dead else other.service)
        self.agent.peers[other.node_id] = SimpleNamespace(session=s)
        self.sessions[other.node_id] = s
        return s


@pytest.fixture(autouse=True)
def _wire(monkeypatch: pytest.MonkeyPatch) -> None:
    """Agent-to-agent calls go to the other service's handler."""
    monkeypatch.setattr(placement_service, "call", _rpc)


def _client(net: Net, keep: str) -> Any:
    return SimpleNamespace(role="client", peer_key=net.deployments[keep].owner_key)


def _agents(net: Net) -> list[Agent]:
    agents = [Agent(net, n) for n in net.nodes]
    for a in agents:
        for b in agents:
            if a is not b:
                a.link(b)
    return agents


def _moved(seed: int = 11) -> tuple[Net, str, list[Agent], Agent, Agent]:
    """A keep that moved from its first host to its standby (epoch 2); every view agrees."""
    net = Net(4, seed=seed)
    host = net.nodes[0]
    keep = net.deploy(host, "e")
    net.run(6.0)
    standby = net.by_id(host.engine.running[keep].replication.ready()[0])
    net.partition([host], [n for n in net.nodes if n is not host])
    net.run(2.0)
    net.heal()
    net.run(2.0)
    assert [n.name for n in net.running(keep)] == [standby.name]
    assert all(n.engine.locations.get(keep).epoch == 2 for n in net.nodes)  # type: ignore[union-attr]
    agents = _agents(net)
    new = next(a for a in agents if a.node is standby)
    old = next(a for a in agents if a.node is host)
    return net, keep, agents, old, new


async def test_a_clients_stale_epoch_is_refused_through_a_forwarder_as_directly(
        autojump_clock: trio.testing.MockClock) -> None:
    """The forwarder used to replace the client's epoch with its own, so a stale epoch
    sent through any agent but the host was served."""
    net, keep, agents, old, new = _moved()
    forwarder = next(a for a in agents if a is not old and a is not new)
    client = _client(net, keep)
    body = {"keep": keep, "message": b"inc"}
    served = new.node.counters[keep]

    # current epoch: served directly and through a forwarder
    await new.service._rpc_call(client, dict(body, epoch=2))
    out = await forwarder.service._rpc_call(client, dict(body, epoch=2))
    assert out["keep"] == keep and new.node.counters[keep] == served + 2

    # stale epoch: the same typed refusal directly, through a forwarder, and through the
    # old host (which runs nothing now and forwards); nothing served anywhere
    for entry in (new, forwarder, old):
        with pytest.raises(StaleEpoch) as err:
            await entry.service._rpc_call(client, dict(body, epoch=1))
        assert error_code(err.value) == "stale_epoch"
    assert new.node.counters[keep] == served + 2

    # an epoch above the current one with no record proving it: refused as invalid
    # either way (an unsigned number cannot fence a keep)
    for entry in (new, forwarder):
        with pytest.raises(ProtocolError) as err:
            await entry.service._rpc_call(client, dict(body, epoch=3))
        assert error_code(err.value) == "invalid"

    # no epoch: served at the current one, as before
    await forwarder.service._rpc_call(client, dict(body))
    assert new.node.counters[keep] == served + 3


def _hosted(standbys: int = 1) -> tuple[Net, str, Agent, Agent, Agent]:
    """A keep on n0 (epoch 1, its standby ready); agents for the host, its standby (None
    without one) and a forwarder that is neither."""
    net = Net(4, seed=11)
    host = net.nodes[0]
    keep = net.deploy(host, "e", migration={"standbys": standbys, "checkpoint_s": 1.0})
    net.run(6.0)
    agents = _agents(net)
    ready = host.engine.running[keep].replication.ready()
    standby = next((a for a in agents if ready and a.node.id == ready[0]), None)
    forwarder = next(a for a in agents[1:] if a is not standby)
    return net, keep, agents[0], standby, forwarder  # type: ignore[return-value]


def _dies(net: Net, host: Agent, seen_by: Agent) -> None:
    """`seen_by`'s membership (and so its migration view) holds `host` dead."""
    seen_by.members.state[host.node_id] = MemberState.DEAD
    seen_by.node.engine.member_state(host.node_id, False, net.now)
    net.pump()


async def test_a_host_that_dies_with_a_call_in_flight_fails_it_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    """Membership declaring the host dead ends the wait with a typed one-line error
    instead of FORWARD_TIMEOUT_S of silence; nothing retries a call that may have been
    served."""
    net, keep, host, _, forwarder = _hosted()
    forwarder.link(host, dead=True)  # the host went silent: no answer will come

    async def declared_dead() -> None:
        await trio.sleep(2.0)
        _dies(net, host, forwarder)
        forwarder.service._on_output(MemberDead(host.node_id, 1, net.now))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(declared_dead)
        with pytest.raises(ProtocolError) as err:
            await forwarder.service._rpc_call(_client(net, keep), {"keep": keep,
                                                                   "message": b"inc"})
    assert error_code(err.value) == "unavailable"
    assert trio.current_time() - start < 3.0 < FORWARD_TIMEOUT_S
    assert forwarder.sessions[host.node_id].calls == 1


async def test_a_call_for_a_keep_whose_host_is_dead_goes_to_its_successor(
        autojump_clock: trio.testing.MockClock) -> None:
    """The forwarder's view holds the host dead before the successor's record reached
    it: nothing is sent to the dead host; it re-resolves and the successor serves."""
    net, keep, host, standby, forwarder = _hosted()
    dead = forwarder.link(host, dead=True)
    _dies(net, host, forwarder)
    assert forwarder.node.engine.locations.get(keep).epoch == 1  # type: ignore[union-attr]

    async def takes_over() -> None:
        await trio.sleep(0.1)
        net.crash(host.node)  # the standby restores the keep at epoch 2, its record spreads

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(takes_over)
        out = await forwarder.service._rpc_call(_client(net, keep), {"keep": keep,
                                                                     "message": b"inc"})
    assert out["keep"] == keep and standby.node.counters[keep] == 1
    assert dead.calls == 0 and trio.current_time() - start < 3.0
    logs = await forwarder.methods["keeps.logs"](_client(net, keep), {"keep": keep})
    assert logs["host_id"] == standby.node_id.hex() and dead.calls == 0


async def test_an_orphaned_keep_fails_at_once_for_call_logs_and_stop(
        autojump_clock: trio.testing.MockClock) -> None:
    """No standby: nobody will run it again; the forwarder says so in one typed line."""
    net, keep, host, _, forwarder = _hosted(standbys=0)
    dead = forwarder.link(host, dead=True)
    _dies(net, host, forwarder)
    client = _client(net, keep)
    start = trio.current_time()
    for method, body in ((forwarder.service._rpc_call, {"keep": keep, "message": b"inc"}),
                         (forwarder.methods["keeps.logs"], {"keep": keep}),
                         (forwarder.service._rpc_stop, {"keep": keep})):
        with pytest.raises(ProtocolError) as err:
            await method(client, body)
        assert error_code(err.value) == "unavailable"
        line = explain_rpc_error(RpcError(str(err.value), "unavailable", "keeps.call"), body)
        assert len(line.splitlines()) == 1 and "keepmesh keeps" in line
    assert dead.calls == 0 and trio.current_time() - start < 1.0


async def test_stop_through_any_agent_stops_every_replica(
        autojump_clock: trio.testing.MockClock) -> None:
    """`deploy --replicas 3`, then `stop ID`: it used to stop only the copy on the agent
    asked (or the first one placement knew) and print `stopped`; every copy stops, and a
    copy that cannot be stopped fails the command in one line after the others."""
    net = Net(5, seed=11)
    d = deployment("rep", placement={"replicas": 4, "labels": {}})
    keep = deployment_id(d)
    net.deployments[keep] = d
    agents = _agents(net)
    copies, forwarder, dead = agents[:3], agents[3], agents[4]
    rows: list[Location] = []
    for a in agents:
        a.service.machine = SimpleNamespace(known=lambda: rows)  # type: ignore[assignment]
    client = _client(net, keep)
    args = SimpleNamespace(json=False)

    def deployed(on: list[Agent]) -> None:
        rows[:] = [Location(keep=keep, host_id=a.node_id, host=a.address, epoch=1,
                            state="running", owner=d.owner_key) for a in on]
        for a in on:
            a.node.counters[keep] = 0

    # through one replica: every copy ends, and the answer says how many
    deployed(copies)
    out = await copies[1].service._rpc_stop(client, {"keep": keep[:12]})
    assert out["keep"] == keep and out["stopped"] == 3 and out["failed"] == []
    assert {c["host_id"] for c in out["copies"]} == {a.node_id.hex() for a in copies}
    assert all(keep not in a.node.counters for a in copies)
    assert stopped(args, out) == 0  # type: ignore[arg-type]

    # through an agent holding none, one copy on a host that died: the others stop, the
    # dead one is named (not waited on) and the command fails
    deployed([*copies, dead])
    for a in agents:
        _dies(net, dead, a)
        a.link(dead, dead=True)
    out = await forwarder.service._rpc_stop(client, {"keep": keep})
    assert out["stopped"] == 3 and all(keep not in a.node.counters for a in copies)
    assert [f["host_id"] for f in out["failed"]] == [dead.node_id.hex()]
    with pytest.raises(CommandError) as err:
        stopped(args, out)  # type: ignore[arg-type]
    assert "3 of 4" in str(err.value) and len(str(err.value).splitlines()) == 1


def _two_copies_and_a_forwarder() -> tuple[str, list[Any], Any, Any]:
    """A keep placed with replicas = 2 (epoch 1 on both copies, as `keeps` lists it), on
    agents 0 and 1 of four; agent 3 holds no copy and forwards."""
    net = Net(4, seed=11)
    d = deployment("rep", placement={"replicas": 2, "labels": {}})
    keep = deployment_id(d)
    net.deployments[keep] = d
    agents = _agents(net)
    copies, forwarder = agents[:2], agents[3]
    rows = [Location(keep=keep, host_id=a.node_id, host=a.address, epoch=1,
                     state="running", owner=d.owner_key) for a in copies]
    for a in agents:
        a.service.machine = SimpleNamespace(known=lambda: rows)  # type: ignore[assignment]
    for a in copies:
        a.node.counters[keep] = 0
    client = _client(net, keep)
    return keep, copies, forwarder, client


async def test_a_replicated_keeps_epoch_is_checked_like_a_tracked_keeps(
        autojump_clock: trio.testing.MockClock) -> None:
    """A replicated keep (placement only, migration does not track it) runs at epoch 1
    on every copy, as `keeps` lists it; its copies used to serve any `epoch` a client
    sent, a stale 0 or an unproven 7. Now: stale is `stale_epoch` (at once, through a
    forwarder too: no re-resolving backoff), unproven newer is `invalid`, nothing served."""
    keep, copies, forwarder, client = _two_copies_and_a_forwarder()
    body = {"keep": keep, "message": b"inc"}
    for entry in (copies[0], forwarder):
        await entry.service._rpc_call(client, dict(body, epoch=1))
    assert sum(a.node.counters[keep] for a in copies) == 2
    for entry in (copies[0], forwarder):
        t0 = trio.current_time()
        with pytest.raises(StaleEpoch) as err:
            await entry.service._rpc_call(client, dict(body, epoch=0))
        assert error_code(err.value) == "stale_epoch" and trio.current_time() - t0 < 0.1
        with pytest.raises(ProtocolError) as err:
            await entry.service._rpc_call(client, dict(body, epoch=7))
        assert error_code(err.value) == "invalid"
    assert sum(a.node.counters[keep] for a in copies) == 2


async def test_a_second_stop_does_not_count_copies_that_had_already_ended(
        autojump_clock: trio.testing.MockClock) -> None:
    """Within the gossip window after a stop, placement still lists the copies as
    running; a second stop through a forwarder used to count them again (`stopped: 2`,
    `keep ID: stopped (2 copies)`). A copy that had already ended is not counted, here
    or elsewhere: the answer is {keep, state}, as for a local copy that had ended."""
    keep, copies, forwarder, client = _two_copies_and_a_forwarder()
    out = await forwarder.service._rpc_stop(client, {"keep": keep})
    assert out["stopped"] == 2 and out["failed"] == []
    for entry in (forwarder, copies[0]):
        again = await entry.service._rpc_stop(client, {"keep": keep})
        assert again == {"keep": keep, "state": "stopped"}


async def test_logs_through_any_agent_come_from_the_copy_a_call_reaches(
        autojump_clock: trio.testing.MockClock) -> None:
    """`keepmesh logs ID --agent ANY`: keeps.logs used to answer `not_found` at every
    agent but the keep's host, though call and stop were forwarded. It is forwarded like
    call (to the current epoch's host, naming the owner the forwarder authenticated) and
    the answer says which copy answered; a stranger still learns nothing."""
    net, keep, agents, old, new = _moved()
    forwarder = next(a for a in agents if a is not old and a is not new)
    client = _client(net, keep)
    for entry in (new, forwarder, old):  # old ran it at epoch 1, its copy ended there
        out = await entry.methods["keeps.logs"](client, {"keep": keep[:12], "tail": 5})
        assert out["keep"] == keep and out["host_id"] == new.node_id.hex(), entry.node.name
        assert out["host"] == new.address and out["lines"][0]["line"] == f"on {new.node.name}"
    stranger = SimpleNamespace(role="client", peer_key=b"\x07" * 32)
    for entry in (new, forwarder):
        with pytest.raises(ProtocolError) as err:
            await entry.methods["keeps.logs"](stranger, {"keep": keep})
        assert error_code(err.value) == "not_found"
    # a request from an agent must name the keep's owner (a forwarder vouches for it)
    peer = SimpleNamespace(role="agent", peer_key=forwarder.node_id)
    for body in ({"keep": keep}, {"keep": keep, "owner": b"\x07" * 32}):
        with pytest.raises(ProtocolError) as err:
            await new.methods["keeps.logs"](peer, body)
        assert error_code(err.value) == "not_found"
    # a client names no owner, epoch or location: unknown fields, as for any method
    with pytest.raises(ProtocolError) as err:
        await forwarder.methods["keeps.logs"](client, {"keep": keep, "owner": b"x"})
    assert error_code(err.value) == "invalid"


async def test_logs_of_a_moving_keep_are_stale_epoch_not_a_wait(
        autojump_clock: trio.testing.MockClock) -> None:
    """The host is dead in the forwarder's view and a standby is taking over: nothing is
    sent to the dead host, the forwarder re-resolves (0.3, 0.6, 1.2 s), then answers
    `stale_epoch` (the CLI retries), as keeps.call does."""
    net, keep, host, _, forwarder = _hosted()
    dead = forwarder.link(host, dead=True)
    _dies(net, host, forwarder)
    start = trio.current_time()
    with pytest.raises(StaleEpoch) as err:
        await forwarder.methods["keeps.logs"](_client(net, keep), {"keep": keep})
    assert error_code(err.value) == "stale_epoch"
    assert dead.calls == 0 and trio.current_time() - start < 3.0 < FORWARD_TIMEOUT_S


async def test_logs_of_a_replicated_keep_come_from_the_copy_a_call_reaches(
        autojump_clock: trio.testing.MockClock) -> None:
    """Each copy has its own log: through a forwarder the copy a call reaches answers
    (one on a live host), and says so; through a copy, that copy answers."""
    keep, copies, forwarder, client = _two_copies_and_a_forwarder()
    await forwarder.service._rpc_call(client, {"keep": keep, "message": b"inc"})
    called = next(a for a in copies if a.node.counters[keep] == 1)
    out = await forwarder.methods["keeps.logs"](client, {"keep": keep})
    assert out["host_id"] == called.node_id.hex()
    other = next(a for a in copies if a is not called)
    assert (await other.methods["keeps.logs"](client, {"keep": keep}))["host_id"] == \
        other.node_id.hex()
    for a in (forwarder, other):  # the copy's host dies: the live one answers at once
        a.members.state[called.node_id] = MemberState.DEAD
    forwarder.link(called, dead=True)
    out = await forwarder.methods["keeps.logs"](client, {"keep": keep})
    assert out["host_id"] == other.node_id.hex()
    assert forwarder.sessions[called.node_id].calls == 0


async def test_place_refuses_an_unknown_field() -> None:
    """keeps.place names a field it does not know `invalid`, as every method does
    (specs/wire.md): a misspelt option used to be ignored and the keep placed anyway."""
    net = Net(2)
    entry = Agent(net, net.nodes[0])
    d = deployment("placed")
    owner = SimpleNamespace(role="client", peer_key=d.owner_key)
    with pytest.raises(ProtocolError, match="keeps.place: unknown field 'replica'") as err:
        await entry.methods["keeps.place"](owner, {"deployment": d.to_fields(), "replica": 2})
    assert error_code(err.value) == "invalid"
