"""Migration's I/O shell in the agent: carries out protocol/migration's effects.

Migration runs inside the agent's one MeshNode (`MigrationMachine`, built by
MeshService like placement's machine); MeshService pumps the node, delivers
its sends (migrate.* records on one ordered lane per peer, `migrate.msg`)
and hands every other output to this service, which only carries out the
migration effects and reports results back with `MeshNode.complete`:

- `AttestStandby`: the peer's fresh evidence (`migrate.attest` RPC, bound to
  the engine's nonce) is verified with this agent's verifier and handed back;
  the engine checks binding, freshness and the deployment's policy;
- `SendReplicate`: the package re-sealed to the standby
  (`KeepManager.sealed_for`) goes as a chunked transfer on the peer's lane;
- `TakeCheckpoint`/`StartFromCheckpoint`: `agent/keeps/checkpoint.py`;
- what a standby receives is stored under `<data_dir>/migration/standby/`;
  a fenced copy's state is kept aside under `<data_dir>/migration/fenced/`.

Facts it reports (no decisions): this agent's own evidence, re-verified every
OWN_EVIDENCE_S; peers' evidence verified by their attested sessions; keeps
that started or ended here outside migration (owner deploy or stop, exit).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import random
import shutil
from collections import deque
from pathlib import Path
from typing import Any

import trio
from keepmesh.agent import metrics
from keepmesh.agent.identity import fingerprint
from keepmesh.agent.keeps.checkpoint import CheckpointError, restore_keep, take_checkpoint
from keepmesh.agent.keeps.service import KeepService
from keepmesh.agent.keeps.store import atomic_write
from keepmesh.agent.membership_service import MeshService
from keepmesh.agent.node import Agent
from keepmesh.agent.rpc import RpcContext, RpcError, call
from keepmesh.agent.session import ChannelFailed
from keepmesh.protocol.attestation.evidence import Evidence, verify_evidence_record
from keepmesh.protocol.deployment import Deployment, SealedPackage, deployment_id
from keepmesh.protocol.effects import Drain, Output, Release
from keepmesh.protocol.errors import ProtocolError, VerificationError
from keepmesh.protocol.membership import Ed25519Signer, Ed25519Verifier
from keepmesh.protocol.migration import effects as fx
from keepmesh.protocol.migration.engine import Migration
from keepmesh.protocol.migration.machine import MigrationMachine
from keepmesh.protocol.migration.messages import (
    KEEP_ID_LEN,
    MAX_EPOCH,
    Replicate,
    check_keep_id,
)
from keepmesh.protocol.migration.transfer import split
from keepmesh.protocol.migration.triggers import Attested
from keepmesh.protocol.node import MeshNode
from keepmesh.protocol.rpc import refuse_fields
from keepmesh.protocol.wire import decode_payload, encode_payload

log = logging.getLogger("keepmesh.migration")

SEND_TIMEOUT_S = 10.0
TICK_S = 0.5
OWN_EVIDENCE_S = 2.0
KEEP_CHECKPOINTS = 3
MAX_EVENTS = 200
STATUS_EVENTS = 50
DRAIN_WAIT_S = 100.0  # below the RPC call timeout (120 s)
MIB = 1024 * 1024


class MigrationService:
    def __init__(self, agent: Agent, keeps: KeepService, mesh: MeshService) -> None:
        self.agent = agent
        self.keeps = keeps
        self.mesh = mesh
        self.root = agent.data_dir / "migration"
        self.machine: MigrationMachine | None = None
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self._nursery: Any = None
        self._checkpoints: dict[str, dict[int, bytes]] = {}
        self._epochs: dict[str, int] = self._load_epochs()
        self._known_evidence: dict[bytes, tuple[bytes, int]] = {}
        self._ended: set[str] = set()   # keeps migration stopped here (not "lost")
        self._drains: list[tuple[trio.Event, list[fx.DrainFinished]]] = []
        self._next_own = 0.0
        mesh.machine_factories.append(self._build)
        mesh.on_output.append(self._on_output)
        agent.register({"migrate.attest": self._rpc_attest,
                        "agent.drain": self._rpc_drain, "migrate.where": self._rpc_where})
        agent.services.append(self.run)
        agent.status_sources["events"] = self.status_events

    @property
    def engine(self) -> Migration | None:
        return None if self.machine is None else self.machine.engine

    def _build(self, node: MeshNode) -> MigrationMachine:
        engine = Migration(Ed25519Signer(self.agent.identity.seed), Ed25519Verifier(),
                           self.agent.address, random.SystemRandom(), self.mesh.now(),
                           default_policy=self.agent.policy)
        self.machine = MigrationMachine(node, engine)
        self._sweep_standbys(set(engine.holdings.held) | set(engine.starting))
        return self.machine

    def _sweep_standbys(self, held: set[str]) -> None:
        """At start: standby folders left from an earlier run are never read again (the
        engine's holdings start empty; a host re-replicates afresh), so each one the
        engine does not hold is deleted by `_drop_standby`. Only entries directly in
        the standby dir named as a keep id (32 lowercase hex) are considered; anything
        else there, and a standby dir that is itself a symlink, is left alone."""
        base = self.root / "standby"
        if base.is_symlink() or not base.is_dir():
            return
        try:
            names = sorted(p.name for p in base.iterdir())
        except OSError as err:
            log.warning("standby folders not swept: %s", err)
            return
        for name in names:
            if name in held:
                continue
            try:
                check_keep_id(name)
            except ProtocolError:
                continue
            try:
                self._drop_standby(name)
            except (OSError, ProtocolError) as err:
                log.warning("standby folder %s not removed: %s", name, err)

    # ================================================================ epochs

    def keep_epoch(self, keep: str) -> tuple[int, bytes] | None:
        """The keep's current epoch and the signed record proving it, if migration knows."""
        loc = self.engine.locations.get(keep) if self.engine is not None else None
        if loc is None or loc.state != "running":
            return None
        return loc.epoch, encode_payload(loc)

    def admit(self, keep: str, epoch: int | None, location: bytes | None,
              src: bytes | None) -> None:
        """May this host's copy serve a message addressed to `keep` at `epoch`?
        (Migration.admit decides; raises StaleEpoch / ProtocolError.)"""
        eng = self.engine
        if eng is None:
            return
        try:
            eng.admit(keep, epoch, location, self.mesh.now(), src)
        finally:
            self.mesh.flush()

    # ================================================================ facts

    async def run(self, nursery: Any) -> None:
        """Report facts the node cannot see itself: evidence and keeps started or ended
        here outside migration. Decides nothing."""
        self._nursery = nursery
        while True:
            node = self.mesh.node
            if node is not None and self.machine is not None:
                now = self.mesh.now()
                self._sync(node, now)
                if now >= self._next_own:
                    self._next_own = now + OWN_EVIDENCE_S
                    nursery.start_soon(self._own_evidence)
                self.mesh.flush()
            await trio.sleep(TICK_S)

    def _complete(self, result: object) -> None:
        """A result from a task back into the node; its outputs are carried out at once."""
        node = self.mesh.node
        if node is not None:
            node.complete(result, self.mesh.now())
            self.mesh.flush()

    def _sync(self, node: MeshNode, now: float) -> None:
        """Peers' verified session evidence and local keeps, into the node."""
        eng = self.engine
        assert eng is not None
        for ident, peer in list(self.agent.peers.items()):
            ev = peer.evidence
            session = peer.session
            issued = session.peer.evidence_issued_at if session is not None else None
            if ev is None or issued is None:
                continue
            stamp = (ev.report_data, issued)
            if self._known_evidence.get(ident) != stamp:
                self._known_evidence[ident] = stamp
                node.complete(fx.MemberEvidence(ident, Attested(ev, float(issued))), now)
        manager = self.keeps.manager
        for keep_id, keep in list(manager.keeps.items()):
            known = keep_id in eng.running or keep_id in eng.starting
            if not known and keep.kind == "service" and keep.status == "running" \
                    and keep_id not in self._ended:
                node.complete(fx.KeepHosted(keep.deployment, self._epochs.get(keep_id, 1)), now)
            elif known and keep_id in eng.running and keep.status != "running" \
                    and keep.status != "created":
                self._ended.add(keep_id)
                node.complete(fx.KeepEnded(keep_id, lost=keep.status != "stopped"), now)

    async def _own_evidence(self) -> None:
        """Re-verify our own evidence (a TCB change shows up within OWN_EVIDENCE_S)."""
        agent = self.agent
        try:
            evidence, issued = await agent.attester.evidence(None)
            verified = verify_evidence_record(
                evidence, agent.trust, dt.datetime.now(dt.UTC), cache=agent.chain_cache,
                collateral=agent.collateral)
            att: Attested | None = Attested(verified, float(issued))
        except (ProtocolError, VerificationError) as err:
            log.warning("own evidence no longer verifies: %s", err)
            att = None
        self._complete(fx.OwnEvidence(att))

    # ================================================================ effects

    def _on_output(self, out: Output) -> None:
        """MeshService hands every node output here; migration's are carried out."""
        try:
            self._do(out)
        except (ProtocolError, OSError) as err:
            log.warning("migration effect %s failed: %s", type(out).__name__, err)

    def _do(self, out: object) -> None:
        n = self.mesh.nursery
        if isinstance(out, fx.AttestStandby):
            n.start_soon(self._attest_standby, out)
        elif isinstance(out, fx.SendReplicate):
            self._send_replicate(out)
        elif isinstance(out, fx.TakeCheckpoint):
            n.start_soon(self._take_checkpoint, out)
        elif isinstance(out, fx.SendCheckpoint):
            blob = self._checkpoints.get(out.keep, {}).get(out.seq)
            if blob is not None:
                for t in split(out.keep, out.epoch, "checkpoint", out.seq, self.mesh.now(),
                               blob):
                    self._send(out.node, encode_payload(t))
        elif isinstance(out, fx.StoreStandby):
            self._store_standby(out)
        elif isinstance(out, fx.DropStandby):
            self._drop_standby(out.keep)
        elif isinstance(out, fx.StartFromCheckpoint):
            n.start_soon(self._start_from_checkpoint, out)
        elif isinstance(out, fx.PauseKeep):
            keep = self.keeps.manager.keeps.get(out.keep)
            if keep is not None and keep.runtime is not None:
                keep.runtime.pause()
        elif isinstance(out, fx.ResumeKeep):
            keep = self.keeps.manager.keeps.get(out.keep)
            if keep is not None and keep.runtime is not None:
                keep.runtime.resume()
        elif isinstance(out, fx.StopKeep):
            self._ended.add(out.keep)
            n.start_soon(self._stop_keep, out)
        elif isinstance(out, fx.KeepMoved | fx.KeepFenced | fx.KeepOrphaned
                        | fx.StandbyChanged | fx.DrainFinished):
            self._event(out)

    def _address(self, node: bytes) -> str:
        view = self.mesh.node.member(node) if self.mesh.node is not None else None
        if view is not None:
            return view.address
        if self.engine is not None:
            return self.engine.locations.address_of(node) or ""
        return ""

    def _send(self, node: bytes, data: bytes) -> None:
        """Bytes a migration effect produced (transfer chunks), on the peer's ordered lane."""
        self.mesh.send_ordered(node, self._address(node), data)

    # ------------------------------------------------------------ attestation

    async def _rpc_attest(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        """Fresh evidence bound to the asker's nonce (standby selection)."""
        if ctx.role != "agent":
            raise ProtocolError("migrate.attest: agents only")
        refuse_fields("migrate.attest", body, ("nonce",))
        nonce = body.get("nonce")
        if not isinstance(nonce, bytes) or len(nonce) != 32:
            raise ProtocolError("migrate.attest: nonce must be 32 bytes")
        evidence, issued = await self.agent.attester.evidence(nonce)
        return {"evidence": evidence.to_fields(), "issued_at": issued}

    async def _attest_standby(self, out: fx.AttestStandby) -> None:
        att: Attested | None = None
        try:
            session = await self.mesh.session_to(out.node, self._address(out.node))
            if session is not None:
                reply = await call(session, "migrate.attest", {"nonce": out.nonce},
                                   timeout=SEND_TIMEOUT_S)
                ev = Evidence.from_fields(reply.get("evidence"))
                issued = reply.get("issued_at")
                if not isinstance(issued, int) or isinstance(issued, bool):
                    raise ProtocolError("migrate.attest: issued_at must be an int")
                agent = self.agent
                verified = verify_evidence_record(
                    ev, agent.trust, dt.datetime.now(dt.UTC), cache=agent.chain_cache,
                    collateral=agent.collateral)
                att = Attested(verified, float(issued))
        except (RpcError, ChannelFailed, ProtocolError, VerificationError) as err:
            log.info("standby %s for %s not attested: %s", fingerprint(out.node), out.keep,
                     err)
        self._complete(fx.StandbyAttested(out.keep, out.node, out.nonce, att))

    # ------------------------------------------------------------ replication

    def _send_replicate(self, out: fx.SendReplicate) -> None:
        manager = self.keeps.manager
        keep = manager.keeps.get(out.keep)
        if keep is None:
            return
        sealed = manager.sealed_for(out.keep, out.node)
        package = encode_payload(sealed)
        msg = Replicate(keep=out.keep, epoch=out.epoch, deployment=encode_payload(keep.deployment),
                        package_size=len(package),
                        package_digest=hashlib.sha256(package).digest())
        self._send(out.node, encode_payload(msg))
        for t in split(out.keep, out.epoch, "package", 0, 0.0, package):
            self._send(out.node, encode_payload(t))

    async def _take_checkpoint(self, out: fx.TakeCheckpoint) -> None:
        keep = self.keeps.manager.keeps.get(out.keep)
        if keep is None:
            self._complete(fx.CheckpointFailed(out.keep, "keep not here"))
            return
        epoch = self.engine.running[out.keep].epoch if self.engine and \
            out.keep in self.engine.running else 0
        now = self.mesh.now()
        try:
            blob = await trio.to_thread.run_sync(take_checkpoint, keep, out.seq, epoch, now)
        except (ProtocolError, OSError) as err:
            self._complete(fx.CheckpointFailed(out.keep, str(err)))
            return
        held = self._checkpoints.setdefault(out.keep, {})
        held[out.seq] = blob
        for old in sorted(held)[:-KEEP_CHECKPOINTS]:
            del held[old]
        self._complete(fx.CheckpointTaken(out.keep, out.seq, now, out.final))

    def _standby_dir(self, keep: str) -> Path:
        if len(keep) != KEEP_ID_LEN:
            raise ProtocolError("bad keep id")
        d: Path = self.root / "standby" / keep
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return d

    def _store_standby(self, out: fx.StoreStandby) -> None:
        d = self._standby_dir(out.keep)
        if out.kind == "deployment":
            # out.seq: the checkpoint the protocol keeps from the same host and epoch (a
            # host that restarted and re-replicates); 0, or a mismatch: drop it too
            stale = ["package.bin"]
            if out.seq == 0 or self._held_checkpoint_seq(d) != out.seq:
                stale += ["checkpoint.bin", "checkpoint.json"]
            for name in stale:
                (d / name).unlink(missing_ok=True)
            atomic_write(d / "deployment.bin", out.data)
        elif out.kind == "package":
            atomic_write(d / "package.bin", out.data)
        elif out.kind == "checkpoint":
            atomic_write(d / "checkpoint.bin", out.data)
            atomic_write(d / "checkpoint.json", json.dumps(
                {"seq": out.seq, "epoch": out.epoch, "taken_at": out.taken_at}).encode())

    def _drop_standby(self, keep: str) -> None:
        """Delete `<data_dir>/migration/standby/<keep>/` (the engine no longer holds the
        keep). Only that folder: the id is a keep id (32 lowercase hex, no separator or
        dot), the folder must sit directly in the standby dir, and a symlink in its
        place is removed itself, never followed."""
        check_keep_id(keep)
        base = self.root / "standby"
        d = base / keep
        if d.is_symlink():
            d.unlink()
            return
        if not d.is_dir():
            return
        if d.resolve().parent != base.resolve():
            raise ProtocolError(f"standby folder of {keep} is outside {base}")
        shutil.rmtree(d)

    @staticmethod
    def _held_checkpoint_seq(d: Path) -> int:
        try:
            seq = json.loads((d / "checkpoint.json").read_text()).get("seq")
        except (OSError, ValueError, AttributeError):
            return 0
        return seq if isinstance(seq, int) and (d / "checkpoint.bin").is_file() else 0

    async def _start_from_checkpoint(self, out: fx.StartFromCheckpoint) -> None:
        deployment: Deployment | None = None
        try:
            d = self._standby_dir(out.keep)
            dep = decode_payload((d / "deployment.bin").read_bytes(), 256 * 1024, (Deployment,))
            pkg = decode_payload((d / "package.bin").read_bytes(), 64 * 1024 * 1024,
                                 (SealedPackage,))
            assert isinstance(dep, Deployment) and isinstance(pkg, SealedPackage)
            if deployment_id(dep) != out.keep:
                raise ProtocolError("standby deployment is of another keep")
            blob: bytes | None = None
            if out.seq > 0:
                meta = json.loads((d / "checkpoint.json").read_text())
                if meta.get("seq") != out.seq:
                    raise ProtocolError(f"holding checkpoint {meta.get('seq')}, not {out.seq}")
                blob = (d / "checkpoint.bin").read_bytes()
            manager = self.keeps.manager
            if out.keep in manager.keeps:
                # It ran here before and moved away (its copy stopped): it comes back as a
                # new admission at the new epoch, not as the old copy's state.
                manager.forget(out.keep)
            keep, _ = await trio.to_thread.run_sync(restore_keep, manager, dep, pkg, blob)
            await manager.start(keep)
            if keep.status != "running":
                raise ProtocolError(f"restored keep is {keep.status}")
            if blob is not None:
                self._checkpoints.setdefault(out.keep, {})[out.seq] = blob
            self._set_epoch(out.keep, out.epoch)
            self._ended.discard(out.keep)
            deployment = dep
            ok, reason = True, ""
        except (OSError, ValueError, ProtocolError, CheckpointError) as err:
            ok, reason = False, str(err)[:200]
            log.warning("restore of keep %s failed: %s", out.keep, reason)
        self._complete(fx.KeepRestored(out.keep, out.epoch, deployment, ok, reason))

    async def _stop_keep(self, out: fx.StopKeep) -> None:
        manager = self.keeps.manager
        keep = manager.keeps.get(out.keep)
        if keep is None:
            return
        if out.reason == "fenced":
            # The losing copy's state is kept aside, not merged (specs/migration.md §3).
            try:
                blob = await trio.to_thread.run_sync(take_checkpoint, keep, 0, out.epoch,
                                                     self.mesh.now())
                fenced = self.root / "fenced"
                fenced.mkdir(parents=True, exist_ok=True, mode=0o700)
                atomic_write(fenced / f"{out.keep}-e{out.epoch}.ckpt", blob)
            except (ProtocolError, OSError) as err:
                log.warning("could not keep the fenced state of %s: %s", out.keep, err)
        await manager.stop(out.keep)
        self._release(out.keep)

    def _release(self, keep: str) -> None:
        """The keep no longer runs here: placement's lease goes back now (not at its next
        reconcile), so the capacity is free for the next placement."""
        node = self.mesh.node
        if node is not None:
            node.command(Release(keep), self.mesh.now())
            self.mesh.flush()

    # ------------------------------------------------------------ events

    def _event(self, ev: object) -> None:
        now = self.mesh.now()
        doc: dict[str, Any] = {"time": now, "event": type(ev).__name__}
        metrics.count_migration(type(ev).__name__)
        if isinstance(ev, fx.KeepMoved):
            doc.update(keep=ev.keep, from_host=ev.from_host.hex() if ev.from_host else None,
                       to=ev.to.hex(), epoch=ev.epoch, trigger=ev.trigger)
            if ev.to == self.agent.identity.public_bytes:
                self._set_epoch(ev.keep, ev.epoch)
            log.info("migration: keep %s moved to %s at epoch %d (%s)", ev.keep,
                     fingerprint(ev.to), ev.epoch, ev.trigger)
        elif isinstance(ev, fx.KeepFenced):
            doc.update(keep=ev.keep, epoch=ev.epoch, winner=ev.winner.hex(),
                       winner_epoch=ev.winner_epoch, checkpoint_seq=ev.checkpoint_seq)
            log.warning("migration: copy of keep %s at epoch %d fenced by %s at epoch %d; "
                        "its state since checkpoint %d is kept aside, not merged", ev.keep,
                        ev.epoch, fingerprint(ev.winner), ev.winner_epoch, ev.checkpoint_seq)
        elif isinstance(ev, fx.KeepOrphaned):
            doc.update(keep=ev.keep, host=ev.host.hex(), reason=ev.reason)
            log.warning("migration: keep %s orphaned: %s", ev.keep, ev.reason)
        elif isinstance(ev, fx.StandbyChanged):
            doc.update(keep=ev.keep, standbys=[s.hex() for s in ev.standbys])
            log.info("migration: keep %s standbys %s", ev.keep,
                     ", ".join(fingerprint(s) for s in ev.standbys) or "none")
        elif isinstance(ev, fx.DrainFinished):
            doc.update(moved=len(ev.moved), failed=[list(f) for f in ev.failed])
            log.info("migration: drain finished: %d moved, %d failed", len(ev.moved),
                     len(ev.failed))
            for done, box in self._drains:
                box.append(ev)
                done.set()
            self._drains.clear()
        self.events.append(doc)

    def status_events(self, ctx: RpcContext) -> list[dict[str, Any]]:
        """Recent migration events for `keepmesh status` (moves, fences, drains); a
        client sees events of keeps it owns (operators and agents: all)."""
        return self._visible_events(ctx)[-STATUS_EVENTS:]

    def _visible(self, ctx: RpcContext) -> set[str] | None:
        """Keeps the caller may see (None: all)."""
        if ctx.role == "agent" or ctx.peer_key in self.keeps.operator_keys:
            return None
        eng = self.engine
        return set() if eng is None else {loc.keep for loc in eng.locations
                                          if loc.owner == ctx.peer_key}

    def _visible_events(self, ctx: RpcContext) -> list[dict[str, Any]]:
        mine = self._visible(ctx)
        return [e for e in self.events if mine is None or e.get("keep") in mine]

    # ------------------------------------------------------------ epochs

    def _load_epochs(self) -> dict[str, int]:
        try:
            raw = json.loads((self.root / "epochs.json").read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(raw, dict):
            return {}
        return {k: v for k, v in raw.items()
                if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                and 1 <= v <= MAX_EPOCH}  # an epoch the wire cannot carry is not used

    def _set_epoch(self, keep: str, epoch: int) -> None:
        self._epochs[keep] = epoch
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.root / "epochs.json", json.dumps(self._epochs).encode())

    # ------------------------------------------------------------ RPC

    async def _rpc_drain(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        """Hand every keep over; answer when done: moved [{keep, from, to, epoch}]."""
        refuse_fields("agent.drain", body)
        node = self.mesh.node
        if self.engine is None or node is None:
            raise ProtocolError("agent.drain: migration not running yet")
        done, box = trio.Event(), list[fx.DrainFinished]()
        self._drains.append((done, box))
        node.command(Drain(), self.mesh.now())  # placement stops taking keeps, too
        self.mesh.flush()
        with trio.move_on_after(DRAIN_WAIT_S):
            await done.wait()
        if not box:
            raise ProtocolError("agent.drain: not finished within "
                                f"{DRAIN_WAIT_S:g} s")
        fin = box[0]
        me = self.agent.address
        moved = []
        for m in fin.moved:
            loc = self.engine.locations.get(m.keep) if self.engine is not None else None
            moved.append({"keep": m.keep, "from": me,
                          "to": loc.address if loc is not None and loc.host == m.to else None,
                          "to_id": m.to.hex(), "epoch": m.epoch})
        return {"moved": moved, "failed": [{"keep": k, "reason": r} for k, r in fin.failed]}

    async def _rpc_where(self, ctx: RpcContext, body: dict[str, Any]) -> dict[str, Any]:
        """Where the caller's keeps run as this agent sees it (host, epoch, standbys,
        last_checkpoint) and migration events about them. Owners see their own keeps,
        operators and peer agents all (as `keeps.list`), so nobody probes others'."""
        refuse_fields("migrate.where", body)
        eng = self.engine
        if eng is None:
            return {"keeps": [], "events": []}
        mine = self._visible(ctx)
        keeps = [(eng.summary(loc.keep) or {}) | {"keep": loc.keep} for loc in eng.locations
                 if mine is None or loc.keep in mine]
        return {"keeps": sorted(keeps, key=lambda k: str(k["keep"])),
                "events": self._visible_events(ctx)}
