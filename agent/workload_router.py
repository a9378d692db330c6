"""Messages between workloads on different agents: addressed to a workload id, not a host.

A keep's `send` reaches the KeepManager's router on the keep's worker thread.
Local targets are delivered there; for any other id this module queues the
message (non-blocking, bounded) and a trio task finds the agent that runs the
target by asking attested agent peers (`keeps.deliver`), remembering where it
was found. When the workload moves (placement, migration) the cached location
stops answering and the next message asks everyone again, so senders never
need to know hosts. Delivery is best-effort, like a datagram: the inbox is
bounded and a full queue drops.

Epochs (specs/migration.md §3): with `epochs` (the agent's MigrationService) a
delivery carries the target's epoch and signed location record as this agent
knows them, and the receiving host delivers only if migration admits them
for its copy (a stale epoch answers `stale_epoch` and the sender tries the
next agent; a record proving a newer epoch fences the copy it reaches).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Protocol

import trio
from keepmesh.agent.keeps.hostapi import MAX_HOST_MESSAGE
from keepmesh.agent.node import Agent
from keepmesh.agent.rpc import RpcContext, RpcError, call
from keepmesh.agent.session import Session
from keepmesh.protocol.errors import ProtocolError

log = logging.getLogger("keepmesh.keeps.router")

QUEUE_LIMIT = 1024


class KeepEpochs(Protocol):
    """What the router needs from migration (agent/migration_service.py)."""

    def keep_epoch(self, keep: str) -> tuple[int, bytes] | None: ...

    def admit(self, keep: str, epoch: int | None, location: bytes | None,
              src: bytes | None) -> None: ...

WORKLOAD_ID = re.compile(r"^[0-9a-f]{32}\Z")  # \Z: "$" allows a final newline


class WorkloadRouter:
    def __init__(self, agent: Agent, service: Any, epochs: KeepEpochs | None = None) -> None:
        self.agent = agent
        self.service = service
        self.epochs = epochs
        self._send, self._recv = trio.open_memory_channel[tuple[str, str, bytes]](QUEUE_LIMIT)
        self._token: trio.lowlevel.TrioToken | None = None
        self._where: dict[str, bytes] = {}  # workload id -> identity of the agent running it
        self.dropped = 0
        service.manager.outbound = self.outbound
        agent.register({"keeps.deliver": self._rpc_deliver})
        agent.services.append(self.run)

    def outbound(self, sender: str, target: str, message: bytes) -> bool:
        """Called on a keep's worker thread for a workload that is not local."""
        if self._token is None:
            return False
        try:
            trio.from_thread.run_sync(self._send.send_nowait, (sender, target, message),
                                      trio_token=self._token)
        except (trio.WouldBlock, trio.RunFinishedError):
            self.dropped += 1
            return False
        return True

    async def run(self, nursery: trio.Nursery) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async for sender, target, message in self._recv:
            if not await self._forward(sender, target, message):
                self.dropped += 1
                log.info("no agent runs workload %s; message from %s dropped", target, sender)

    def _sessions(self) -> list[Session]:
        return [p.session for p in self.agent.peers.values()
                if p.session is not None and not p.session.closed.is_set()]

    async def _forward(self, sender: str, target: str, message: bytes) -> bool:
        body: dict[str, Any] = {"sender": sender, "target": target, "message": message}
        known = self.epochs.keep_epoch(target) if self.epochs is not None else None
        if known is not None:
            body["epoch"], body["location"] = known
        sessions = self._sessions()
        cached = self._where.get(target)
        sessions.sort(key=lambda s: s.peer.identity != cached)  # the cached location first
        for session in sessions:
            try:
                reply = await call(session, "keeps.deliver", body, timeout=5)
            except RpcError:
                continue
            if reply.get("delivered") is True:
                self._where[target] = session.peer.identity
                return True
        self._where.pop(target, None)
        return False

    async def _rpc_deliver(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        if ctx.role != "agent":
            raise ProtocolError("keeps.deliver: agents only")
        sender, target, message = body.get("sender"), body.get("target"), body.get("message")
        if not isinstance(sender, str) or not WORKLOAD_ID.match(sender) or \
                not isinstance(target, str) or not WORKLOAD_ID.match(target):
            raise ProtocolError("keeps.deliver: sender and target must be workload ids")
        if not isinstance(message, bytes) or len(message) > MAX_HOST_MESSAGE:
            raise ProtocolError(f"keeps.deliver: message must be bytes up to {MAX_HOST_MESSAGE}")
        epoch, location = body.get("epoch"), body.get("location")
        if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool)
                                  or not 0 <= epoch < 1 << 63):
            raise ProtocolError("keeps.deliver: epoch must be an unsigned 63-bit int")
        if location is not None and (not isinstance(location, bytes) or len(location) > 4096):
            raise ProtocolError("keeps.deliver: location must be bytes up to 4096")
        if self.epochs is not None:
            self.epochs.admit(target, epoch, location, ctx.peer_key)  # StaleEpoch: not here
        keep = self.service.manager.keeps.get(target)
        # Never forward again from here: a message travels at most one hop.
        return {"delivered": bool(keep is not None and keep.ctx.deliver(message))}
