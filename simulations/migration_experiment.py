"""Migration in the simulator: the real `Migration` engine in every simulated agent.

A topology's `[migration]` table turns it on:

```toml
[migration]
keeps = 200          # stateful keeps placed on random agents once the mesh is up
start_s = 20         # keeps are placed from then on, each at a uniform time within
                     # one checkpoint interval (default: after the join window)
```

Each keep uses the owner defaults (1 standby, a checkpoint every 5 s): the
simulated deployments carry no `[migration]` table, so the simulator does not
pretend to vary them (the interval used for the figures is read back from each
deployment with the engine's own `settings_of`).

This module is only the world around the protocol (what the agent's driver
does with real keeps): each simulated keep's durable state is a counter that
grows by one per simulated second while a copy runs and is not paused (a
float: the state written so far, in seconds of work); a checkpoint captures
it, a restore resumes from it. Standby attestation answers from the
simulated TEE world (an agent hit by a TEE fault fails it). Every decision
(who is standby, who takes over, fencing) is the MigrationMachine's in each
agent's MeshNode.

Measured (`migration` in `keepmesh simulate --json`), all from what happened
in the run, never from settings:

- `moved` (keeps that started on a new host, any trigger; `moved_by_trigger`),
  `recovered` (a keep whose last running copy went down with its host and
  that runs again), `lost` (keeps with no running copy at the end;
  `lost_orphaned`: its host and every standby of the newest record any live
  agent holds are down, so nobody can restart it; `lost_unrecovered`: the
  others, a live standby exists but has not taken over),
  `copies_at_end` (keeps with 0 / 1 / more running copies), `fenced`;
- `recovery_s` (host crash -> running elsewhere, per keep) against
  `detection_s` (the same crashes: crash -> the first member declaring the
  host dead, from the protocol's own events) and their per-keep difference
  `recovery_minus_detection_s`;
- `lost_state_s` (the counter at the crash minus the value restored) and
  the same in `checkpoint_intervals` of that keep;
- `duplicate_s` (every interval during which two copies of one keep ran:
  `max`, `count`, `open_at_end`) and `after_heal_s` (for intervals still
  open at a heal, or starting after one: their end minus the later of their
  start and that heal), with `reference` holding the suspicion timeouts and
  checkpoint interval to compare against.
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
from keepmesh.protocol.effects import MemberDead, MemberEvent, MemberLeft, Send
from keepmesh.protocol.migration import effects as fx
from keepmesh.protocol.migration.engine import Migration, settings_of
from keepmesh.protocol.migration.machine import MigrationMachine
from keepmesh.protocol.migration.messages import Replicate
from keepmesh.protocol.migration.transfer import split
from keepmesh.protocol.migration.triggers import Attested
from keepmesh.protocol.wire import encode_payload

from .topology import TopologyError

POLICY = 'allow_sim = true\nallowed_tee = ["sim"]\n'
OWNER_SEED = b"\x4b" * 32
SIM_ROOT = hashlib.sha256(b"keepmesh simulated TEE root").digest()
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")  # a checkpoint: the counter, seconds of work


@dataclass(frozen=True)
class MigrationSpec:
    keeps: int
    start_s: float | None


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
    """One running copy of a keep on one agent: its state grows by 1 per second from
    `base` since `since`, and is frozen while the keep is paused (`since` None)."""

    base: float
    since: float | None

    def value(self, now: float) -> float:
        return self.base if self.since is None else self.base + (now - self.since)

    def pause(self, now: float) -> None:
        self.base, self.since = self.value(now), None

    def resume(self, now: float) -> None:
        if self.since is None:
            self.since = now


@dataclass
class Recovery:
    """One keep brought back after the crash of the host that ran its last copy."""

    keep: str
    host: int
    crashed_at: float
    running_at: float
    lost_state_s: float
    checkpoint_s: float
    own_detection_at: float | None  # the successor's membership declared the host dead
    crash: Any  # metrics.CrashTrack of the host (its first_dead is membership's detection)


@dataclass
class KeepTrack:
    deployment: Deployment
    checkpoint_s: float
    copies: dict[int, Copy] = field(default_factory=dict)     # agent idx -> copy
    crashed_at: float | None = None                            # its host's crash, open
    crashed_host: int = -1
    crash_value: float = 0.0
    dup_since: float | None = None


class ObservedMigrationMachine(MigrationMachine):
    """The real MigrationMachine; the experiment also notes when this agent's membership
    told it a crashed member is dead (the successor's own detection of a crash)."""

    def __init__(self, node: Any, engine: Migration, on_dead: Any) -> None:
        super().__init__(node, engine)
        self._on_dead = on_dead

    def on_member_event(self, event: MemberEvent, now: float) -> None:
        if isinstance(event, MemberDead | MemberLeft):
            self._on_dead(event.node_id, now)
        super().on_member_event(event, now)


class MigrationExperiment:
    """The simulated world of keeps and standbys around each agent's MigrationMachine."""

    def __init__(self, sim: Any, spec: MigrationSpec, rng: random.Random) -> None:
        self.sim = sim
        self.spec = spec
        self.rng = rng
        self.policy = load_policy(POLICY)
        self.keeps: dict[str, KeepTrack] = {}
        self.held: dict[int, dict[str, tuple[int, float, float]]] = {}  # idx -> keep -> ckpt
        self.checkpoints: dict[tuple[int, str], dict[int, bytes]] = {}
        self.moved = 0
        self.moved_by_trigger: dict[str, int] = {}
        self.fenced = 0
        self.recoveries: list[Recovery] = []
        self.duplicates: list[tuple[float, float]] = []  # closed (start, end) intervals
        # (observer idx, crashed idx) -> when the observer's membership declared it dead
        self.dead_seen: dict[tuple[int, int], float] = {}
        # (t, keeps with no running copy, keeps with two or more) every sample interval
        self.timeline: list[tuple[float, int, int]] = []

    # ------------------------------------------------------------ wiring

    def attach(self, proto: Any, idx: int, node_id: bytes, address: str, now: float) -> None:
        """Give a (re)started agent its MigrationMachine (its own RNG, from its id)."""
        adapter = self.sim.adapter
        signer = adapter.keyring.signer(node_id)
        eng = Migration(signer, adapter.verifier, address,
                        random.Random(hashlib.sha256(b"migration" + node_id).digest()), now,
                        default_policy=self.policy)
        proto.node.add(ObservedMigrationMachine(
            proto.node, eng, lambda subject, t: self._declared_dead(idx, subject, t)))
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
        step = self.sim.topology.sample_interval_s
        t = at
        while t <= self.sim.topology.duration_s:
            self.sim.engine.schedule(t, self._sample)
            t += step

    def _sample(self) -> None:
        """Reads the world only (no protocol input), so it cannot change a trace."""
        down = sum(1 for t in self.keeps.values() if not t.copies)
        dup = sum(1 for t in self.keeps.values() if len(t.copies) > 1)
        self.timeline.append((self.sim.engine.now, down, dup))

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
            # placed at a uniform time within one checkpoint interval, so checkpoints are
            # not synchronised across keeps (a crash would otherwise hit every keep at
            # the same phase of its interval)
            at = now + self.rng.uniform(0.0, _checkpoint_s(d))
            self.sim.engine.schedule(at, self._place_one, d)

    def _place_one(self, d: Deployment) -> None:
        now = self.sim.engine.now
        ups = self.sim.up_indices()
        if not ups:
            return
        keep = deployment_id(d)
        host = self.rng.choice(ups)
        track = KeepTrack(d, _checkpoint_s(d))
        track.copies[host] = Copy(0.0, now)
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
                track.crashed_host = idx
                track.crash_value = copy.value(now)
            self._dup(track, now)
        self.held.pop(idx, None)

    def _declared_dead(self, observer: int, subject_id: bytes, now: float) -> None:
        subject = self.sim.engine.by_id.get(subject_id, -1)
        if subject >= 0 and not self.sim.up(subject):  # only crashes (not partitions)
            self.dead_seen.setdefault((observer, subject), now)

    def _dup(self, track: KeepTrack, now: float) -> None:
        if len(track.copies) > 1 and track.dup_since is None:
            track.dup_since = now
        elif len(track.copies) <= 1 and track.dup_since is not None:
            self.duplicates.append((track.dup_since, now))
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
                    _F64.pack(copy.value(now))
                node.complete(fx.CheckpointTaken(item.keep, item.seq, now, item.final), now)
        elif isinstance(item, fx.SendCheckpoint):
            data = self.checkpoints.get((idx, item.keep), {}).get(item.seq)
            if data is not None:
                self._send(driver, item.node,
                           split(item.keep, item.epoch, "checkpoint", item.seq, now, data))
        elif isinstance(item, fx.StoreStandby):
            if item.kind == "checkpoint":
                self.held.setdefault(idx, {})[item.keep] = (
                    item.seq, item.taken_at, _F64.unpack(item.data)[0])
        elif isinstance(item, fx.DropStandby):
            self.held.get(idx, {}).pop(item.keep, None)
        elif isinstance(item, fx.StartFromCheckpoint):
            self._restore(idx, node, item, now)
        elif isinstance(item, fx.StopKeep):
            track = self.keeps.get(item.keep)
            if track is not None:
                track.copies.pop(idx, None)
                self._dup(track, now)
        elif isinstance(item, fx.PauseKeep | fx.ResumeKeep):
            track = self.keeps.get(item.keep)
            copy = track.copies.get(idx) if track is not None else None
            if copy is not None:
                if isinstance(item, fx.PauseKeep):
                    copy.pause(now)
                else:
                    copy.resume(now)
        elif isinstance(item, fx.KeepMoved):
            if item.to == node.node_id:
                self.moved += 1
                self.moved_by_trigger[item.trigger] = \
                    self.moved_by_trigger.get(item.trigger, 0) + 1
        elif isinstance(item, fx.KeepFenced):
            self.fenced += 1
        elif isinstance(item, fx.KeepOrphaned | fx.StandbyChanged | fx.DrainFinished):
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
        seq, _taken_at, value = held if item.seq > 0 and held is not None else (0, now, 0.0)
        if seq:
            self.checkpoints.setdefault((idx, item.keep), {})[seq] = _F64.pack(value)
        track.copies[idx] = Copy(value, now)
        if track.crashed_at is not None:
            crash = self.sim.metrics.crashes.get(track.crashed_host)
            self.recoveries.append(Recovery(
                item.keep, track.crashed_host, track.crashed_at, now,
                max(0.0, track.crash_value - value), track.checkpoint_s,
                self.dead_seen.get((idx, track.crashed_host)),
                crash if crash is not None and crash.at == track.crashed_at else None))
            track.crashed_at = None
        self._dup(track, now)
        node.complete(fx.KeepRestored(item.keep, item.epoch, track.deployment, True, ""), now)

    # ------------------------------------------------------------ report

    def summary(self) -> dict[str, Any]:
        now = self.sim.engine.now
        intervals = list(self.duplicates)
        open_dups = 0
        copies_at_end = {"0": 0, "1": 0, "2+": 0}
        for track in self.keeps.values():
            if track.dup_since is not None:
                intervals.append((track.dup_since, now))
                open_dups += 1
            n = len(track.copies)
            copies_at_end["0" if n == 0 else "1" if n == 1 else "2+"] += 1
        lost = [k for k, t in self.keeps.items() if not t.copies]
        orphaned = sum(1 for k in lost if self._orphaned(k))
        heals = sorted(t for t, label in self.sim.metrics.marks if label == "heal")
        after_heal = []
        for start, end in intervals:
            h = max((x for x in heals if x <= end), default=None)
            if h is not None:
                after_heal.append(end - max(start, h))
        detection = [r.crash.first_dead - r.crashed_at for r in self.recoveries
                     if r.crash is not None and r.crash.first_dead is not None]
        minus = [(r.running_at - r.crash.first_dead) for r in self.recoveries
                 if r.crash is not None and r.crash.first_dead is not None]
        own = [r.running_at - r.own_detection_at for r in self.recoveries
               if r.own_detection_at is not None]
        lost_s = [r.lost_state_s for r in self.recoveries]
        lost_iv = [r.lost_state_s / r.checkpoint_s for r in self.recoveries]
        cfg = getattr(self.sim.adapter, "config", None)
        n = max(1, self.sim.topology.agents)
        sus_min = cfg.suspicion_min(n) if cfg is not None else None
        return {
            "keeps": len(self.keeps), "moved": self.moved,
            "moved_by_trigger": dict(sorted(self.moved_by_trigger.items())),
            "recovered": self.recovered,
            "lost": len(lost), "lost_orphaned": orphaned,
            "lost_unrecovered": len(lost) - orphaned,
            "copies_at_end": copies_at_end,
            "fenced": self.fenced,
            "recovery_s": _quantiles([r.running_at - r.crashed_at for r in self.recoveries]),
            "detection_s": _quantiles(detection),
            "recovery_minus_detection_s": _quantiles(minus),
            "recovery_minus_own_detection_s": {**_quantiles(own), "n": len(own)},
            "lost_state_s": {**_quantiles(lost_s),
                             "checkpoint_intervals_p50": _quantiles(lost_iv)["p50"],
                             "checkpoint_intervals_max": _quantiles(lost_iv)["max"]},
            "duplicate_s": {"max": round(max((e - s for s, e in intervals), default=0.0), 3),
                            "count": len(intervals), "open_at_end": open_dups,
                            "after_heal_max": round(max(after_heal), 3) if after_heal else None,
                            "after_heal_count": len(after_heal)},
            "reference": {
                "checkpoint_s": sorted({t.checkpoint_s for t in self.keeps.values()}),
                "suspicion_min_s": sus_min,
                "suspicion_max_s": (sus_min * cfg.suspicion_max_timeout_mult
                                    if cfg is not None and sus_min is not None else None),
                "heals_at_s": heals},
        }

    def _orphaned(self, keep: str) -> bool:
        """World truth for a keep with no copy: the host and every standby named by the
        newest record any live agent holds are down (k = 1: a stated limit), so nobody
        can restart it. Not taken from KeepOrphaned: only a live holder reports that."""
        best = None
        for node in self.sim.engine.nodes:
            if not node.up or node.proto is None:
                continue
            mm = node.proto.node.machine(MigrationMachine)
            loc = mm.engine.locations.get(keep) if isinstance(mm, MigrationMachine) else None
            if loc is not None and (best is None or (loc.epoch, loc.version) >
                                    (best.epoch, best.version)):
                best = loc
        if best is None:
            return True
        by_id = self.sim.engine.by_id
        return all(not self.sim.up(by_id[n]) for n in (best.host, *best.standbys)
                   if n in by_id)

    def raw(self) -> dict[str, Any]:
        """Per-event data behind the summary (for plots: simulations/plots.py)."""
        now = self.sim.engine.now
        dups = list(self.duplicates) + [(t.dup_since, now) for t in self.keeps.values()
                                        if t.dup_since is not None]
        return {
            "recoveries": [{
                "crashed_at": r.crashed_at, "running_at": r.running_at,
                "first_suspect_at": r.crash.first_suspect if r.crash is not None else None,
                "first_dead_at": r.crash.first_dead if r.crash is not None else None,
                "dead_everywhere_at": r.crash.dead_everywhere if r.crash is not None else None,
                "own_detection_at": r.own_detection_at,
                "lost_state_s": r.lost_state_s, "checkpoint_s": r.checkpoint_s}
                for r in self.recoveries],
            "duplicates": [{"start": a, "end": b, "open": b == now and any(
                t.dup_since == a for t in self.keeps.values())} for a, b in sorted(dups)],
            "timeline": self.timeline,
            "marks": self.sim.metrics.marks,
            "summary": self.summary(),
        }

    @property
    def recovered(self) -> int:
        return len(self.recoveries)


def _checkpoint_s(deployment: Deployment) -> float:
    """The checkpoint interval the engine itself applies to this deployment."""
    return float(settings_of(deployment).checkpoint_s)


def _quantiles(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"p50": None, "p99": None, "max": None}
    s = sorted(xs)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, max(0, math.ceil(p * len(s)) - 1))], 3)
    return {"p50": q(0.5), "p99": q(0.99), "max": round(s[-1], 3)}
