"""Migration in the simulator: the real `Migration` engine in every simulated agent.

A topology's `[migration]` table turns it on:

```toml
[migration]
keeps = 200          # stateful keeps placed on random agents once the mesh is up
start_s = 20         # when the keeps are placed (default: after the join window)
```

Each keep uses the owner defaults (1 standby, a checkpoint every 5 s): the
signed manifest does not carry `[migration]` yet, so the simulator does not
pretend to vary them.

This module is only the world around the protocol (what the agent's driver
does with real keeps): each simulated keep's durable state is a counter that
grows by one per second while a copy runs; a checkpoint captures it, a
restore resumes from it. Standby attestation answers from the simulated TEE
world (an agent hit by a TEE fault fails it). Every decision (who is
standby, who takes over, fencing) is the MigrationMachine's in each agent's
MeshNode.

Measured (`migration` in `keepmesh simulate --json`): `moved` (keeps that
started on a new host), `recovered` (keeps whose host crashed and that run
again), `lost` (keeps with no running copy at the end), `recovery_s.p50/p99`
(host crash -> running elsewhere), `lost_state_s.max` and in checkpoint
intervals (state lost on a crash: the counter value at the crash minus the
value restored), `duplicate_s.max` (longest time two copies of one keep ran
at once, e.g. across a partition and its heal), `fenced` (copies stopped by
a higher epoch).
"""

from __future__ import annotations

import hashlib
import math
import random
import struct
from dataclasses import dataclass, field
from typing import Any

from keepmesh.protocol.attestation.evidence import VerifiedEvidence
from keepmesh.protocol.attestation.policy import load_policy
from keepmesh.protocol.channel import evidence_report_data
from keepmesh.protocol.deployment import Deployment, deployment_id, make_deployment, manifest_for
from keepmesh.protocol.effects import Send
from keepmesh.protocol.migration import effects as fx
from keepmesh.protocol.migration.engine import Migration
from keepmesh.protocol.migration.machine import MigrationMachine
from keepmesh.protocol.migration.messages import Replicate
from keepmesh.protocol.migration.settings import DEFAULT_CHECKPOINT_S
from keepmesh.protocol.migration.transfer import split
from keepmesh.protocol.migration.triggers import Attested
from keepmesh.protocol.wire import encode_payload

from .topology import TopologyError

POLICY = 'allow_sim = true\nallowed_tee = ["sim"]\n'
OWNER_SEED = b"\x4b" * 32
SIM_ROOT = hashlib.sha256(b"keepmesh simulated TEE root").digest()
_U64 = struct.Struct(">Q")


@dataclass(frozen=True)
class MigrationSpec:
    keeps: int
    start_s: float | None
    checkpoint_s: float = DEFAULT_CHECKPOINT_S


def parse_migration_spec(table: Any, path: str) -> MigrationSpec:
    """`[migration]` of a topology; TopologyError naming the field otherwise."""
    if not isinstance(table, dict):
        raise TopologyError(f"{path}: [migration]: expected a table")
    allowed = {"keeps", "start_s"}
    for k in table:
        if k not in allowed:
            raise TopologyError(f"{path}: migration.{str(k)[:40]}: unknown key "
                                f"(allowed: {', '.join(sorted(allowed))})")

    def num(key: str, lo: float, hi: float, default: float | None, integer: bool) -> Any:
        v = table.get(key, default)
        if v is None:
            return None
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if not ok or isinstance(v, bool) or not lo <= v <= hi:
            kind = "an integer" if integer else "a number"
            raise TopologyError(f"{path}: migration.{key}: expected {kind} in [{lo:g}, {hi:g}]")
        return v

    return MigrationSpec(keeps=num("keeps", 1, 100_000, 100, True),
                         start_s=num("start_s", 0.0, 1e9, None, False))


def sim_evidence(node: bytes, issued_at: int = 0, nonce: bytes = b"") -> VerifiedEvidence:
    """What the simulated verifier establishes about a healthy simulated agent."""
    return VerifiedEvidence(
        format="sev-snp", tee="sim", measurement=b"\x5e" * 48,
        report_data=evidence_report_data(node, issued_at, nonce), debug=False, signer=(),
        root_fingerprint=SIM_ROOT, vendor_root=False,
        tcb={"bootloader": 3, "tee": 0, "snp": 22, "microcode": 213},
        claims={"vmpl": 0, "guest_svn": 0})


@dataclass
class Copy:
    """One running copy of a keep on one agent: its counter and since when it grows."""

    base: int
    since: float

    def value(self, now: float) -> int:
        return self.base + int(now - self.since)


