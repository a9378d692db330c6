"""KeepManager: admits signed deployments, runs keeps off the trio thread, persists them.

Why the manager and not the RPC layer checks everything: placement and
migration (other agents) reach keeps through the same door as the CLI, so
signature, owner admission, replay, sealing and package digest are checked
here once, before a byte is written to disk or a module compiled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import trio
from keepmesh.protocol.deployment import (
    Deployment,
    SealedPackage,
    check_package,
    deployment_id,
    deployment_signing_bytes,
    verify_deployment,
)
from keepmesh.protocol.errors import ProtocolError, VerificationError
from keepmesh.protocol.secrets import SecretUpdate

from .hostapi import HostContext, LogBuffer
from .inputs import KeepInputs, parse_record
from .package import PackageError, module_binary
from .runtime import KeepError, KeepRuntime, is_terminal
from .sealing import open_package, seal_package
from .store import KeepStore, KVState, StateError, export_checkpoint, import_checkpoint

MAX_KEEPS = 256
LOG_FLUSH_S = 1.0
Outbound = Callable[[str, str, bytes], bool]
"""(sender id, target workload id, message) -> accepted; for targets not on this agent."""


@dataclasses.dataclass
class Keep:
    keep_id: str
    deployment: Deployment
    deployment_key: bytes
    ctx: HostContext
    runtime: KeepRuntime | None
    status: str
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    _saved_seq: int = -1
    _saved_status: str = ""
    _saved_at: float = 0.0

    @property
    def kind(self) -> str:
        return self.runtime.kind if self.runtime is not None else "unknown"

    def summary(self) -> dict[str, Any]:
        d = self.deployment
        return {
            "keep": self.keep_id,
            "deployment": hashlib.sha256(deployment_signing_bytes(d)).hexdigest(),
            "name": d.manifest.name,
            "state": self.status,
            "kind": self.kind,
            "owner": d.owner_key.hex(),
            "package_digest": d.package_digest.hex(),
            "stateful": d.manifest.stateful,
            "created_at": d.created_at,
            "invocations": self.runtime.invocations if self.runtime else 0,
            "state_keys": len(self.ctx.state),
            # Counts and the rotation serial only: never names' values.
            "secrets": len(d.secrets or ()),
            "data": len(d.data or ()),
            "secrets_serial": self.ctx.inputs.serial,
        }


def validate_policy_text(text: str) -> None:
    """Refuse a deployment whose policy this agent cannot even parse (it must enforce
    it when handing the workload on)."""
    try:
        from keepmesh.protocol.attestation.policy import load_policy
    except ImportError:  # policy module not present in this build
        return
    try:
        load_policy(text, "deployment policy")
    except ProtocolError as err:
        raise ProtocolError(f"deployment policy: {err.reason}") from None


class KeepManager:
    def __init__(self, data_dir: Path, owner_keys: Collection[bytes], identity_seed: bytes,
                 log: logging.Logger | None = None, outbound: Outbound | None = None) -> None:
        if len(identity_seed) != 32:
            raise ValueError("identity seed must be 32 bytes")
        self.store = KeepStore(Path(data_dir))
        self.owner_keys = {bytes(k) for k in owner_keys}
        self._identity_seed = identity_seed
        self.log = log or logging.getLogger("keepmesh.keeps")
        self.outbound = outbound
        self.keeps: dict[str, Keep] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ admission
    def admit(self, deployment: Deployment, sealed: SealedPackage) -> Keep:
        """Verify and install (not start) a deployment; ProtocolError with a reason if refused."""
        verify_deployment(deployment, self.owner_keys)
        keep_id = deployment_id(deployment)
        with self._lock:
            if keep_id in self.keeps or self.store.exists(keep_id):
                raise ProtocolError(f"deployment {keep_id} already deployed here (replay?)")
            if len(self.keeps) >= MAX_KEEPS:
                raise ProtocolError(f"agent already holds the maximum {MAX_KEEPS} keeps")
            package, dkey = open_package(sealed, self._identity_seed)
            check_package(deployment, package)
            inputs = KeepInputs.open(deployment, keep_id, dkey, sealed.inputs,
                                     sealed.updates or ())
            if deployment.policy:
                validate_policy_text(deployment.policy)
            try:
                module = module_binary(package, "package")
            except PackageError as err:
                raise ProtocolError(err.reason) from None
            keep = self._make_keep(keep_id, deployment, module, dkey, KVState(), LogBuffer(),
                                   inputs)
            if keep.runtime is None:
                raise ProtocolError(f"package refused: {keep.status}")
            self.store.install(keep_id, deployment, module, dkey,
                               inputs.record() if deployment.secrets or deployment.data
                               or inputs.sealed is not None else None)
            self.keeps[keep_id] = keep
        self.log.info("keep %s admitted: %s (%s)", keep_id, deployment.manifest.name, keep.kind)
        self._persist(keep)
        return keep

    def _make_keep(self, keep_id: str, deployment: Deployment, module: bytes, dkey: bytes,
                   state: KVState, logs: LogBuffer, inputs: KeepInputs | None = None) -> Keep:
        ctx = HostContext(keep_id, state, logs, router=self.route, inputs=inputs)
        try:
            runtime: KeepRuntime | None = KeepRuntime(keep_id, deployment.manifest, module, ctx)
            status = "created"
        except KeepError as err:
            runtime, status = None, err.status
        return Keep(keep_id, deployment, dkey, ctx, runtime, status)

    # ------------------------------------------------------------ running
    def run_start(self, keep: Keep) -> str:
        """Blocking: instantiate (and for a command, run to completion). Worker thread."""
        try:
            if keep.runtime is not None and keep.status == "created":
                keep.status = "running"
                keep.status = keep.runtime.start()
        except Exception as err:  # never let a keep take the agent down
            keep.status = f"failed: {type(err).__name__}: {str(err)[:200]}"
        finally:
            self._persist(keep)
            if is_terminal(keep.status):
                keep.done.set()
        return keep.status

    def run_call(self, keep: Keep, message: bytes) -> bytes:
        """Blocking: one message through `handle`. Worker thread."""
        if keep.runtime is None:
            raise KeepError(keep.status)
        try:
            reply = keep.runtime.call(message)
        except KeepError as err:
            keep.status = err.status
            keep.done.set()
            raise
        except Exception as err:
            keep.status = f"failed: {type(err).__name__}: {str(err)[:200]}"
            keep.done.set()
            raise KeepError(keep.status) from None
        finally:
            if keep.runtime is not None and not is_terminal(keep.status):
                keep.status = keep.runtime.status
            self._persist(keep)
        return reply

    def run_stop(self, keep: Keep) -> str:
        if keep.runtime is not None:
            keep.runtime.stop()
            keep.runtime.finish_stop()
        keep.status = "stopped"
        keep.done.set()
        self._persist(keep)
        return keep.status

    async def start(self, keep: Keep, wait: float = 5.0) -> str:
        """Start a keep in a worker thread; return its status after at most `wait` s.

        A command that runs longer keeps running in its thread (bounded by its
        fuel and timeout); its final status appears in `keeps`.
        """
        thread = threading.Thread(target=self.run_start, args=(keep,), daemon=True,
                                  name=f"keep-{keep.keep_id[:8]}")
        thread.start()
        if wait > 0:
            await trio.to_thread.run_sync(thread.join, wait, abandon_on_cancel=True)
        return keep.status

    async def deploy(self, deployment: Deployment, sealed: SealedPackage,
                     wait: float = 5.0) -> Keep:
        keep = self.admit(deployment, sealed)
        await self.start(keep, wait)
        return keep

    async def call(self, keep_id: str, message: bytes) -> bytes:
        keep = self.get(keep_id)
        return await trio.to_thread.run_sync(self.run_call, keep, message)

    async def stop(self, keep_id: str) -> str:
        keep = self.get(keep_id)
        return await trio.to_thread.run_sync(self.run_stop, keep)

    def forget(self, keep_id: str) -> None:
        """Drop a stopped keep and its files so it can be admitted here again (a keep that
        migration moved away returning to this host). Refuses a keep that still runs."""
        with self._lock:
            keep = self.keeps.get(keep_id)
            if keep is not None and keep.status in ("running", "created"):
                raise ProtocolError(f"keep {keep_id} still runs here")
            self.keeps.pop(keep_id, None)
            self.store.remove(keep_id)

    def get(self, keep_id: str) -> Keep:
        keep = self.keeps.get(keep_id)
        if keep is None and len(keep_id) >= 8:
            matches = [k for k in self.keeps if k.startswith(keep_id)]
            if len(matches) == 1:
                keep = self.keeps[matches[0]]
        if keep is None:
            from keepmesh.protocol.rpc import RpcNotFound
            raise RpcNotFound(f"no keep {keep_id[:64]!r} on this agent")
        return keep

    def list_keeps(self) -> list[dict[str, Any]]:
        return [k.summary() for k in sorted(self.keeps.values(), key=lambda k: k.keep_id)]

    def logs(self, keep_id: str, tail: int | None = None) -> list[tuple[str, str]]:
        return self.get(keep_id).ctx.logs.tail(tail)

    # ------------------------------------------------------------ messages
    def route(self, sender: str, target: str, message: bytes) -> bool:
        """Deliver to a local keep's inbox, or hand to the mesh for a remote workload."""
        keep = self.keeps.get(target)
        if keep is not None:
            return keep.ctx.deliver(message)
        if self.outbound is not None:
            return self.outbound(sender, target, message)
        return False

    # ------------------------------------------------------------ secrets
    def set_secret(self, update: SecretUpdate) -> int:
        """Apply an owner-signed rotation; the keep sees it from its next invocation.

        Checked (signature, serial, decryption, digest) before anything is
        written; persisted before it takes effect, so a crash never runs a
        keep with a secret its store does not hold. Returns the new serial.
        """
        keep = self.get(update.keep)
        with self._lock:
            if is_terminal(keep.status):  # no next invocation would ever see it
                raise ProtocolError(f"keep {keep.keep_id} is {keep.status[:80]}: it runs no "
                                    "more invocations, so the secret was not replaced")
            value = keep.ctx.inputs.check(update, keep.deployment, keep.keep_id,
                                          keep.deployment_key)
            try:
                self.store.save_inputs(keep.keep_id, keep.ctx.inputs.record(update))
            except OSError as err:
                raise ProtocolError(f"keep {keep.keep_id}: cannot store the secret: "
                                    f"{err.strerror}") from None
            keep.ctx.inputs.apply(update, value)
        serial: int = update.serial
        self.log.info("keep %s: secret rotated (serial %d)", keep.keep_id, serial)
        return serial

    def sealed_for(self, keep_id: str, identity_public_key: bytes) -> SealedPackage:
        """The keep's package, secrets, data and rotations sealed to another agent.

        For placement replicas and migration standbys: the caller must first
        have checked that agent's fresh evidence against the deployment's
        policy (only then may it receive the key). The secrets and data are
        copied as the owner sealed them, so the receiver verifies every digest
        and signature itself when it admits the deployment.
        """
        keep = self.get(keep_id)
        _, module, dkey = self.store.load(keep.keep_id)
        sealed, _ = seal_package(module, identity_public_key, key=dkey,
                                 inputs=keep.ctx.inputs.sealed,
                                 updates=keep.ctx.inputs.update_list())
        return sealed

    # ------------------------------------------------------------ migration
    def export_checkpoint(self, keep_id: str) -> bytes:
        keep = self.get(keep_id)
        return export_checkpoint(keep.ctx.state, keep.deployment_key)

    def import_checkpoint(self, keep_id: str, blob: bytes) -> None:
        keep = self.get(keep_id)
        if keep.status not in ("created",):
            raise ProtocolError("a checkpoint can only be imported before the keep starts")
        try:
            keep.ctx.state = import_checkpoint(blob, keep.deployment_key)
        except StateError as err:
            raise ProtocolError(err.reason) from None
        self.store.save_state(keep_id, keep.ctx.state)

    # ------------------------------------------------------------ persistence
    def _persist(self, keep: Keep, force: bool = False) -> None:
        """State is written on every committed change; logs at most every
        LOG_FLUSH_S (or on a status change), since each write costs fsyncs."""
        try:
            if keep.ctx.state.dirty and keep.deployment.manifest.stateful:
                self.store.save_state(keep.keep_id, keep.ctx.state)
            now = time.monotonic()
            logs_due = (keep.ctx.logs.seq != keep._saved_seq
                        and (force or now - keep._saved_at >= LOG_FLUSH_S))
            if logs_due or keep.status != keep._saved_status:
                self.store.save_meta(keep.keep_id, {
                    "status": keep.status,
                    "logs": [list(x) for x in keep.ctx.logs.tail()],
                })
                keep._saved_seq, keep._saved_status = keep.ctx.logs.seq, keep.status
                keep._saved_at = now
        except OSError as err:
            self.log.error("keep %s: cannot persist: %s", keep.keep_id, err)

    def restore(self) -> list[Keep]:
        """Reload keeps after a restart; services are restarted with their state."""
        restored: list[Keep] = []
        for keep_id in self.store.keep_ids():
            if keep_id in self.keeps:
                continue
            try:
                deployment, module, dkey = self.store.load(keep_id)
                meta = self.store.load_meta(keep_id)
                record = self.store.load_inputs(keep_id)
                sealed_inputs, updates = (None, ()) if record is None else parse_record(record)
                inputs = KeepInputs.open(deployment, keep_id, dkey, sealed_inputs, updates)
                state = (self.store.load_state(keep_id) if deployment.manifest.stateful
                         else KVState())
            except (ProtocolError, OSError) as err:
                self.log.error("keep %s: cannot restore: %s", keep_id, err)
                continue
            lines = meta.get("logs", [])
            logs = LogBuffer([(str(a), str(b)) for a, b in lines
                              if isinstance(lines, list)] if isinstance(lines, list) else [])
            keep = self._make_keep(keep_id, deployment, module, dkey, state, logs, inputs)
            status = str(meta.get("status", "created"))
            try:
                verify_deployment(deployment, self.owner_keys)
            except VerificationError as err:
                keep.status = f"failed: {err.reason}"
            else:
                if keep.runtime is None:
                    pass
                elif is_terminal(status):
                    keep.status = status
                elif keep.kind == "command" and status == "running":
                    keep.status = "interrupted: agent restarted while the command ran"
            if is_terminal(keep.status):
                keep.done.set()
            keep._saved_seq, keep._saved_status = logs.seq, status
            self.keeps[keep_id] = keep
            restored.append(keep)
        return restored

    async def restore_and_start(self) -> list[Keep]:
        keeps = self.restore()
        for keep in keeps:
            if keep.status == "created":
                await self.start(keep, wait=0 if keep.kind == "command" else 5.0)
        return keeps

    async def aclose(self) -> None:
        for keep in list(self.keeps.values()):
            if keep.runtime is not None and not is_terminal(keep.status):
                keep.runtime.stop()
            self._persist(keep, force=True)
