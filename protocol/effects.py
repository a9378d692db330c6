"""The typed face of `MeshNode`: what goes in (commands, completions) and what comes out
(effects to carry out, events to observe), as plain dataclasses.

Why typed and in one file: the agent's trio driver, the simulator's driver and
the tests all speak to the node through exactly these types (as aioquic's
`quic/events.py` and h11's events do), so a driver is a `match` over a closed
set, a new sub-machine (placement, migration) adds types here instead of a
new pump loop, and nothing branches on strings.

Naming:
- *Commands* come from the operator or the workload owner (deploy, stop,
  drain, leave, join, update of the local record).
- *Completions* are the results of effects the node asked for (an
  attestation verdict, a keep started or failed).
- *Effects* are things the driver must do (send bytes, attest a member,
  start or stop a keep, persist a value). The driver decides nothing: it
  carries them out and reports back with a completion where one is named.
- *Events* are notices (a member joined, a placement finished); a driver may
  log, count or answer a waiting client with them, never change state.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

from .migration.effects import Effect as MigrationEffect
from .migration.effects import Event as MigrationEvent

NodeId = bytes
Address = str


# ====================================================================== effects


class Send(NamedTuple):
    """Send `data` to the member `dst_id` listening at `dst`.

    `dst_id` is None only when the node knows an address and not yet who is
    there (a seed). `reliable` asks for a stream (ordered, retransmitted,
    size up to the stream limit); otherwise one best-effort datagram.
    A driver must only deliver on a channel attested to `dst_id` when given.
    `ordered` (with `reliable` and `dst_id`): deliver in the order sent relative to
    every other ordered Send to the same member (migration's chunked transfers are
    accepted only at the next expected offset); unordered reliable sends may overtake
    each other and ordered ones.

    A tuple, not a frozen dataclass: one is built per datagram, and the frozen
    dataclass's constructor (object.__setattr__ per field) was ~3% of a simulation.
    """

    dst: Address
    data: bytes
    reliable: bool
    dst_id: NodeId | None = None
    ordered: bool = False


@dataclass(frozen=True, slots=True)
class RequestAttestation:
    """Verify the member's fresh evidence against this agent's policy and answer with
    `AttestationVerdict`. Until then the member is pending (not alive, not a
    placement candidate)."""

    kind: ClassVar[str] = "attest"
    node_id: NodeId
    address: Address
    incarnation: int
    at: float


@dataclass(frozen=True, slots=True)
class StartKeep:
    """Run a keep of `deployment` (the owner-signed bytes) under fencing `epoch`.

    `sealed_key` is the package key sealed to this host by the key holder (empty
    when the deployment's package arrives by another path). Answer with
    `KeepStarted` or `KeepFailed`."""

    keep_id: str
    epoch: int
    deployment: bytes
    memory_mb: int
    sealed_key: bytes = b""


@dataclass(frozen=True, slots=True)
class StopKeep:
    keep_id: str
    epoch: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Persist:
    """Store `value` under `key` durably before acting on anything that depends on it
    (the incarnation: a restarted member must come back higher)."""

    key: str
    value: int | str | bytes


Effect = Send | RequestAttestation | StartKeep | StopKeep | Persist


# ====================================================================== events


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """A change in this node's view of one member. `kind` keeps the historical
    short name (join, update, ...) for logs and the simulator's trace."""

    kind: ClassVar[str] = ""
    node_id: NodeId
    incarnation: int
    at: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class MemberJoined(MemberEvent):
    kind: ClassVar[str] = "join"


@dataclass(frozen=True, slots=True)
class MemberUpdated(MemberEvent):
    kind: ClassVar[str] = "update"


@dataclass(frozen=True, slots=True)
class MemberSuspected(MemberEvent):
    kind: ClassVar[str] = "suspect"


@dataclass(frozen=True, slots=True)
class MemberAlive(MemberEvent):
    kind: ClassVar[str] = "alive"


@dataclass(frozen=True, slots=True)
class MemberDead(MemberEvent):
    kind: ClassVar[str] = "dead"


@dataclass(frozen=True, slots=True)
class MemberLeft(MemberEvent):
    kind: ClassVar[str] = "left"


@dataclass(frozen=True, slots=True)
class MemberUntrusted(MemberEvent):
    kind: ClassVar[str] = "untrusted"


@dataclass(frozen=True, slots=True)
class MemberBanned(MemberEvent):
    """Membership banned a sender (forged records/accusations, spoofed sender) until
    `reason` says; node_id is b"" when the offender had no identity (an address).
    The driver may close that peer's session."""

    kind: ClassVar[str] = "banned"


MEMBER_EVENTS: dict[str, type[MemberEvent]] = {
    cls.kind: cls for cls in (MemberJoined, MemberUpdated, MemberSuspected, MemberAlive,
                              MemberDead, MemberLeft, MemberUntrusted, MemberBanned)}


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one replica of a keep runs."""

    host_id: NodeId
    host: Address
    epoch: int
    lease: int = 0  # the host's reservation, to commit with when the owner ships


@dataclass(frozen=True, slots=True)
class PlacementDone:
    """A deploy command finished: every replica is reserved and committed."""

    kind: ClassVar[str] = "placed"
    request: int
    keep_id: str
    placements: tuple[Placement, ...]
    at: float


@dataclass(frozen=True, slots=True)
class PlacementFailed:
    """A deploy command could not be met; `reason` names what (one line)."""

    kind: ClassVar[str] = "unplaced"
    request: int
    keep_id: str
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class KeepLocated:
    """This node learned (or changed its mind about) where a keep runs."""

    kind: ClassVar[str] = "located"
    keep_id: str
    host_id: NodeId
    host: Address
    epoch: int
    state: str
    at: float


Event = (MemberEvent | PlacementDone | PlacementFailed | KeepLocated)
# Migration's own effects and events (protocol/migration/effects.py) flow through the
# same stream: replicate, checkpoint, restore, pause, stop-on-fence; moved/fenced/...
Output = Effect | Event | MigrationEffect | MigrationEvent


# ================================================================== completions


@dataclass(frozen=True, slots=True)
class AttestationVerdict:
    """The driver's verifier ran: `trusted` with the evidence good for `valid_for_s`
    more seconds (None: no expiry known), or not, with a one-line reason.
    Unsolicited verdicts are fine (a session attested for another reason)."""

    node_id: NodeId
    trusted: bool
    valid_for_s: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class KeepStarted:
    keep_id: str
    epoch: int


@dataclass(frozen=True, slots=True)
class KeepFailed:
    keep_id: str
    epoch: int
    reason: str


@dataclass(frozen=True, slots=True)
class KeepStopped:
    keep_id: str
    epoch: int


Completion = AttestationVerdict | KeepStarted | KeepFailed | KeepStopped


# ===================================================================== commands


@dataclass(frozen=True, slots=True)
class Join:
    seeds: tuple[Address, ...]


@dataclass(frozen=True, slots=True)
class Leave:
    """Leave the mesh gracefully (signed notice, gossiped; probing stops)."""


@dataclass(frozen=True, slots=True)
class UpdateLocal:
    """Publish a new version of this node's record (None keeps the current value)."""

    labels: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Deploy:
    """Find hosts for `replicas` copies of the owner-signed `deployment` and reserve them.

    `request` is the caller's handle, echoed in PlacementDone/PlacementFailed.
    The entry node never needs the package key: sealing happens at the key
    holder once hosts are chosen (see specs/placement.md)."""

    request: int
    keep_id: str
    deployment: bytes
    requirements: object  # placement.Requirements (kept untyped here to avoid a cycle)


@dataclass(frozen=True, slots=True)
class Stop:
    keep_id: str


@dataclass(frozen=True, slots=True)
class Commit:
    """Host side: the key holder shipped the sealed package for this reservation; hold
    the capacity for the running keep (ProtocolError if the lease is gone)."""

    lease: int          # 0: no reservation was made (a direct deploy): reserve now
    keep_id: str
    epoch: int
    owner: bytes = b""
    memory_mb: int = 0  # for lease 0


@dataclass(frozen=True, slots=True)
class Release:
    """Host side: the local keep ended (stopped, failed); its capacity returns."""

    keep_id: str


@dataclass(frozen=True, slots=True)
class Drain:
    """Stop accepting new keeps (reservations are refused with reason "draining")."""


Command = Join | Leave | UpdateLocal | Deploy | Stop | Commit | Release | Drain


# ======================================================================= timers


class TimerKind(enum.Enum):
    """Which sub-machine a deadline belongs to (for drivers that trace or debug)."""

    MEMBERSHIP = "membership"
    PLACEMENT = "placement"
    MIGRATION = "migration"


@dataclass(frozen=True, order=True, slots=True)
class Timer:
    at: float
    kind: TimerKind = field(compare=False)
