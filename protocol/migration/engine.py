"""`Migration`: one agent's migration state, composing standbys, triggers, fencing
and hand-overs. Sans-IO: inputs carry `now`, outputs are typed effects and events.

Why one object per agent: MeshNode plugs it in next to membership and
placement; the agent's trio driver and the simulator carry out its effects
(send a message, take a checkpoint, start a keep from a checkpoint, stop a
copy) and report results back. Nothing here touches the network, the disk
or the clock.

Inputs: membership events and verified evidence (`member_*`), this agent's
own evidence (`own_evidence`), keeps started or stopped here by placement or
the owner (`keep_running`, `keep_gone`), migrate.* messages (`receive`),
results (`standby_attested`, `checkpoint_taken`, `keep_started`), commands
(`drain`, `move`) and timers. Outputs: `next_output()`.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ..attestation.policy import Policy, load_policy
from ..deployment import Deployment, verify_deployment
from ..errors import ProtocolError, VerificationError
from ..membership.signing import RecordSigner, RecordVerifier
from ..wire import Message, decode_payload, encode_payload
from . import effects as fx
from .drain import Outgoing, Step
from .effects import (
    DrainFinished,
    Effect,
    Event,
    KeepFenced,
    KeepMoved,
    KeepOrphaned,
    ResumeKeep,
    Send,
    StandbyChanged,
    StartFromCheckpoint,
    StopKeep,
)
from .location import (
    MAX_KEEPS_TRACKED,
    Learned,
    LocationTable,
    StaleEpoch,
    decode_location,
    sign_location,
    verify_location,
)
from .messages import (
    MAX_EPOCH,
    MIGRATE_MESSAGES,
    Ack,
    Fenced,
    Handover,
    HandoverDone,
    Location,
    LocationStatement,
    Replicate,
    Transfer,
)
from .settings import MigrationSettings
from .standby import Holdings, Replication
from .triggers import Attested, Verdict, must_move, successor, trust_failure

NodeId = bytes
MAX_MESSAGE = 1024 * 1024
FANOUT = 3
"""Members a new or changed location record is pushed to (each forwards once)."""
REFRESH_S = 10.0
"""A host re-pushes its own records this often (anti-entropy for lost pushes)."""
EVAL_S = 1.0
"""Verdicts are re-evaluated at least this often (evidence expires with time)."""
TRUST_GRACE_S = 10.0
"""A live host that lost trust gets this long to hand its keeps over itself before
its standbys take over from their last checkpoint."""
START_TIMEOUT_S = 30.0
MAX_ORPHANED = MAX_KEEPS_TRACKED
"""Bound on the keeps remembered as reported orphaned (one entry per keep, at the epoch
it was reported): entries leave when the keep's best record moves past that epoch, is
stopped or is forgotten, so they stay within the location table's bound; at the cap the
oldest entry goes (its keep may be reported once more)."""
Output = Effect | Event


class StandbyPlacement(Protocol):
    """Placement's part in standbys (protocol/migration/machine.py wires the node's
    PlacementMachine in). Without it any live member satisfying the policy may be a
    standby and no capacity is held for it."""

    def hosts_for(self, deployment: Deployment, now: float) -> Collection[NodeId]:
        """Members placement would place this deployment on: alive, claims meeting the
        signed policy, labels, advertised room."""
        ...

    def hold(self, keep: str, deployment: Deployment, now: float) -> str | None:
        """Reserve (or renew) this host's capacity for a standby of `keep`: None when
        held, else the one-line reason the lease table refused."""
        ...

    def release(self, keep: str, now: float) -> None:
        """The standby role ended here: give an uncommitted hold back."""
        ...

    def promote(self, keep: str, epoch: int, deployment: Deployment, now: float) -> None:
        """The keep now runs here at `epoch`: its hold becomes the running keep's lease."""
        ...


@dataclass
class Running:
    """A keep this agent runs."""

    keep: str
    epoch: int
    policy: Policy
    settings: MigrationSettings
    replication: Replication
    owner: bytes
    version: int = 0
    outgoing: Outgoing | None = None
    deployment: Deployment | None = None
    record: Location | None = None  # the newest record this host signed for it


@dataclass
class Starting:
    """A promotion or hand-over in flight here (StartFromCheckpoint sent)."""

    keep: str
    epoch: int
    trigger: str
    from_host: NodeId | None
    reply_to: NodeId | None
    seq: int
    since: float
    taken_at: float = 0.0  # when checkpoint `seq` was taken (its old host's clock)


@dataclass
class _View:
    live: dict[NodeId, bool] = field(default_factory=dict)
    evidence: dict[NodeId, Attested] = field(default_factory=dict)

    def is_live(self, node: NodeId) -> bool:
        return self.live.get(node, False)

    def attested(self, node: NodeId) -> Attested | None:
        return self.evidence.get(node)


def _material(learned: Learned) -> bool:
    """A change others must hear about now: host, epoch, standbys or state."""
    p, loc = learned.previous, learned.location
    return p is None or (p.host, p.epoch, p.standbys, p.state) != \
        (loc.host, loc.epoch, loc.standbys, loc.state)


