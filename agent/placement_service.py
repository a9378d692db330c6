"""Placement over the agent: RPCs that hand requests to the MeshNode's PlacementMachine
and route keep commands to wherever a keep runs. Decides nothing itself.

- `keeps.place` (the owner or an operator, at any agent): the signed
  deployment's requirements go to `Deploy`; the answer is the hosts that
  reserved a lease (PlacementDone) or one line saying what could not be met.
  The entry never sees the package or its key: the owner's CLI then attests
  each host itself (fresh evidence, its own nonce, the deployment's policy),
  seals the key to that host and ships with the lease (`keeps.deploy`).
- `keeps.deploy` (wrapping KeepService's): commits the lease (or, for a
  deploy straight to this agent, reserves and commits at once) *before* the
  keep starts, so this agent's lease table is the only authority on its
  capacity; a keep that fails to start gives its lease back.
- `keeps.list`, `keeps.call`, `keeps.logs`, `keeps.stop`: local keeps as before;
  keeps elsewhere are found in the node's location view and the command is
  forwarded to their host over the attested agent session (the host checks
  the owner named by the forwarding agent: attested agents run the measured
  image and vouch for the client they authenticated).

One location view: for a keep migration tracks, its signed record (host,
epoch, standbys) is the answer, and placement's own statements about that
keep are not consulted; placement's gossiped statements answer for the rest
(replicated keeps, keeps not yet reported by their host). A call carries
the keep's epoch and the signed record proving it; the host's migration
machine decides whether its copy may serve it (`Migration.admit`), and a
stale epoch comes back as `stale_epoch`, which the forwarding agent retries
after re-resolving (then the client does).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
from typing import Any

import trio
from keepmesh.agent import metrics
from keepmesh.agent.config import HostCapacity
from keepmesh.agent.keeps.runtime import is_terminal
from keepmesh.agent.keeps.service import KeepService
from keepmesh.agent.membership_service import MeshService
from keepmesh.agent.node import Agent
from keepmesh.agent.rpc import RpcContext, RpcError, call
from keepmesh.agent.session import ChannelFailed
from keepmesh.protocol.deployment import (
    CallRequest,
    Deployment,
    DeployRequest,
    KeepRequest,
    deployment_id,
    verify_deployment,
)
from keepmesh.protocol.effects import (
    Commit,
    Deploy,
    MemberDead,
    MemberLeft,
    Output,
    PlacementDone,
    PlacementFailed,
    Release,
)
from keepmesh.protocol.errors import ProtocolError
from keepmesh.protocol.membership import MemberState
from keepmesh.protocol.migration.engine import Migration
from keepmesh.protocol.migration.location import StaleEpoch
from keepmesh.protocol.migration.machine import MigrationMachine
from keepmesh.protocol.migration.messages import Location as SignedLocation
from keepmesh.protocol.node import MeshNode
from keepmesh.protocol.placement import (
    PlacementConfig,
    PlacementMachine,
    requirements_for,
)
from keepmesh.protocol.placement.messages import Location
from keepmesh.protocol.rpc import RpcDenied, RpcNotFound, RpcUnavailable, refuse_fields
from keepmesh.protocol.wire import encode_payload

# Summary fields that belong to the deployment, not to one copy (invocations, state_keys
# and secrets_serial are each copy's own, known only to its host).
DEPLOYMENT_FIELDS = ("deployment", "name", "kind", "package_digest", "stateful", "created_at",
                     "secrets", "data")

log = logging.getLogger("keepmesh.placement")

PLACE_TIMEOUT_S = 30.0
FORWARD_TIMEOUT_S = 30.0
STALE_RETRY_S = (0.3, 0.6, 1.2)  # re-resolve a moving keep before telling the client
RECONCILE_S = 2.0
MIB = 1024 * 1024


class _StaleHere(StaleEpoch):
    """The client's epoch is older than the copy here runs at: refused, not forwarded."""


