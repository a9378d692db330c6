"""RPC handlers for keeps: the agent side of deploy/keeps/logs/call/stop.

Why authorisation lives here: the transport tells us *who* is calling (an
authenticated Ed25519 key and a role); which keeps that caller may see or
touch is a keeps decision. An owner sees and controls its own keeps, an
operator key sees all, and peer agents may deploy (placement, migration:
the deployment signature and sealing are checked regardless) and deliver
messages. Unknown and foreign keeps get the same answer, so a caller cannot
probe which workloads exist.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any, Protocol

import trio
from keepmesh.protocol.deployment import CallRequest, DeployRequest, KeepRequest, ListRequest
from keepmesh.protocol.errors import ProtocolError
from keepmesh.protocol.rpc import RpcDenied, RpcNotFound
from keepmesh.protocol.secrets import SecretSetRequest

from .manager import Keep, KeepManager
from .runtime import KeepError

DEFAULT_WAIT_MS = 5000
MAX_WAIT_MS = 60_000


class RpcContext(Protocol):
    """What the transport tells a handler about the caller (agent/rpc.py defines the real one)."""

    @property
    def peer_key(self) -> bytes: ...

    @property
    def role(self) -> str: ...


Handler = Callable[[RpcContext, dict[str, Any]], Awaitable[dict[str, Any]]]


class KeepService:
    def __init__(self, data_dir: Path, owner_keys: list[bytes], identity_private_key: bytes,
                 log: logging.Logger | None = None, *,
                 operator_keys: Collection[bytes] = (),
                 outbound: Callable[[str, str, bytes], bool] | None = None) -> None:
        self.log = log or logging.getLogger("keepmesh.keeps")
        self.manager = KeepManager(data_dir, owner_keys, identity_private_key, self.log,
                                   outbound=outbound)
        self.operator_keys = {bytes(k) for k in operator_keys}

    def methods(self) -> dict[str, Handler]:
        return {
            "keeps.deploy": self.deploy,
            "keeps.list": self.list,
            "keeps.logs": self.logs,
            "keeps.call": self.call,
            "keeps.stop": self.stop,
            "keeps.secret_set": self.secret_set,
        }

    async def start(self) -> None:
        restored = await self.manager.restore_and_start()
        if restored:
            self.log.info("restored %d keeps", len(restored))

    async def aclose(self) -> None:
        await self.manager.aclose()

    # ------------------------------------------------------------ access
    def _sees_all(self, ctx: RpcContext) -> bool:
        return ctx.peer_key in self.operator_keys

    def _keep_for(self, ctx: RpcContext, keep_id: str, *, agents_ok: bool = False) -> Keep:
        keep = self.manager.get(keep_id)
        if (self._sees_all(ctx) or keep.deployment.owner_key == ctx.peer_key
                or (agents_ok and ctx.role == "agent")):
            return keep
        raise RpcNotFound(f"no keep {keep_id[:64]!r} on this agent")

    # ------------------------------------------------------------ handlers
    async def deploy(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        req = DeployRequest.from_fields(body)
        d = req.deployment
        if ctx.role != "agent" and ctx.peer_key != d.owner_key and not self._sees_all(ctx):
            raise RpcDenied("deployment must be submitted by its owner, an operator "
                                "or a peer agent")
        wait = min(req.wait_ms if req.wait_ms is not None else DEFAULT_WAIT_MS, MAX_WAIT_MS)
        keep = await self.manager.deploy(d, req.package, wait / 1000.0)
        return keep.summary()

    async def list(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        ListRequest.from_fields(body)
        everything = self._sees_all(ctx) or ctx.role == "agent"
        mine = ctx.peer_key.hex()
        keeps = [k for k in self.manager.list_keeps() if everything or k["owner"] == mine]
        return {"keeps": keeps}

    async def logs(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        req = KeepRequest.from_fields(body)
        return self.log_reply(self._keep_for(ctx, req.keep), req)

    def log_reply(self, keep: Keep, req: KeepRequest) -> dict[str, Any]:
        """keeps.logs' answer for `keep`, whose caller was already checked (here, or by
        the agent that forwarded the request on its owner's behalf)."""
        entries = keep.ctx.logs.entries(req.tail, req.after)
        lines: list[dict[str, Any]] = []
        for seq, at, stream, line in entries:
            item: dict[str, Any] = {"stream": stream, "line": line, "seq": seq}
            if at is not None:
                item["time"] = at
            lines.append(item)
        return {"keep": keep.keep_id, "state": keep.status, "lines": lines,
                "seq": keep.ctx.logs.seq}

    async def call(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        req = CallRequest.from_fields(body)
        keep = self._keep_for(ctx, req.keep, agents_ok=True)
        try:
            reply = await self.manager.call(keep.keep_id, req.message)
        except KeepError as err:
            raise ProtocolError(f"keep {keep.keep_id}: {err.status}") from None
        return {"keep": keep.keep_id, "reply": reply, "state": keep.status}

    async def stop(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        req = KeepRequest.from_fields(body)
        keep = self._keep_for(ctx, req.keep)
        status = await self.manager.stop(keep.keep_id)
        return {"keep": keep.keep_id, "state": status}

    async def secret_set(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        """Rotate one secret. The owner's signature is the authority; peer agents may
        forward the (encrypted, self-authenticating) update to the keep's host."""
        req = SecretSetRequest.from_fields(body)
        keep = self._keep_for(ctx, req.update.keep, agents_ok=True)
        # Off the event loop: the rotation is persisted with fsyncs before it takes effect.
        serial = await trio.to_thread.run_sync(self.manager.set_secret, req.update)
        return {"keep": keep.keep_id, "name": req.update.name, "serial": serial}