def policy_of(deployment: Deployment, default: Policy) -> Policy:
    """The deployment's signed policy (the agent's default when it carries none)."""
    if not deployment.policy:
        return default
    return load_policy(deployment.policy, "deployment policy")


def settings_of(deployment: Deployment) -> MigrationSettings:
    """`[migration]` from the signed manifest (defaults when the manifest has none)."""
    spec = deployment.manifest.migration
    return MigrationSettings() if spec is None else spec.settings()


class Migration:
    """See module docstring. Not thread-safe; one driver task feeds it."""

    prefix = b"migrate."

    def __init__(self, signer: RecordSigner, verifier: RecordVerifier, address: str,
                 rng: random.Random, now: float, *, default_policy: Policy) -> None:
        self.signer = signer
        self.verifier = verifier
        self.own_id: NodeId = signer.node_id
        self.address = address
        self.rng = rng
        self.default_policy = default_policy
        self.locations = LocationTable()
        self.holdings = Holdings(self.own_id)
        self.running: dict[str, Running] = {}
        self.starting: dict[str, Starting] = {}
        self.view = _View({self.own_id: True})
        self.draining = False
        self.drain_moved: list[KeepMoved] = []
        self.drain_failed: list[tuple[str, str]] = []
        self._drain_keeps: set[str] = set()
        self._trust_since: dict[str, float] = {}
        self._policies: dict[str, Policy] = {}
        self._orphaned: dict[str, int] = {}  # keep -> epoch it was reported orphaned at
        self.max_orphaned = MAX_ORPHANED
        self._out: deque[Output] = deque()
        self._next_refresh = now + REFRESH_S
        self._next_eval = now + EVAL_S
        self.dropped = 0
        self.last_drop = ""
        self.placement: StandbyPlacement | None = None
        self._holds: dict[str, tuple[NodeId, int]] = {}  # keep -> (host, epoch) held for

    # ============================================================ views

    def member_state(self, node: NodeId, live: bool, now: float, *,
                     rejoined: bool = False) -> None:
        """Membership's verdict on `node` (alive/suspect: live; dead/left: not).

        `rejoined`: it came back with a new incarnation (a restart); it is sent
        the records that name it as host, so a restarted host that lost its
        keeps says so (state "lost") and their standbys take over.
        """
        was = self.view.live.get(node)
        if live and rejoined and node != self.own_id:
            for loc in self.locations.hosted_by(node):
                self._out.append(Send(node, loc))
        self.view.live[node] = live
        if not live:
            self.holdings.reassembler.forget_sender(node)
            for r in self.running.values():
                og = r.outgoing
                if og is not None and og.successor == node:
                    og.successor_died()
        elif not was:
            self._push_own(now, to=[node])
        self._evaluate(now)

    def member_evidence(self, node: NodeId, att: Attested | None, now: float) -> None:
        """Verified evidence for `node` (None: failed, expired or revoked)."""
        if att is None:
            self.view.evidence.pop(node, None)
        else:
            self.view.evidence[node] = att
        self._evaluate(now)

    def forget_member(self, node: NodeId) -> None:
        """Membership forgot `node` (reaped long after it was declared dead or left):
        drop its liveness and evidence, which would otherwise grow with every member
        identity ever seen. It counts as not live, as it did while dead."""
        if node == self.own_id:
            return
        self.view.live.pop(node, None)
        self.view.evidence.pop(node, None)

    def own_evidence(self, att: Attested | None, now: float) -> None:
        """This agent's own evidence, re-verified (a TCB rollback shows up here).

        Keeps whose deployment policy it no longer satisfies are handed over;
        the others stay.
        """
        self.member_evidence(self.own_id, att, now)
        for r in list(self.running.values()):
            if r.outgoing is None and trust_failure(r.policy, self.view, self.own_id,
                                                    now) is not None:
                self.move(r.keep, "trust", now)

    # ============================================================ keeps here

    def keep_running(self, deployment: Deployment, epoch: int, now: float, *,
                     seq: int = 0, taken_at: float = 0.0) -> str:
        """A keep now runs here (placed here, or restored by `keep_started` from checkpoint
        `seq`, taken at `taken_at`: the record's last_checkpoint names both)."""
        from ..deployment import deployment_id
        keep = deployment_id(deployment)
        spec = deployment.manifest.placement
        if spec is not None and spec.replicas > 1:
            # Replicas are copies by design, placed by placement: one location record per
            # keep would fence all but one of them. Not migrated (specs/migration.md §12).
            return keep
        cur = self.running.get(keep)
        if cur is not None and cur.epoch >= epoch:
            return keep  # already known (a repeated notice)
        policy = policy_of(deployment, self.default_policy)
        settings = settings_of(deployment)
        rep = Replication(keep, epoch, self.own_id, policy, settings, now, seq=seq)
        if seq:
            rep.taken_at[seq] = taken_at
        self.running[keep] = Running(keep, epoch, policy, settings, rep, deployment.owner_key,
                                     deployment=deployment)
        self._policies[keep] = policy
        self._announce(self.running[keep], now)
        best = self.locations.get(keep)
        if best is not None and best.host != self.own_id:
            # A superseding record arrived while this copy was starting: the rule
            # applies to it like to any other copy.
            self._fence(self.running[keep], best, now)
            return keep
        self._reconcile(self.running[keep], now)
        return keep

    def keep_gone(self, keep: str, now: float, *, lost: bool = False) -> None:
        """The keep stopped here: by its owner (`stopped`) or involuntarily (`lost`)."""
        r = self.running.pop(keep, None)
        if r is None:
            return
        r.version += 1
        self._announce(r, now, state="lost" if lost else "stopped")
        # A drain waiting on it would never finish: stopped by its owner it no longer
        # needs a new host (neither moved nor failed); lost here, it did not move.
        if lost:
            self._drain_note(keep, None, "the keep stopped here before it moved")
        elif keep in self._drain_keeps:
            self._drain_keeps.discard(keep)
            self._check_drain()

    # ============================================================ commands

    def drain(self, now: float) -> None:
        """Hand every keep over; finish with DrainFinished."""
        self.draining = True
        self._drain_keeps = set(self.running)
        self.drain_moved, self.drain_failed = [], []
        nothing = not self._drain_keeps
        for keep in list(self.running):
            self.move(keep, "drain", now)  # may finish the drain (a keep that cannot move)
        if nothing:
            self._check_drain()

    def move(self, keep: str, trigger: str, now: float) -> None:
        r = self.running.get(keep)
        if r is None or r.outgoing is not None:
            return
        if r.epoch > MAX_EPOCH - 2:
            # The successor would run at epoch + 1, and a failed hand-over resumes here at
            # epoch + 2: an epoch the wire cannot carry makes every later message about
            # the keep undecodable. The keep stays here, serving.
            self._drain_note(keep, None, f"epoch {r.epoch} at the wire's ceiling: "
                                         "the keep cannot move")
            return
        r.outgoing = Outgoing(keep, r.epoch, trigger, now)
        self._advance(r, now)

    # ============================================================ messages

    def receive(self, data: bytes, src_id: NodeId | None, now: float) -> None:
        """One migrate.* message from an attested peer. Bad input is counted and dropped."""
        if src_id is None:
            self._drop("migrate message on an unattested channel")
            return
        try:
            msg = decode_payload(data, MAX_MESSAGE, MIGRATE_MESSAGES)
            self._dispatch(src_id, msg, now)
        except (ProtocolError, VerificationError) as err:
            self._drop(err.reason)

    def _drop(self, why: str) -> None:
        self.dropped += 1
        self.last_drop = why

    def _dispatch(self, src: NodeId, msg: Message, now: float) -> None:
        if isinstance(msg, Location):
            self.learn(msg, now, src=src)
        elif isinstance(msg, Fenced):
            loc = decode_payload(msg.location, 4096, (Location,))
            assert isinstance(loc, Location)
            self.learn(loc, now, src=src)
        elif isinstance(msg, Replicate):
            self._on_replicate(src, msg, now)
        elif isinstance(msg, Transfer):
            self._emit(self.holdings.on_transfer(src, msg, self.locations))
        elif isinstance(msg, Ack):
            self._on_ack(src, msg, now)
        elif isinstance(msg, Handover):
            self._on_handover(src, msg, now)
        elif isinstance(msg, HandoverDone):
            self._on_handover_done(src, msg, now)

    def admit(self, keep: str, epoch: int | None, location: bytes | None, now: float,
              src: NodeId | None = None) -> int | None:
        """May a message addressed to `keep` at `epoch` (keeps.call, keeps.stop) be served
        by this member's copy? The epoch served, or None when migration does not track the
        keep here or anywhere (the caller serves it as before). Raises StaleEpoch when
        another epoch or host is current, ProtocolError on an unproven or bad claim.

        `location` is the sender's signed record for the keep (an encoded
        migrate.location): it is learned first, so a message from a newer epoch
        fences this copy on arrival (the rule of §3) and is refused. A claimed
        epoch above this copy's without a record proving it is refused and fences
        nothing: an unsigned number from a client cannot stop a keep.
        `src`, an attested member, is sent our newer record when its epoch is stale.
        """
        if location is not None:
            try:
                self.learn(decode_location(location, self.verifier), now)
            except VerificationError as err:
                raise ProtocolError(f"keeps: location record refused: {err.reason}") from None
        r = self.running.get(keep)
        best = self.locations.get(keep)
        if r is None:
            if best is None or best.state != "running":
                return None
            if src is not None:
                self._out.append(Send(src, best))
            raise StaleEpoch(f"keep {keep} runs at epoch {best.epoch} on another host")
        if r.outgoing is not None and r.outgoing.step is Step.DONE:
            raise StaleEpoch(f"keep {keep} moved at epoch {r.epoch + 1}")
        if epoch is None or epoch == r.epoch:
            return r.epoch
        if epoch < r.epoch:
            if src is not None and best is not None:
                self._out.append(Send(src, best))
            raise StaleEpoch(f"keep {keep}: epoch {epoch} is stale, it runs at {r.epoch}")
        raise ProtocolError(f"keep {keep}: epoch {epoch} above the running copy's "
                            f"{r.epoch} and no location record proves it")

    def _on_replicate(self, src: NodeId, msg: Replicate, now: float) -> None:
        out = self.holdings.on_replicate(src, msg, self.locations)
        h = self.holdings.held.get(msg.keep)
        accepted = h is not None and h.host == src and h.epoch == msg.epoch and any(
            isinstance(o, Send) and isinstance(o.message, Ack) and o.message.ok for o in out)
        if accepted and self.placement is not None:
            why = self._hold(msg.keep, now)
            if why is not None:
                out = self._drop_holding(msg.keep)
                out += [Send(src, Ack(keep=msg.keep, epoch=msg.epoch, kind="replicate", seq=0,
                                     ok=False, reason=f"no room for a standby: {why}"[:200]))]
            else:
                self._holds[msg.keep] = (src, msg.epoch)
        self._emit(out)

    def _hold(self, keep: str, now: float) -> str | None:
        """Reserve or renew this host's lease for a standby of `keep` (placement)."""
        h = self.holdings.held.get(keep)
        if self.placement is None or h is None:
            return None
        try:
            d = decode_payload(h.deployment, 256 * 1024, (Deployment,))
            assert isinstance(d, Deployment)
            verify_deployment(d, [d.owner_key])
        except (ProtocolError, VerificationError) as err:
            return f"deployment refused: {err.reason}"
        return self.placement.hold(keep, d, now)

    def _renew_holds(self, now: float) -> None:
        """Standby holds live as long as the keep's host still counts on us: while its
        record names that host at that epoch. A hold whose keep moved on without us, that
        no record names (nobody claims to run it), or that placement refuses to renew is
        given back."""
        if self.placement is None:
            return
        for keep, (host, epoch) in list(self._holds.items()):
            best = self.locations.get(keep)
            h = self.holdings.held.get(keep)
            gone = h is None or (h.host, h.epoch) != (host, epoch) or best is None or (
                best.host != self.own_id
                and (best.epoch > epoch or best.host != host or best.state == "stopped"))
            if gone or self._hold(keep, now) is not None:
                del self._holds[keep]
                if keep not in self.running and keep not in self.starting:
                    self.placement.release(keep, now)

    def _forget_stale_holdings(self) -> None:
        """Drop what this member holds for keeps that can no longer use it: the keep's
        best record is stopped by its owner, or names another host or epoch (it moved on;
        a take-over needs a holding from the record's own host and epoch, and a new host
        that wants us replicates afresh). Why: nothing else ever removed a holding but a
        take-over here, so every keep a standby ever served stayed held (with its
        deployment bytes) until MAX_HELD, and then every new replicate was refused."""
        for keep, h in list(self.holdings.held.items()):
            best = self.locations.get(keep)
            if best is None or keep in self.starting:
                continue
            if best.state == "stopped" or (best.host, best.epoch) != (h.host, h.epoch):
                self._emit(self._drop_holding(keep))
                self._trust_since.pop(keep, None)
                if keep not in self.running:
                    self._policies.pop(keep, None)

    def _drop_holding(self, keep: str) -> list[Effect]:
        """Forget what this member holds for `keep` as a standby, and have the driver
        delete what it stored (none while a start from it is in flight here)."""
        held = keep in self.holdings.held
        self.holdings.drop(keep)
        if not held or keep in self.starting:
            return []
        return [fx.DropStandby(keep)]

    def check_epoch(self, keep: str, epoch: int) -> Fenced | None:
        """For any message addressed to `keep` at `epoch`: None to serve it, or the
        `migrate.fenced` reply naming the current location when `epoch` is stale."""
        if self.locations.is_current(keep, epoch):
            return None
        best = self.locations.get(keep)
        assert best is not None
        return Fenced(location=encode_payload(best))

    # ------------------------------------------------------------ locations

    def learn(self, loc: Location, now: float, src: NodeId | None = None) -> Learned:
        """A location record (gossip, fenced reply); applies the fencing rule."""
        verify_location(self.verifier, loc)
        learned = self.locations.learn(loc)
        mine = self.running.get(loc.keep)
        if mine is not None and loc.host == self.own_id and loc.epoch == mine.epoch \
                and loc.version >= mine.version and loc != mine.record:
            # Our own record from an earlier run of this host (it restarted the keep at
            # the same epoch, its versions from 0): ours would never supersede it, and
            # the mesh would keep that run's standbys and checkpoint. Sign above it.
            mine.version = loc.version + 1
            self._announce(mine, now)
            learned = Learned(self.locations.get(loc.keep) or loc, learned.previous, False)
        if not learned.changed:
            best = learned.location
            if src is not None and best != loc and best.epoch >= loc.epoch:
                # The sender holds a superseded record: answer with ours at once, so the
                # two sides of a healed split converge in one exchange.
                self._out.append(Send(src, best))
            return learned
        if _material(learned):
            self._forward(loc, exclude=src)  # checkpoint-only refreshes are not forwarded
        keep = loc.keep
        self._orphan_settled(keep)
        r = self.running.get(keep)
        if r is not None and loc.host != self.own_id:
            og = r.outgoing
            moved_away = og is not None and og.located(loc.host, loc.epoch)
            if moved_away and og is not None and og.step is Step.DONE:
                self._finish_outgoing(r, now)
            else:
                self._fence(r, loc, now)
        if loc.host == self.own_id and keep not in self.running and keep not in \
                self.starting and loc.state == "running":
            # A record about us we do not honour (e.g. we restarted): say so, so the
            # standbys take over instead of waiting for a copy that is not there.
            self._announce_raw(keep, loc.owner, loc.epoch, loc.version + 1, loc.standbys,
                               loc.checkpoint_seq,
                               loc.checkpoint_at, "lost", now)
        self._evaluate(now)
        return learned

    def _fence(self, r: Running, winner: Location, now: float) -> None:
        del self.running[r.keep]
        self._out.append(StopKeep(r.keep, r.epoch, "fenced", winner.host))
        self._out.append(KeepFenced(r.keep, r.epoch, winner.host, winner.epoch,
                                    r.replication.newest_seq()))
        self._drain_note(r.keep, None, f"fenced by epoch {winner.epoch}")

    def _announce(self, r: Running, now: float, state: str = "running", *,
                  material: bool = True) -> None:
        """Sign and spread this host's record. `material=False` (only the checkpoint
        moved): to the standbys alone; the periodic re-push carries it further."""
        seq, at = r.replication.last_checkpoint()
        r.record = self._announce_raw(r.keep, r.owner, r.epoch, r.version,
                                      r.replication.ready(), seq, at, state, now,
                                      material=material)

    def _announce_raw(self, keep: str, owner: bytes, epoch: int, version: int,
                      standbys: tuple[bytes, ...], seq: int, at: float, state: str,
                      now: float, *, material: bool = True) -> Location:
        st = LocationStatement(keep=keep, owner=owner, host=self.own_id, address=self.address,
                               epoch=epoch,
                               version=version, standbys=standbys,
                               checkpoint_seq=seq,
                               checkpoint_at=at, state=state)
        loc = sign_location(self.signer, st)
        self.locations.learn(loc)
        self._orphan_settled(keep)
        for n in standbys:  # the standbys must know, whatever the random fanout picks
            self._out.append(Send(n, loc))
        if material:
            self._forward(loc, exclude=None, skip=standbys)
        return loc

    def _forward(self, loc: Location, exclude: NodeId | None,
                 skip: tuple[NodeId, ...] = ()) -> None:
        peers = [n for n, live in self.view.live.items()
                 if live and n != self.own_id and n != exclude and n not in skip]
        peers.sort()
        for n in self.rng.sample(peers, min(FANOUT, len(peers))):
            self._out.append(Send(n, loc))

    def _push_own(self, now: float, to: Iterable[NodeId] | None = None) -> None:
        mine = list(self.locations.hosted_by(self.own_id))
        targets = list(to) if to is not None else None
        for loc in mine:
            if targets is None:
                self._forward(loc, exclude=None)
            else:
                for n in targets:
                    self._out.append(Send(n, loc))

    # ------------------------------------------------------------ standbys

    def _reconcile(self, r: Running, now: float) -> None:
        before = r.replication.ready()
        candidates = [n for n, live in self.view.live.items() if live]
        if self.placement is not None and r.deployment is not None:
            # Placement names who could run this deployment (policy claims, labels,
            # room); the HRW ranking then picks among them, so successors stay predictable.
            allowed = set(self.placement.hosts_for(r.deployment, now))
            candidates = [n for n in candidates if n in allowed]
        self._emit(r.replication.reconcile(self.view, candidates, now, self.rng))
        if r.replication.ready() != before:
            self._standbys_changed(r, now)

    def _standbys_changed(self, r: Running, now: float) -> None:
        r.version += 1
        self._announce(r, now)
        self._out.append(StandbyChanged(r.keep, r.replication.ready()))

    def standby_attested(self, keep: str, node: NodeId, nonce: bytes, att: Attested | None,
                         now: float) -> None:
        r = self.running.get(keep)
        if r is None:
            return
        out = r.replication.attested(node, nonce, att, now)
        own = self.locations.get(keep)
        if out and own is not None and own.host == self.own_id:
            # The signed record first (same ordered lane): a standby still running an
            # older copy of the keep is fenced by it before it stores the replica.
            self._out.append(Send(node, own))
        self._emit(out)
        if r.replication.links.get(node) is None or \
                r.replication.links[node].state.value == "failed":
            self._reconcile(r, now)

    def _on_ack(self, src: NodeId, ack: Ack, now: float) -> None:
        r = self.running.get(ack.keep)
        if r is None:
            return
        before = r.replication.ready()
        old_seq = r.replication.last_checkpoint()[0]
        self._emit(r.replication.acked(src, ack, now))
        if r.replication.ready() != before:
            self._standbys_changed(r, now)
        elif r.replication.last_checkpoint()[0] != old_seq:
            r.version += 1
            self._announce(r, now, material=False)
        if not ack.ok:
            self._reconcile(r, now)
        og = r.outgoing
        if og is not None and ack.ok and ack.kind == "checkpoint":
            self._emit(og.acked(src, ack.seq, now))
        if og is not None and og.step is Step.WAIT_STANDBY:
            self._advance(r, now)

    def checkpoint_taken(self, keep: str, seq: int, taken_at: float, now: float, *,
                         final: bool = False) -> None:
        """The driver serialised checkpoint `seq` (bytes stay with the driver); `final`
        answers TakeCheckpoint(final=True), taken after the keep was paused."""
        r = self.running.get(keep)
        if r is None:
            return
        self._emit(r.replication.checkpoint_taken(seq, taken_at, now))
        if r.outgoing is not None and final:
            r.outgoing.checkpoint_taken(seq)
            self._advance(r, now)

    def checkpoint_failed(self, keep: str, reason: str, now: float) -> None:
        r = self.running.get(keep)
        if r is None:
            return
        r.replication.checkpoint_pending = False
        og = r.outgoing
        if og is not None and og.step is Step.CHECKPOINT:
            og.step = Step.FAILED
            og.reason = f"final checkpoint failed: {reason}"
            self._finish_outgoing(r, now)

    # ------------------------------------------------------------ hand-over

    def _ready_eligible(self, r: Running, now: float) -> list[NodeId]:
        return [n for n in r.replication.ready()
                if self.view.is_live(n) and trust_failure(r.policy, self.view, n, now) is None]

    def _advance(self, r: Running, now: float) -> None:
        og = r.outgoing
        if og is None:
            return
        seq = r.replication.request_seq() if og.seq < 0 and og.step is Step.WAIT_STANDBY \
            else 0
        self._emit(og.advance(self._ready_eligible(r, now), now, seq))
        if og.step is Step.SHIP and og.successor is not None and og.seq >= 0:
            link = r.replication.links.get(og.successor)
            if link is not None and link.acked_seq >= og.seq:
                self._emit(og.acked(og.successor, link.acked_seq, now))

    def _on_handover(self, src: NodeId, msg: Handover, now: float) -> None:
        def refuse(why: str) -> None:
            self._out.append(Send(src, HandoverDone(keep=msg.keep, epoch=msg.epoch, ok=False,
                                                    reason=why)))
        r = self.running.get(msg.keep)
        if r is not None and r.epoch == msg.epoch:
            self._out.append(Send(src, HandoverDone(keep=msg.keep, epoch=msg.epoch, ok=True,
                                                    reason="")))
            return
        if msg.keep in self.starting:
            return  # answered when the start completes
        best = self.locations.get(msg.keep)
        if best is not None and (best.epoch > msg.from_epoch or best.host != src):
            refuse(f"keep runs at epoch {best.epoch} elsewhere")
            return
        h = self.holdings.restorable(msg.keep)
        if h is None or h.host != src or h.epoch != msg.from_epoch:
            refuse("no replica from this host at this epoch")
            return
        if h.seq != msg.seq:
            refuse(f"holding checkpoint {h.seq}, not {msg.seq}")
            return
        if self.draining:
            refuse("draining")
            return
        self.starting[msg.keep] = Starting(msg.keep, msg.epoch, msg.trigger, src, src,
                                           msg.seq, now, h.taken_at)
        self._out.append(StartFromCheckpoint(msg.keep, msg.epoch, msg.seq))

    def _on_handover_done(self, src: NodeId, msg: HandoverDone, now: float) -> None:
        r = self.running.get(msg.keep)
        if r is None or r.outgoing is None:
            return
        og = r.outgoing
        self._emit(og.answered(src, msg.epoch, msg.ok, msg.reason,
                               self._ready_eligible(r, now), now))
        if og.finished():
            self._finish_outgoing(r, now)

    def _finish_outgoing(self, r: Running, now: float) -> None:
        og = r.outgoing
        assert og is not None
        if og.step is Step.DONE:
            assert og.successor is not None
            self.running.pop(r.keep, None)
            self._out.append(StopKeep(r.keep, r.epoch, "moved", og.successor))
            ev = KeepMoved(r.keep, self.own_id, og.successor, r.epoch + 1, og.trigger)
            self._out.append(ev)
            self._drain_note(r.keep, ev, "")
            return
        r.outgoing = None
        if og.resume_epoch is not None:
            r.epoch = og.resume_epoch
            r.version = 0
            r.replication = Replication(r.keep, r.epoch, self.own_id, r.policy, r.settings,
                                        now, seq=r.replication.seq)
            self._announce(r, now)
            self._reconcile(r, now)
        if og.paused:
            self._out.append(ResumeKeep(r.keep))
        self._drain_note(r.keep, None, og.reason or "hand-over failed")

    def _drain_note(self, keep: str, moved: KeepMoved | None, failure: str) -> None:
        if keep not in self._drain_keeps:
            return
        self._drain_keeps.discard(keep)
        if moved is not None:
            self.drain_moved.append(moved)
        else:
            self.drain_failed.append((keep, failure))
        self._check_drain()

    def _check_drain(self) -> None:
        if self.draining and not self._drain_keeps:
            self._out.append(DrainFinished(tuple(self.drain_moved), tuple(self.drain_failed)))
            self._drain_keeps = set()
            self.draining = bool(self.running)  # still draining if something stayed

    # ------------------------------------------------------------ promotion

    def keep_started(self, keep: str, epoch: int, deployment: Deployment | None, ok: bool,
                     reason: str, now: float) -> None:
        """Result of StartFromCheckpoint."""
        st = self.starting.get(keep)
        if st is None or st.epoch != epoch:
            return
        del self.starting[keep]
        if not ok or deployment is None:
            if st.reply_to is not None:
                self._out.append(Send(st.reply_to, HandoverDone(
                    keep=keep, epoch=epoch, ok=False, reason=reason[:200] or "start failed")))
            self._out.append(KeepOrphaned(keep, st.from_host or self.own_id,
                                          f"restore failed here: {reason[:200]}"))
            return
        self.keep_running(deployment, epoch, now, seq=st.seq, taken_at=st.taken_at)
        self._emit(self._drop_holding(keep))  # restored: the standby copy has served
        self._holds.pop(keep, None)
        if self.placement is not None:
            self.placement.promote(keep, epoch, deployment, now)
        self._out.append(KeepMoved(keep, st.from_host, self.own_id, epoch, st.trigger))
        if st.reply_to is not None:
            self._out.append(Send(st.reply_to, HandoverDone(keep=keep, epoch=epoch, ok=True,
                                                            reason="")))

    def _policy_for_held(self, keep: str) -> Policy | None:
        p = self._policies.get(keep)
        if p is not None:
            return p
        h = self.holdings.held.get(keep)
        if h is None:
            return None
        try:
            msg = decode_payload(h.deployment, 256 * 1024, (Deployment,))
            assert isinstance(msg, Deployment)
            verify_deployment(msg, [msg.owner_key])
            p = policy_of(msg, self.default_policy)
        except (ProtocolError, VerificationError):
            return None
        self._policies[keep] = p
        return p

    def _evaluate(self, now: float) -> None:
        """Standby duty: take over keeps whose host died or lost trust, if we are the
        successor this view names."""
        for keep, h in list(self.holdings.held.items()):
            if keep in self.running or keep in self.starting:
                continue
            loc = self.locations.get(keep)
            if loc is None or loc.host != h.host or loc.epoch != h.epoch:
                continue
            policy = self._policy_for_held(keep)
            if policy is None:
                continue
            verdict = must_move(loc, policy, self.view, now)
            if verdict is None:
                self._trust_since.pop(keep, None)
                continue
            if verdict.trigger == "trust":
                since = self._trust_since.setdefault(keep, now)
                if now - since < TRUST_GRACE_S:
                    continue
            self._take_over(loc, verdict, policy, now)

    def _take_over(self, loc: Location, verdict: Verdict, policy: Policy, now: float) -> None:
        nxt = successor(loc, policy, self.view, now)
        why = "no eligible standby" if nxt is None else None
        if loc.epoch >= MAX_EPOCH:
            # epoch + 1 cannot be encoded (a host signed its record at the ceiling): no
            # standby takes over, else every later message about the keep is undecodable
            why = f"epoch {loc.epoch} at the wire's ceiling: no standby can take over"
        if why is not None:
            if self._orphaned.get(loc.keep) != loc.epoch:  # say it once per epoch
                self._note_orphaned(loc.keep, loc.epoch)
                self._out.append(KeepOrphaned(loc.keep, loc.host, why))
            return
        if nxt != self.own_id:
            return
        h = self.holdings.restorable(loc.keep)
        if h is None:
            return
        epoch = loc.epoch + 1
        self.starting[loc.keep] = Starting(loc.keep, epoch, verdict.trigger, loc.host, None,
                                           h.seq, now, h.taken_at)
        self._out.append(StartFromCheckpoint(loc.keep, epoch, h.seq))

    def _note_orphaned(self, keep: str, epoch: int) -> None:
        self._orphaned.pop(keep, None)
        if len(self._orphaned) >= self.max_orphaned:
            self._prune_orphaned()
            while self._orphaned and len(self._orphaned) >= self.max_orphaned:
                del self._orphaned[next(iter(self._orphaned))]  # the oldest report
        self._orphaned[keep] = epoch

    def _orphan_settled(self, keep: str) -> None:
        """Forget that `keep` was reported orphaned once its best record no longer
        names that epoch as running or lost: it moved past it, was stopped, or is
        forgotten. Why: the set kept every (keep, epoch) ever reported, for good."""
        epoch = self._orphaned.get(keep)
        if epoch is None:
            return
        best = self.locations.get(keep)
        if best is None or best.epoch != epoch or best.state == "stopped":
            del self._orphaned[keep]

    def _prune_orphaned(self) -> None:
        for keep in list(self._orphaned):
            self._orphan_settled(keep)

    # ============================================================ typed inputs

    def complete(self, result: object, now: float) -> bool:
        """A typed completion (effects.Completion); False when it is not migration's."""
        if isinstance(result, fx.StandbyAttested):
            att = result.evidence if isinstance(result.evidence, Attested) else None
            self.standby_attested(result.keep, result.node, result.nonce, att, now)
        elif isinstance(result, fx.CheckpointTaken):
            self.checkpoint_taken(result.keep, result.seq, result.taken_at, now,
                                  final=result.final)
        elif isinstance(result, fx.CheckpointFailed):
            self.checkpoint_failed(result.keep, result.reason, now)
        elif isinstance(result, fx.KeepRestored):
            d = result.deployment if isinstance(result.deployment, Deployment) else None
            self.keep_started(result.keep, result.epoch, d, result.ok, result.reason, now)
        elif isinstance(result, fx.MemberEvidence):
            att = result.evidence if isinstance(result.evidence, Attested) else None
            self.member_evidence(result.node, att, now)
        elif isinstance(result, fx.OwnEvidence):
            att = result.evidence if isinstance(result.evidence, Attested) else None
            self.own_evidence(att, now)
        elif isinstance(result, fx.KeepHosted):
            if not isinstance(result.deployment, Deployment):
                raise TypeError("KeepHosted.deployment must be a Deployment")
            self.keep_running(result.deployment, result.epoch, now)
        elif isinstance(result, fx.KeepEnded):
            self.keep_gone(result.keep, now, lost=result.lost)
        else:
            return False
        return True

    def command(self, cmd: object, now: float) -> bool:
        if isinstance(cmd, fx.DrainAll):
            self.drain(now)
        elif isinstance(cmd, fx.MoveKeep):
            self.move(cmd.keep, cmd.trigger, now)
        else:
            return False
        return True

    # ============================================================ timers

    def get_timer(self) -> float | None:
        t = min(self._next_refresh, self._next_eval)
        for r in self.running.values():
            t = min(t, r.replication.deadline(hold=r.outgoing is not None))
            if r.outgoing is not None:
                d = r.outgoing.next_deadline()
                if d is not None:
                    t = min(t, d)
        return t

    def handle_timer(self, now: float) -> None:
        from .effects import TakeCheckpoint
        for r in list(self.running.values()):
            rep = r.replication
            if rep.expire(now):
                self._reconcile(r, now)
                og = r.outgoing
                if og is not None and og.successor is not None and \
                        og.successor not in rep.links:
                    og.successor_died()
            if rep.checkpoint_due(now) and (r.outgoing is None):
                rep.checkpoint_pending = True
                self._out.append(TakeCheckpoint(r.keep, rep.request_seq(), final=False))
            elif now >= rep.next_checkpoint and not rep.ready():
                rep.next_checkpoint = now + r.settings.checkpoint_s
                rep.forget_failures()
                self._reconcile(r, now)
            og = r.outgoing
            if og is not None:
                self._emit(og.tick(now))
                if og.step is Step.WAIT_STANDBY:
                    self._advance(r, now)
                if og.finished():
                    self._finish_outgoing(r, now)
        for keep, st in list(self.starting.items()):
            if now - st.since > START_TIMEOUT_S:
                self.keep_started(keep, st.epoch, None, False, "start timed out", now)
        if now >= self._next_refresh:
            self._next_refresh = now + REFRESH_S
            self._push_own(now)
            self._forget_stale_holdings()
            self._prune_orphaned()  # also catches records the table forgot
            self.holdings.reassembler.expire_stalled()  # 20-30 s without a chunk
            self._renew_holds(now)
        if now >= self._next_eval:
            self._next_eval = now + EVAL_S
            self._evaluate(now)

    # ============================================================ outputs

    def _emit(self, items: Iterable[Output]) -> None:
        self._out.extend(items)

    def next_output(self) -> Output | None:
        return self._out.popleft() if self._out else None

    # ============================================================ queries

    def _shown_state(self, loc: Location) -> str:
        """The record's state, unless this view knows its host is gone (dead or left):
        then `moving` while a standby is live to take over, else `orphaned`. Why: the
        record is the host's word and nobody else signs a newer one until a standby
        takes over; a keep whose host left with no standby would read `running` forever
        (a standby-less keep has nobody to report it orphaned)."""
        if loc.state == "stopped" or self.view.is_live(loc.host):
            return loc.state
        return "moving" if any(self.view.is_live(s) for s in loc.standbys) else "orphaned"

    def summary(self, keep: str) -> dict[str, object] | None:
        """What `keeps --json` shows for a keep: host, epoch, standbys, last_checkpoint."""
        loc = self.locations.get(keep)
        if loc is None:
            return None
        return {"owner": loc.owner.hex(), "host_id": loc.host.hex(), "host": loc.address,
                "epoch": loc.epoch,
                "standbys": [s.hex() for s in loc.standbys], "state": self._shown_state(loc),
                "last_checkpoint": {"seq": loc.checkpoint_seq, "at": loc.checkpoint_at}}