class PlacementService:
    def __init__(self, agent: Agent, mesh: MeshService, keeps: KeepService,
                 capacity: HostCapacity, memory_bytes: int) -> None:
        self.agent = agent
        self.mesh = mesh
        self.keeps = keeps
        self.memory_mb = max(0, memory_bytes // MIB)
        self.max_keeps = capacity.keeps
        self.machine: PlacementMachine | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[trio.Event, list[Output]]] = {}
        # forwarded requests in flight per host: cancelled when membership says it is gone
        self._in_flight: dict[bytes, set[trio.CancelScope]] = {}
        mesh.machine_factories.append(self._build)
        mesh.on_output.append(self._on_output)
        self._local = keeps.methods()
        agent.register({"keeps.place": self._rpc_place, "keeps.deploy": self._rpc_deploy,
                        "keeps.list": self._rpc_list, "keeps.call": self._rpc_call,
                        "keeps.logs": self._rpc_logs, "keeps.stop": self._rpc_stop})
        agent.services.append(self._reconcile)

    async def _reconcile(self, nursery: trio.Nursery) -> None:
        """Report keeps that arrived or left without keeps.deploy/stop (restored at start,
        moved by migration, exited) so the lease table keeps matching what runs here."""
        while True:
            await trio.sleep(RECONCILE_S)
            node, machine = self.mesh.node, self.machine
            if node is None or machine is None:
                continue
            local = {k: v for k, v in self.keeps.manager.keeps.items()
                     if not is_terminal(str(v.status))}
            now = self.mesh.now()
            for keep_id, keep in local.items():
                if machine.leases.holds(keep_id) is None:
                    d = keep.deployment
                    try:
                        node.command(Commit(0, keep_id, self._epoch(node, keep_id),
                                            d.owner_key,
                                            max(1, -(-d.manifest.memory_limit // MIB))), now)
                    except ProtocolError as err:
                        log.warning("keep %s runs beyond this agent's capacity: %s",
                                    keep_id[:16], err.reason)
            for lease in list(machine.leases.leases.values()):
                if lease.committed and lease.keep_id not in local:
                    node.command(Release(lease.keep_id), now)
            self.mesh.flush()

    def _migration(self) -> Migration | None:
        node = self.mesh.node
        m = None if node is None else node.machine(MigrationMachine)
        return m.engine if isinstance(m, MigrationMachine) else None

    @staticmethod
    def _epoch(node: MeshNode, keep_id: str) -> int:
        """The keep's epoch here: migration's (its fencing token) when it tracks the keep."""
        m = node.machine(MigrationMachine)
        if isinstance(m, MigrationMachine):
            r = m.engine.running.get(keep_id)
            if r is not None:
                return r.epoch
            st = m.engine.starting.get(keep_id)
            if st is not None:
                return st.epoch
        return 1

    def _build(self, node: MeshNode) -> PlacementMachine:
        # Real agents answer over RPC streams on a shared, possibly busy host: wider
        # answer windows than the simulator's LAN defaults (a late answer is a refusal).
        config = PlacementConfig(probe_timeout=3.0, reserve_timeout=5.0)
        self.machine = PlacementMachine(node, random.SystemRandom(), memory_mb=self.memory_mb,
                                        max_keeps=self.max_keeps, config=config)
        return self.machine

    def _on_output(self, item: Output) -> None:
        if isinstance(item, PlacementDone | PlacementFailed):
            waiter = self._waiting.get(item.request)
            if waiter is not None:
                waiter[1].append(item)
                waiter[0].set()
        elif isinstance(item, MemberDead | MemberLeft):
            for scope in self._in_flight.get(item.node_id, ()):
                scope.cancel()  # no answer will come: do not wait FORWARD_TIMEOUT_S

    def _node(self) -> MeshNode:
        node = self.mesh.node
        if node is None or self.machine is None:
            raise ProtocolError("mesh not started yet")
        return node

    def _sees_all(self, ctx: RpcContext) -> bool:
        return ctx.peer_key in self.keeps.operator_keys

    # ------------------------------------------------------------ entry
    async def _rpc_place(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        refuse_fields("keeps.place", body, ("deployment",))
        fields = body.get("deployment")
        d = Deployment.from_fields(fields if isinstance(fields, dict) else {}, "deployment")
        if ctx.peer_key != d.owner_key and not self._sees_all(ctx):
            raise RpcDenied("keeps.place: only the deployment's owner or an operator")
        verify_deployment(d, [d.owner_key])  # signed by its owner: a broker cannot relax it
        req = requirements_for(d)
        node = self._node()
        request = next(self._ids)
        keep_id = deployment_id(d)
        done = trio.Event()
        box: list[Output] = []
        self._waiting[request] = (done, box)
        try:
            node.command(Deploy(request, keep_id, b"", req), self.mesh.now())
            self.mesh.flush()
            with trio.move_on_after(PLACE_TIMEOUT_S):
                await done.wait()
        finally:
            self._waiting.pop(request, None)
        if not box:
            metrics.count_placement("timeout")
            raise ProtocolError("placement did not finish in time")
        result = box[0]
        if isinstance(result, PlacementFailed):
            metrics.count_placement("failed")
            raise ProtocolError(result.reason)
        assert isinstance(result, PlacementDone)
        metrics.count_placement("placed")
        return {"keep": keep_id,
                "placements": [{"host": p.host, "host_id": p.host_id.hex(), "epoch": p.epoch,
                                "lease": p.lease} for p in result.placements]}

    # ------------------------------------------------------------ host
    async def _rpc_deploy(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        req = DeployRequest.from_fields(body)
        d = req.deployment
        keep_id = deployment_id(d)
        node = self._node()
        memory_mb = max(1, -(-d.manifest.memory_limit // MIB))
        assert self.machine is not None
        held = self.machine.leases.holds(keep_id)
        ours = held is None or not held.committed  # a redeploy keeps the running keep's lease
        if ours:
            # The lease is taken before anything runs; refusal is the one-line answer.
            node.command(Commit(req.lease or 0, keep_id, 1, d.owner_key, memory_mb),
                         self.mesh.now())
            self.mesh.flush()
        try:
            out: dict[str, Any] = await self._local["keeps.deploy"](ctx, body)
            return out
        except BaseException:
            if ours:
                node.command(Release(keep_id), self.mesh.now())
                self.mesh.flush()
            raise

    # ------------------------------------------------------------ routing
    def known(self) -> list[Location]:
        """The one location view: migration's signed record for every keep it tracks
        (placement's statements about those keeps are superseded), placement's for the
        rest."""
        machine = self.machine
        eng = self._migration()
        signed = {} if eng is None else {loc.keep: loc for loc in eng.locations}
        rows = [Location(keep=s.keep, host_id=s.host, host=s.address, epoch=s.epoch,
                         state="running" if s.state == "running" else "stopped",
                         owner=s.owner) for s in signed.values()]
        if machine is not None:
            rows.extend(loc for loc in machine.known() if loc.keep not in signed)
        return [self._where_host_is(loc) for loc in rows]

    def _where_host_is(self, loc: Location) -> Location:
        """`loc` at the address its host's signed membership record names now. A location
        carries the address its host had when it said so, and a host restarted elsewhere
        keeps its copies at the same epoch (so its new statement is not "newer"): without
        this, listing would show, and forwarding dial, its previous life's address."""
        members = self.mesh.membership
        view = None if members is None else members.member(loc.host_id)
        if view is None or not view.address or view.address == loc.host:
            return loc
        return dataclasses.replace(loc, host=view.address)

    def _signed(self, keep: str) -> SignedLocation | None:
        eng = self._migration()
        return None if eng is None else eng.locations.get(keep)

    def _remotes(self, keep: str) -> list[Location]:
        """Every running copy of `keep` (id or unique prefix) on another host (a
        replicated keep has several), those whose host membership holds alive first;
        none when the prefix names more than one keep."""
        node = self.mesh.node
        if node is None:
            return []
        found = [loc for loc in self.known()
                 if loc.state == "running" and loc.host_id != node.node_id
                 and (loc.keep == keep or (len(keep) >= 8 and loc.keep.startswith(keep)))]
        if len({loc.keep for loc in found}) != 1:
            return []
        found.sort(key=lambda loc: self._gone(loc.host_id) is not None)
        return found

    def _remote(self, keep: str) -> Location | None:
        """The copy of `keep` on another host a call is forwarded to, if known."""
        found = self._remotes(keep)
        return found[0] if found else None

    def _copy_state(self, loc: Location) -> str:
        """What a running location shows: `running`, unless membership holds its host
        dead or left (specs/migration.md §10: it must not read `running` there). Then
        migration's view for a keep it tracks (`moving` while a standby is live), else
        `orphaned`: nobody takes that copy over (a replicated keep's other copies run on)."""
        if self._gone(loc.host_id) is None:
            return "running"
        eng = self._migration()
        shown = None if eng is None else (eng.summary(loc.keep) or {}).get("state")
        return shown if shown in ("moving", "orphaned") else "orphaned"

    def _gone(self, host_id: bytes) -> str | None:
        """"dead" or "left" when membership holds `host_id` so, else None: a request
        forwarded there would wait FORWARD_TIMEOUT_S for an answer that cannot come."""
        members = self.mesh.membership
        view = None if members is None else members.member(host_id)
        if view is None or view.liveness not in (MemberState.DEAD, MemberState.LEFT):
            return None
        return str(view.liveness.value)

    def _host_down(self, loc: Location, why: str, *, in_flight: bool = False
                   ) -> ProtocolError:
        """The typed answer when `loc`'s host cannot take a forwarded request. Nothing
        sent and migration's view has a live standby taking the keep over: `stale_epoch`
        (the keep is moving: the forwarder re-resolves, then the client retries).
        Otherwise `unavailable`: nobody will run it again (orphaned), or the host went
        down with the request in flight, which may have been served, so no one retries
        it blindly."""
        where = f"keep {loc.keep}: its host {loc.host[:80]} is {why}"
        if in_flight:
            return RpcUnavailable(f"{where} with the request in flight (it may have been "
                                  "served)")
        eng = self._migration()
        shown = None if eng is None else (eng.summary(loc.keep) or {}).get("state")
        if shown == "moving":
            return StaleEpoch(f"{where}; a standby is taking it over")
        return RpcUnavailable(f"{where} and no other copy is known to run it")

    def _is_local(self, keep: str) -> bool:
        try:
            self.keeps.manager.get(keep)
        except (ProtocolError, KeyError):
            return False
        return True

    async def _forward(self, loc: Location, method: str, body: dict[str, Any]) -> dict[str, Any]:
        """One hop to `loc`'s host. A host membership holds dead or left is not sent
        anything, and one declared so (or whose connection closes) while the request is
        in flight ends the wait at once: `_host_down` says which typed error."""
        gone = self._gone(loc.host_id)
        if gone is not None:
            raise self._host_down(loc, gone)
        entry = self.agent.peers.get(loc.host_id)
        session = entry.session if entry is not None else None
        if session is None or session.closed.is_set():
            try:
                session = await self.agent.connect(loc.host)
            except (ChannelFailed, ProtocolError):
                raise self._host_down(loc, "unreachable") from None
            if session.peer.identity != loc.host_id:
                raise RpcNotFound(f"keep {loc.keep[:64]!r}: its host moved")
        watching = self._in_flight.setdefault(loc.host_id, set())
        scope = trio.CancelScope()
        watching.add(scope)
        try:
            with scope:
                out: dict[str, Any] = await call(session, method, body,
                                                 timeout=FORWARD_TIMEOUT_S)
                return out
        except RpcError as err:
            if err.code == "stale_epoch":
                raise StaleEpoch(str(err)) from None
            if err.code == "not_found":
                raise RpcNotFound(str(err)) from None
            if session.closed.is_set():
                raise self._host_down(loc, "disconnected", in_flight=True) from None
            raise ProtocolError(str(err)) from None
        finally:
            watching.discard(scope)
            if not watching:
                self._in_flight.pop(loc.host_id, None)
        raise self._host_down(loc, self._gone(loc.host_id) or "down", in_flight=True)

    def _admit(self, ctx: RpcContext, keep_id: str, body: dict[str, Any]) -> None:
        """Migration decides whether this host's copy may serve a message at the body's
        epoch (raises StaleEpoch / ProtocolError); its outputs (a fenced copy, our newer
        record for a stale forwarder) are carried out at once."""
        eng = self._migration()
        epoch, location = body.get("epoch"), body.get("location")
        claimed = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None
        served = None
        if eng is not None:
            src = ctx.peer_key if ctx.role == "agent" else None
            try:
                served = eng.admit(keep_id, claimed,
                                   location if isinstance(location, bytes) else None,
                                   self.mesh.now(), src)
            finally:
                self.mesh.flush()
        node = self.mesh.node
        if served is not None or claimed is None or node is None or \
                not self._is_local(keep_id) or self._stopped_here(keep_id):
            return
        # A copy migration does not track (a replicated keep's replica) runs at its
        # placement epoch, as `keeps` lists it: the same rule, stale or unproven.
        here = self._epoch(node, keep_id)
        if claimed < here:
            raise _StaleHere(f"keep {keep_id}: epoch {claimed} is stale, it runs at {here}")
        if claimed > here:
            raise ProtocolError(f"keep {keep_id}: epoch {claimed} above the running copy's "
                                f"{here} and no location record proves it")

    def _full_id(self, keep: str) -> str | None:
        try:
            return self.keeps.manager.get(keep).keep_id
        except (ProtocolError, KeyError):
            pass
        ids = {loc.keep for loc in self.known()
               if loc.keep == keep or (len(keep) >= 8 and loc.keep.startswith(keep))}
        return ids.pop() if len(ids) == 1 else None

    def _stale_claim(self, keep_id: str, claimed: int | None,
                     placed_epoch: int | None = None) -> StaleEpoch | None:
        """The refusal for a client's `claimed` epoch older than the newest signed record
        this agent knows for the keep (without one, `placed_epoch`: a replica's placement
        epoch), else None. Why here: a forwarder that sent its own epoch instead would
        have the host serve an epoch the client's view says is not current, and a stale
        epoch must be refused the same way directly or forwarded."""
        signed = self._signed(keep_id)
        known = signed.epoch if signed is not None else placed_epoch
        if claimed is None or known is None or claimed >= known:
            return None
        return StaleEpoch(f"keep {keep_id}: epoch {claimed} is stale, it runs at {known}")

    async def _forward_moving(self, ctx: RpcContext, keep_id: str, method: str,
                              body: dict[str, Any], claimed: int | None = None, *,
                              on_behalf: bool = False) -> dict[str, Any]:
        """Forward to wherever the keep runs now, with the newest signed record known
        here and the client's `claimed` epoch unchanged (ours when it gave none); a
        `stale_epoch` answer (it moved again meanwhile) is retried after re-resolving.
        `on_behalf`: the request names the owner this agent authenticated (`owner`),
        which the host checks (keeps.logs)."""
        for backoff in (*STALE_RETRY_S, None):
            loc = self._remote(keep_id)
            node = self.mesh.node
            if loc is None or node is None:
                raise StaleEpoch(f"keep {keep_id} is moving: no running copy known")
            if loc.owner and loc.owner != ctx.peer_key and not self._sees_all(ctx):
                raise RpcNotFound(f"no keep {keep_id[:64]!r} on this agent")
            stale = self._stale_claim(loc.keep, claimed, loc.epoch)
            if stale is not None:
                raise stale
            fwd = dict(body, keep=loc.keep)
            if on_behalf:
                fwd["owner"] = loc.owner or ctx.peer_key
            signed = self._signed(loc.keep)
            if signed is not None and signed.host == loc.host_id:
                fwd.update(epoch=signed.epoch if claimed is None else claimed,
                           location=encode_payload(signed))
            try:
                return await self._forward(loc, method, fwd)
            except StaleEpoch:
                if backoff is None:
                    raise
                await trio.sleep(backoff)
        raise AssertionError("unreachable")

    async def _rpc_call(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        req = CallRequest.from_fields(body)  # typed and bounded before it is forwarded
        keep_id = self._full_id(req.keep)
        if keep_id is not None:
            try:
                self._admit(ctx, keep_id, body)
            except StaleEpoch as err:
                # One hop at most (the forwarder re-resolves); a client's own stale
                # epoch is refused here, as its host would, never served elsewhere.
                if ctx.role == "agent" or isinstance(err, _StaleHere) or \
                        self._stale_claim(keep_id, req.epoch) is not None:
                    raise
                return await self._forward_moving(ctx, keep_id, "keeps.call", body,
                                                  req.epoch)
            if not self._is_local(keep_id) or self._stopped_here(keep_id):
                if ctx.role != "agent" and self._remote(keep_id) is not None:
                    return await self._forward_moving(ctx, keep_id, "keeps.call", body,
                                                      req.epoch)
        out: dict[str, Any] = await self._local["keeps.call"](ctx, body)
        return out

    async def _rpc_logs(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        """A keep's logs from any agent, routed as keeps.call is: this agent's copy when
        it runs the keep's current epoch here, else forwarded one hop to the copy call
        would reach (a replicated keep's: one on a live host), with the same answers for
        a host that is gone (`unavailable` at once, `stale_epoch` while it moves). The
        answer names the copy that answered (`host`, `host_id`): each copy has its own
        log. A forwarded request (an agent caller) names the owner the forwarder
        authenticated; the host checks it and answers from its own copy only."""
        if ctx.role == "agent":
            return self._logs_for_forwarder(ctx, body)
        req = KeepRequest.from_fields(body)  # typed and bounded before it is forwarded
        keep_id = self._full_id(req.keep)
        if keep_id is not None:
            try:
                self._admit(ctx, keep_id, {})
            except StaleEpoch:  # the keep runs, or is about to, at another host
                return await self._forward_moving(ctx, keep_id, "keeps.logs", body,
                                                  on_behalf=True)
            if (not self._is_local(keep_id) or self._stopped_here(keep_id)) and \
                    self._remote(keep_id) is not None:
                return await self._forward_moving(ctx, keep_id, "keeps.logs", body,
                                                  on_behalf=True)
        return self._answered_here(await self._local["keeps.logs"](ctx, body))

    def _logs_for_forwarder(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        body = dict(body)
        on_behalf = body.pop("owner", None)
        fence = {"epoch": body.pop("epoch", None), "location": body.pop("location", None)}
        req = KeepRequest.from_fields(body)
        if not self._is_local(req.keep):
            raise RpcNotFound(f"no keep {req.keep[:64]!r} on this agent")
        keep = self.keeps.manager.get(req.keep)
        if not isinstance(on_behalf, bytes) or keep.deployment.owner_key != on_behalf:
            raise RpcNotFound(f"no keep {req.keep[:64]!r} on this agent")
        self._admit(ctx, keep.keep_id, fence)  # moved on: stale_epoch, the forwarder re-resolves
        return self._answered_here(self.keeps.log_reply(keep, req))

    def _answered_here(self, out: dict[str, Any]) -> dict[str, Any]:
        node = self.mesh.node
        if node is None:
            return out
        return dict(out, host=node.address, host_id=node.node_id.hex())

    def _stopped_here(self, keep_id: str) -> bool:
        keep = self.keeps.manager.keeps.get(keep_id)
        return keep is not None and is_terminal(str(keep.status))

    async def _rpc_stop(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        """A client's stop ends every copy of the keep: this agent's and, forwarded one
        hop, each other host's that runs it (a replicated keep's replicas), so `stop`
        from any agent means the keep stops, as `keeps` lists it. The answer counts the
        copies stopped (`stopped`, `copies`) and names those that could not be
        (`failed`); when none could, the first refusal is the answer. A copy here that
        had already ended (the keep moved away) is not counted, and alone is answered as
        before, as is one elsewhere (its host answers `stopped: 0`). A forwarded stop (an
        agent caller) ends this host's copy only."""
        body = dict(body)
        on_behalf = body.pop("owner", None)
        req = KeepRequest.from_fields(body)
        node = self.mesh.node
        copies: list[dict[str, Any]] = []
        local: dict[str, Any] | None = None
        keep_id = req.keep
        if self._is_local(req.keep):
            keep = self.keeps.manager.get(req.keep)
            ran = not self._stopped_here(keep.keep_id)
            if ctx.role == "agent" and isinstance(on_behalf, bytes) and \
                    keep.deployment.owner_key == on_behalf:
                status = await self.keeps.manager.stop(keep.keep_id)
                result = {"keep": keep.keep_id, "state": status}
            else:
                result = dict(await self._local["keeps.stop"](ctx, body))
            self._node().command(Release(keep.keep_id), self.mesh.now())
            self.mesh.flush()
            if ctx.role == "agent":
                # tells the forwarder not to count a copy that had already ended
                return result if ran else dict(result, stopped=0)
            keep_id, local = keep.keep_id, result
            if ran and node is not None:
                copies.append({"host": node.address, "host_id": node.node_id.hex(),
                               "state": result.get("state")})
        remotes = [] if ctx.role == "agent" else [
            loc for loc in self._remotes(keep_id)
            if loc.owner == ctx.peer_key or self._sees_all(ctx)]
        if local is None and not remotes:
            raise RpcNotFound(f"no keep {req.keep[:64]!r} on this agent")
        failed: list[tuple[Location, ProtocolError]] = []
        ended: dict[str, Any] | None = None  # a remote copy that had already ended
        for loc in remotes:
            try:
                out = await self._forward(loc, "keeps.stop",
                                          {"keep": loc.keep, "owner": loc.owner})
            except ProtocolError as err:
                failed.append((loc, err))
                continue
            state = out.get("state")  # the host's answer: shown, so a bounded string
            if out.get("stopped") == 0:
                ended = ended or {"keep": loc.keep,
                                  "state": state[:200] if isinstance(state, str) else None}
                continue
            copies.append({"host": loc.host, "host_id": loc.host_id.hex(),
                           "state": state[:200] if isinstance(state, str) else None})
        if not copies:
            if failed:
                raise failed[0][1]
            answer = local or ended
            assert answer is not None
            return answer
        return {"keep": remotes[0].keep if remotes else keep_id,
                "state": copies[0]["state"], "stopped": len(copies), "copies": copies,
                "failed": [{"host": loc.host, "host_id": loc.host_id.hex(),
                            "reason": err.reason} for loc, err in failed]}

    async def _rpc_list(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        local = await self._local["keeps.list"](ctx, body)
        node = self.mesh.node
        rows: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for row in local.get("keeps", []):
            row = dict(row)
            if node is not None:
                row.setdefault("host", node.address)
                row.setdefault("host_id", node.node_id.hex())
                row.setdefault("epoch", self._epoch(node, str(row.get("keep", ""))))
            rows.append(row)
            seen.add((row.get("keep", ""), row.get("host_id", "")))
        machine = self.machine
        everything = self._sees_all(ctx) or ctx.role == "agent"
        # A copy held here (a replicated keep's) tells what every copy of the keep is: same
        # id, same signed deployment, so remote rows show its name and kind like local ones.
        held = {str(row.get("keep")): row for row in rows}
        if machine is not None:
            for loc in self.known():
                if loc.state != "running" or (loc.keep, loc.host_id.hex()) in seen:
                    continue
                if not everything and loc.owner != ctx.peer_key:
                    continue
                same = held.get(loc.keep, {})
                rows.append({f: same[f] for f in DEPLOYMENT_FIELDS if f in same}
                            | {"keep": loc.keep, "state": self._copy_state(loc),
                               "host": loc.host,
                               "host_id": loc.host_id.hex(), "epoch": loc.epoch,
                               "owner": loc.owner.hex(), "remote": True})
        return {"keeps": rows}
