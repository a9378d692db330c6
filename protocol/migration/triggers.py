"""Which keeps must move, and why: a dead host, a drain, or trust loss.

Why here and pure: every standby of a keep must reach the same verdict from
its own membership view without talking, so the verdict is a function of
(location, the deployment's signed policy, the view, now) and nothing else.
Trust loss is per deployment: a host whose evidence expired, was revoked
(the view no longer holds verified evidence for it) or whose TCB fell below
one deployment's `min_tcb` loses *that* deployment's keeps; keeps whose
policies it still satisfies stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..attestation.evidence import VerifiedEvidence
from ..attestation.policy import Policy, appraise
from ..errors import VerificationError
from .messages import Location
from .successor import choose_successor

NodeId = bytes


@dataclass(frozen=True)
class Attested:
    """A member's verified evidence as the view holds it (and when it was issued)."""

    evidence: VerifiedEvidence
    issued_at: float


class MemberView(Protocol):
    """What migration needs from membership (MeshNode provides it)."""

    def is_live(self, node: NodeId) -> bool:
        """Alive or suspect: not (yet) declared dead, not left."""
        ...

    def attested(self, node: NodeId) -> Attested | None:
        """Verified evidence for `node`, or None (unknown, failed or revoked)."""
        ...


def trust_failure(policy: Policy, view: MemberView, node: NodeId, now: float) -> str | None:
    """None when `node` satisfies `policy` now; otherwise a one-line reason."""
    att = view.attested(node)
    if att is None:
        return "no verified evidence (unknown, failed or revoked)"
    try:
        appraise(policy, att.evidence, evidence_issued_at=att.issued_at, now=now)
    except VerificationError as err:
        return err.reason
    return None


@dataclass(frozen=True)
class Verdict:
    """`keep` must move off `host` because of `trigger` ("dead" | "trust")."""

    keep: str
    host: NodeId
    trigger: str
    reason: str


def must_move(loc: Location, policy: Policy, view: MemberView, now: float) -> Verdict | None:
    """The verdict for one running keep as seen from `view` (None: it stays)."""
    if loc.state == "stopped":
        return None
    if loc.state == "lost":
        return Verdict(loc.keep, loc.host, "dead", "host reports it lost the keep")
    if not view.is_live(loc.host):
        return Verdict(loc.keep, loc.host, "dead", "host declared dead or left")
    why = trust_failure(policy, view, loc.host, now)
    if why is not None:
        return Verdict(loc.keep, loc.host, "trust", why)
    return None


def eligible(loc: Location, policy: Policy, view: MemberView, now: float) -> list[NodeId]:
    """Standbys that may take over: live, trusted, satisfying the keep's policy."""
    return [n for n in loc.standbys
            if view.is_live(n) and trust_failure(policy, view, n, now) is None]


def successor(loc: Location, policy: Policy, view: MemberView, now: float) -> NodeId | None:
    """The standby every member with this view names for `loc.keep`."""
    return choose_successor(loc.keep, eligible(loc, policy, view, now))