@dataclass
class KeepTrack:
    deployment: Deployment
    copies: dict[int, Copy] = field(default_factory=dict)     # agent idx -> copy
    crashed_at: float | None = None                            # its host's crash, open
    crash_value: int = 0
    dup_since: float | None = None


class MigrationExperiment:
    """The simulated world of keeps and standbys around each agent's MigrationMachine."""

    def __init__(self, sim: Any, spec: MigrationSpec, rng: random.Random) -> None:
        self.sim = sim
        self.spec = spec
        self.rng = rng
        self.policy = load_policy(POLICY)
        self.keeps: dict[str, KeepTrack] = {}
        self.held: dict[int, dict[str, tuple[int, float, int]]] = {}  # idx -> keep -> ckpt
        self.checkpoints: dict[tuple[int, str], dict[int, bytes]] = {}
        self.moved = 0
        self.recovered = 0
        self.fenced = 0
        self.recovery_s: list[float] = []
        self.lost_state_s: list[float] = []
        self.duplicate_s: list[float] = []

    # ------------------------------------------------------------ wiring

    def attach(self, proto: Any, idx: int, node_id: bytes, address: str, now: float) -> None:
        """Give a (re)started agent its MigrationMachine (its own RNG, from its id)."""
        adapter = self.sim.adapter
        signer = adapter.keyring.signer(node_id)
        eng = Migration(signer, adapter.verifier, address,
                        random.Random(hashlib.sha256(b"migration" + node_id).digest()), now,
                        default_policy=self.policy)
        proto.node.add(MigrationMachine(proto.node, eng))
        proto.migration = lambda driver, item: self.carry_out(idx, driver, item)
        proto.node.complete(fx.OwnEvidence(Attested(sim_evidence(node_id), now)), now)
        self.held.pop(idx, None)  # a restarted agent's standby store is empty

    def trust(self, proto: Any, subject: bytes, trusted: bool, now: float) -> None:
        """The simulated verifier's verdict also gives migration the verified evidence."""
        att = Attested(sim_evidence(subject), now) if trusted else None
        proto.node.complete(fx.MemberEvidence(subject, att), now)

    def setup(self) -> None:
        at = self.spec.start_s
        if at is None:
            at = self.sim.join_window + 10.0 * self.sim.adapter.probe_interval
        self.sim.engine.schedule(at, self._place)

    def _place(self) -> None:
        now = self.sim.engine.now
        ups = self.sim.up_indices()
        if not ups:
            return
        for idx in ups:  # a warm start primed member tables without events
            proto = self.sim.engine.nodes[idx].proto
            for m in proto.node.machines:
                if isinstance(m, MigrationMachine):
                    m.sync_view(now)
            for view in proto.node.members():
                subject = self.sim.engine.by_id.get(view.node_id, -1)
                if subject >= 0 and subject != idx and view.trust.value == "trusted":
                    self.trust(proto, view.node_id, not self.sim.tee_bad[subject], now)
        manifest_rng = random.Random(self.rng.getrandbits(64))
        for i in range(self.spec.keeps):
            d = make_deployment(manifest_for(f"k{i}", stateful=True), b"\0asm" + _U64.pack(i),
                                POLICY, OWNER_SEED, 1000.0, manifest_rng)
            keep = deployment_id(d)
            host = self.rng.choice(ups)
            track = KeepTrack(d)
            track.copies[host] = Copy(0, now)
            self.keeps[keep] = track
            node = self.sim.engine.nodes[host]
            node.proto.node.complete(fx.KeepHosted(d, 1), now)
            self.sim.engine.pump(node)

    # ------------------------------------------------------------ world events

    def on_crash(self, idx: int, now: float) -> None:
        for track in self.keeps.values():
            copy = track.copies.pop(idx, None)
            if copy is not None and not track.copies:
                track.crashed_at = now
                track.crash_value = copy.value(now)
            self._dup(track, now)
        self.held.pop(idx, None)

    def _dup(self, track: KeepTrack, now: float) -> None:
        if len(track.copies) > 1 and track.dup_since is None:
            track.dup_since = now
        elif len(track.copies) <= 1 and track.dup_since is not None:
            self.duplicate_s.append(now - track.dup_since)
            track.dup_since = None

    # ------------------------------------------------------------ effects

    def carry_out(self, idx: int, driver: Any, item: object) -> bool:
        """Do what the agent's driver would; False for outputs that are not migration's."""
        now = self.sim.engine.now
        node = driver.node
        if isinstance(item, fx.AttestStandby):
            subject = self.sim.engine.by_id.get(item.node, -1)
            ok = subject >= 0 and self.sim.up(subject) and not self.sim.tee_bad[subject]
            att = Attested(sim_evidence(item.node, int(now), item.nonce), float(int(now))) \
                if ok else None
            node.complete(fx.StandbyAttested(item.keep, item.node, item.nonce, att), now)
        elif isinstance(item, fx.SendReplicate):
            track = self.keeps.get(item.keep)
            if track is not None:
                pkg = b"sealed:" + item.node + track.deployment.package_digest
                msgs: list[Any] = [Replicate(
                    keep=item.keep, epoch=item.epoch, deployment=encode_payload(track.deployment),
                    package_size=len(pkg), package_digest=hashlib.sha256(pkg).digest())]
                msgs += split(item.keep, item.epoch, "package", 0, 0.0, pkg)
                self._send(driver, item.node, msgs)
        elif isinstance(item, fx.TakeCheckpoint):
            track = self.keeps.get(item.keep)
            copy = track.copies.get(idx) if track is not None else None
            if copy is None:
                node.complete(fx.CheckpointFailed(item.keep, "no copy here"), now)
            else:
                self.checkpoints.setdefault((idx, item.keep), {})[item.seq] = \
                    _U64.pack(copy.value(now))
                node.complete(fx.CheckpointTaken(item.keep, item.seq, now, item.final), now)
        elif isinstance(item, fx.SendCheckpoint):
            data = self.checkpoints.get((idx, item.keep), {}).get(item.seq)
            if data is not None:
                self._send(driver, item.node,
                           split(item.keep, item.epoch, "checkpoint", item.seq, now, data))
        elif isinstance(item, fx.StoreStandby):
            if item.kind == "checkpoint":
                self.held.setdefault(idx, {})[item.keep] = (
                    item.seq, item.taken_at, _U64.unpack(item.data)[0])
        elif isinstance(item, fx.StartFromCheckpoint):
            self._restore(idx, node, item, now)
        elif isinstance(item, fx.StopKeep):
            track = self.keeps.get(item.keep)
            if track is not None:
                track.copies.pop(idx, None)
                self._dup(track, now)
        elif isinstance(item, fx.KeepMoved):
            if item.to == node.node_id:
                self.moved += 1
        elif isinstance(item, fx.KeepFenced):
            self.fenced += 1
        elif isinstance(item, fx.PauseKeep | fx.ResumeKeep | fx.StandbyChanged
                        | fx.KeepOrphaned | fx.DrainFinished):
            pass
        else:
            return False
        return True

    def _send(self, driver: Any, to: bytes, msgs: list[Any]) -> None:
        target = self.sim.engine.by_id.get(to, -1)
        if target < 0:
            return
        address = self.sim.engine.nodes[target].address
        for m in msgs:
            driver._sends.append(Send(address, encode_payload(m), True, to))

    def _restore(self, idx: int, node: Any, item: fx.StartFromCheckpoint, now: float) -> None:
        track = self.keeps.get(item.keep)
        held = self.held.get(idx, {}).get(item.keep)
        if track is None or (item.seq > 0 and (held is None or held[0] != item.seq)):
            node.complete(fx.KeepRestored(item.keep, item.epoch, None, False,
                                          "no such checkpoint"), now)
            return
        seq, taken_at, value = held if item.seq > 0 and held is not None else (0, now, 0)
        if seq:
            self.checkpoints.setdefault((idx, item.keep), {})[seq] = _U64.pack(value)
        track.copies[idx] = Copy(value, now)
        if track.crashed_at is not None:
            self.recovered += 1
            self.recovery_s.append(now - track.crashed_at)
            self.lost_state_s.append(float(max(0, track.crash_value - value)))
            track.crashed_at = None
        self._dup(track, now)
        node.complete(fx.KeepRestored(item.keep, item.epoch, track.deployment, True, ""), now)

    # ------------------------------------------------------------ report

    def summary(self) -> dict[str, Any]:
        now = self.sim.engine.now
        dups = list(self.duplicate_s)
        for track in self.keeps.values():
            if track.dup_since is not None:
                dups.append(now - track.dup_since)
        lost = sum(1 for t in self.keeps.values() if not t.copies)
        return {
            "keeps": len(self.keeps), "moved": self.moved, "recovered": self.recovered,
            "lost": lost, "fenced": self.fenced,
            "recovery_s": _quantiles(self.recovery_s),
            "lost_state_s": {"max": max(self.lost_state_s, default=0.0),
                             "checkpoint_intervals_max": round(
                                 max(self.lost_state_s, default=0.0) / self.spec.checkpoint_s,
                                 3)},
            "duplicate_s": {"max": round(max(dups, default=0.0), 3), "count": len(dups)},
        }


def _quantiles(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"p50": None, "p99": None, "max": None}
    s = sorted(xs)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, max(0, math.ceil(p * len(s)) - 1))], 3)
    return {"p50": q(0.5), "p99": q(0.99), "max": round(s[-1], 3)}
