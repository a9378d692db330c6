"""Migration as a MeshNode sub-machine (prefix b"migrate.", TimerKind.MIGRATION).

Why an adapter: `Migration` speaks in member ids and typed messages; MeshNode's
drivers carry out `protocol.effects.Send(dst address, bytes, reliable, dst_id)`
and observe typed member events. This maps one to the other and nothing else:
membership events become the engine's liveness view, `Drain` becomes a
hand-over of every keep, migrate.* bytes are routed in, and every engine
output goes out unchanged except its sends, which are addressed through the
node's membership view (or the address a location record gives).
"""

from __future__ import annotations

from collections.abc import Collection

from ..deployment import Deployment
from ..effects import (
    Commit,
    Drain,
    MemberAlive,
    MemberDead,
    MemberEvent,
    MemberJoined,
    MemberLeft,
    MemberSuspected,
    MemberUntrusted,
    MemberUpdated,
    Output,
    Send,
    TimerKind,
)
from ..errors import ProtocolError
from ..membership import MemberState
from ..node import MeshNode
from ..placement.leases import Refused
from ..placement.machine import PlacementMachine
from ..placement.requirements import requirements_for
from ..wire import encode_payload
from . import effects as fx
from .engine import REFRESH_S, Migration

_LIVE = (MemberJoined, MemberAlive, MemberUpdated, MemberSuspected)
_GONE = (MemberDead, MemberLeft)
STANDBY_HOLD_S = 3 * REFRESH_S
"""A standby's capacity hold outlives two missed renewals (renewed every REFRESH_S)."""
PRUNE_S = REFRESH_S
"""How often members declared dead or left are checked for having been reaped."""


class PlacementLink:
    """Standbys chosen and held by placement (engine.StandbyPlacement).

    Why: a standby is a promise to run the keep, so it is chosen among the hosts
    placement would pick for the deployment (alive, claims meeting the signed
    policy, labels, advertised room) and the standby's own lease table, the only
    authority on its capacity, holds room for it: a reservation renewed while it
    stays a standby, committed when it takes over, released when it stops being one.
    A standby whose table has no room refuses the replicate and the host moves on.
    """

    def __init__(self, node: MeshNode, placement: PlacementMachine) -> None:
        self.node = node
        self.placement = placement

    def hosts_for(self, deployment: Deployment, now: float) -> Collection[bytes]:
        req = requirements_for(deployment)
        return {v.node_id for v in self.node.members()
                if v.state is MemberState.ALIVE and req.claims_ok(v) and req.labels_ok(v)
                and req.room_ok(v)}

    def hold(self, keep: str, deployment: Deployment, now: float) -> str | None:
        leases = self.placement.leases
        held = leases.holds(keep)
        if held is not None:
            if not held.committed:
                held.expires_at = now + STANDBY_HOLD_S
            return None
        memory_mb = requirements_for(deployment).memory_mb
        try:
            leases.reserve(keep, memory_mb, now, STANDBY_HOLD_S)
        except Refused as err:
            return err.reason
        return None

    def release(self, keep: str, now: float) -> None:
        held = self.placement.leases.holds(keep)
        if held is not None and not held.committed:
            self.placement.leases.release(held.lease_id)

    def promote(self, keep: str, epoch: int, deployment: Deployment, now: float) -> None:
        held = self.placement.leases.holds(keep)
        if held is not None and held.committed:
            return
        memory_mb = requirements_for(deployment).memory_mb
        try:
            # through placement's command, so its location statement is made as for any
            # committed keep; lease 0 reserves now when the hold expired meanwhile
            live = held is not None and held.expires_at is not None and held.expires_at > now
            self.placement.command(Commit(held.lease_id if live and held else 0, keep,
                                          epoch, deployment.owner_key, memory_mb), now)
        except ProtocolError:
            pass  # runs beyond this host's free capacity: the keep runs, counted nowhere


class MigrationMachine:
    """SubMachine: see module docstring."""

    prefix = b"migrate."
    timer_kind = TimerKind.MIGRATION

    def __init__(self, node: MeshNode, engine: Migration) -> None:
        self.node = node
        self.engine = engine
        placement = node.machine(PlacementMachine)
        if isinstance(placement, PlacementMachine) and engine.placement is None:
            engine.placement = PlacementLink(node, placement)
            placement.located_elsewhere = self._tracked
        # members declared dead or left: forgotten by the engine once membership reaped them
        # (it sends no event then), so per-member state lasts as long as membership's own
        self._gone: set[bytes] = set()
        self._next_prune = 0.0
        self.unaddressed = 0  # sends to a member whose address nobody knows (dropped)

    def _tracked(self, keep: str) -> bool:
        """Migration spreads this keep's location (signed, with epoch and standbys)."""
        return self.engine.locations.get(keep) is not None or keep in self.engine.running \
            or keep in self.engine.starting

    def receive(self, data: bytes, src: str, src_id: bytes | None, now: float) -> None:
        self.engine.receive(data, src_id, now)

    def handle_timer(self, now: float) -> None:
        self.engine.handle_timer(now)
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_S
            self.prune(now)

    def prune(self, now: float) -> None:
        """Forget members membership reaped (dead or left past its dead_reclaim_s): their
        liveness and evidence in the engine's view. Costs the members gone, not all."""
        for node in [n for n in self._gone if self.node.member(n) is None]:
            self._gone.discard(node)
            self.engine.forget_member(node)

    def get_timer(self) -> float | None:
        return self.engine.get_timer()

    def command(self, cmd: object, now: float) -> bool:
        if isinstance(cmd, Drain):
            self.engine.drain(now)
            return True
        return self.engine.command(cmd, now)

    def complete(self, result: object, now: float) -> bool:
        return self.engine.complete(result, now)

    def on_member_event(self, event: MemberEvent, now: float) -> None:
        node = event.node_id
        if node == self.engine.own_id:
            return
        if isinstance(event, _LIVE):
            # a join of a member some record names as host is a rejoin (it ran keeps here
            # before: it is sent those records); O(1), and nothing kept per member seen
            rejoined = isinstance(event, MemberJoined) and \
                self.engine.locations.address_of(node) is not None
            self._gone.discard(node)
            self.engine.member_state(node, True, now, rejoined=rejoined)
        elif isinstance(event, _GONE):
            self._gone.add(node)
            self.engine.member_state(node, False, now)
        elif isinstance(event, MemberUntrusted):
            self.engine.member_evidence(node, None, now)

    def sync_view(self, now: float) -> None:
        """Read liveness of every member from the node's view once (after a warm start
        that primed the member table without events)."""
        for m in self.node.members():
            if m.node_id != self.engine.own_id:
                live = m.liveness.value in ("alive", "suspect")
                if live:
                    self._gone.discard(m.node_id)
                else:
                    self._gone.add(m.node_id)
                self.engine.member_state(m.node_id, live, now)

    def next_output(self) -> Output | None:
        while True:
            item = self.engine.next_output()
            if not isinstance(item, fx.Send):
                return item
            address = self._address(item.to)
            if address is None:
                self.unaddressed += 1
                continue
            return Send(address, encode_payload(item.message), True, item.to, ordered=True)

    def _address(self, node: bytes) -> str | None:
        view = self.node.member(node)
        if view is not None:
            return view.address
        return self.engine.locations.address_of(node)
