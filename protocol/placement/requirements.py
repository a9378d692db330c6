"""What a host must offer to be a candidate: memory, labels, spread, and the claims the
deployment's signed policy can accept.

Why claims are only a filter: a member's record *says* which TEE and
measurement it has; attestation proves it. The entry agent uses the claims
to avoid asking hosts that cannot pass, and the key holder's fresh check at
ship time (specs/placement.md, "attest before ship") is what decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..membership import MemberView
from .spec import DEFAULT_PLACEMENT, PlacementSpec

MIB = 1024 * 1024


@dataclass(frozen=True)
class Requirements:
    memory_mb: int
    placement: PlacementSpec = DEFAULT_PLACEMENT
    tee_kinds: tuple[str, ...] | None = None     # None: any kind the host claims
    measurements: tuple[str, ...] = ()           # lowercase hex; empty: any
    owner: bytes = b""
    exclude: frozenset[bytes] = field(default_factory=frozenset)

    @property
    def replicas(self) -> int:
        return self.placement.replicas

    def claims_ok(self, view: MemberView) -> bool:
        if self.tee_kinds is not None and view.claims.tee not in self.tee_kinds:
            return False
        if self.measurements and view.claims.tee in ("snp", "sim"):
            return view.claims.measurement in self.measurements
        return True

    def labels_ok(self, view: MemberView) -> bool:
        labels = view.labels
        if any(labels.get(k) != v for k, v in self.placement.labels.items()):
            return False
        return self.placement.spread is None or self.placement.spread in labels

    def room_ok(self, view: MemberView) -> bool:
        return view.capacity.memory_mb >= self.memory_mb

    def describe(self) -> str:
        """The constraint in words, for the one-line refusal."""
        parts = [f"{k}={v}" for k, v in sorted(self.placement.labels.items())]
        label = f" with label {' '.join(parts)}" if parts else ""
        tee = f" ({'/'.join(self.tee_kinds)})" if self.tee_kinds is not None else ""
        return f"attested member{tee}{label} and {self.memory_mb} MiB free"


def requirements_for(deployment: object) -> Requirements:
    """Requirements from a verified Deployment (protocol/deployment.py): memory from
    resources.memory, [placement], and the policy's TEE kinds and measurements."""
    from ..attestation.policy import load_policy
    from ..deployment import Deployment

    assert isinstance(deployment, Deployment)
    manifest = deployment.manifest
    memory_mb = max(1, -(-manifest.memory_limit // MIB))
    spec = getattr(manifest, "placement", None) or DEFAULT_PLACEMENT
    kinds: tuple[str, ...] | None = None
    measurements: tuple[str, ...] = ()
    if deployment.policy:
        policy = load_policy(deployment.policy, "deployment policy")
        kinds = tuple(k for k in policy.tees() if k != "sim" or policy.allow_sim)
        if policy.snp.measurements:
            measurements = tuple(m.hex() for m in policy.snp.measurements)
    return Requirements(memory_mb=memory_mb, placement=spec, tee_kinds=kinds,
                        measurements=measurements, owner=deployment.owner_key)
