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

from ..effects import (
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
from ..node import MeshNode
from ..wire import encode_payload
from . import effects as fx
from .engine import Migration

_LIVE = (MemberJoined, MemberAlive, MemberUpdated, MemberSuspected)
_GONE = (MemberDead, MemberLeft)


class MigrationMachine:
    """SubMachine: see module docstring."""

    prefix = b"migrate."
    timer_kind = TimerKind.MIGRATION

    def __init__(self, node: MeshNode, engine: Migration) -> None:
        self.node = node
        self.engine = engine
        self._seen: set[bytes] = set()
        self.unaddressed = 0  # sends to a member whose address nobody knows (dropped)

    def receive(self, data: bytes, src: str, src_id: bytes | None, now: float) -> None:
        self.engine.receive(data, src_id, now)

    def handle_timer(self, now: float) -> None:
        self.engine.handle_timer(now)

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
            rejoined = isinstance(event, MemberJoined) and node in self._seen
            self._seen.add(node)
            self.engine.member_state(node, True, now, rejoined=rejoined)
        elif isinstance(event, _GONE):
            self.engine.member_state(node, False, now)
        elif isinstance(event, MemberUntrusted):
            self.engine.member_evidence(node, None, now)

    def sync_view(self, now: float) -> None:
        """Read liveness of every member from the node's view once (after a warm start
        that primed the member table without events)."""
        for m in self.node.members():
            if m.node_id != self.engine.own_id:
                self._seen.add(m.node_id)
                self.engine.member_state(m.node_id, m.liveness.value in ("alive", "suspect"),
                                         now)

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
        for loc in self.engine.locations.hosted_by(node):
            return loc.address
        return None
