"""Evidence on the wire, and the one entry point that verifies any kind of it.

Why a dispatcher: callers (channel handshake, placement, `keepmesh attest
verify`) hold opaque evidence from a peer and a TrustStore; they must not
know the report formats. `verify_evidence` picks the verifier by format,
returns a uniform `VerifiedEvidence`, and every failure is a one-line
VerificationError/ProtocolError. Whether the result is *acceptable* is a
separate question answered by `policy.appraise`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from datetime import datetime
from types import ModuleType
from typing import Any, ClassVar

from ..errors import ProtocolError
from ..wire import Message, Spec, b, message, s, seq
from .boundary import fault_boundary
from .certs import ChainCache, SignatureBudget, TrustStore

FORMATS = ("sev-snp", "sgx-dcap", "tdx")
TEE_KINDS = ("snp", "sgx", "tdx", "sim")
MAX_REPORT = 64 * 1024
MAX_CERT = 16 * 1024
MAX_CERTS = 8
MAX_VERIFY_CERTS = 16
"""Local callers (the CLI's --certs DIR) may offer more candidates than the wire allows."""


@message
class Evidence(Message):
    """A TEE report plus the certificates needed to verify it (leaf first, any order)."""

    TYPE: ClassVar[str] = "evidence"
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "format": s(16, choices=FORMATS),
        "report": b(MAX_REPORT),
        "certs": seq(b(MAX_CERT), MAX_CERTS),
    }
    format: str
    report: bytes
    certs: tuple[bytes, ...] = ()

    def validate(self) -> None:
        if not self.report:
            raise ProtocolError("evidence: empty report")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class VerifiedEvidence:
    """What a verifier established about evidence; input to policy appraisal.

    `tee` is "sim" whenever the chain ends in a non-vendor root, whatever the
    report format, so a sim report can never pass as hardware.
    """

    format: str
    tee: str
    measurement: bytes
    report_data: bytes
    debug: bool
    signer: tuple[str, ...]
    root_fingerprint: bytes
    vendor_root: bool
    tcb: dict[str, int]
    tcb_status: str = "unknown"
    claims: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": self.format,
            "tee": self.tee,
            "verified": True,
            "measurement": self.measurement.hex(),
            "report_data": self.report_data.hex(),
            "debug": self.debug,
            "signer": list(self.signer),
            "root_fingerprint": self.root_fingerprint.hex(),
            "vendor_root": self.vendor_root,
            "tcb": dict(self.tcb),
            "tcb_status": self.tcb_status,
            "claims": _jsonable(self.claims),
        }
        for key, value in self.claims.items():
            out.setdefault(key, _jsonable(value))
        return out


def _optional(name: str) -> ModuleType | None:
    """Import a sibling verifier written separately; absent means unsupported."""
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ModuleNotFoundError as err:
        if err.name and err.name.endswith(f"attestation.{name}"):
            return None
        raise


def detect_format(data: bytes) -> str:
    """Tell an SNP report from a DCAP quote by their headers."""
    from keepmesh.protocol.attestation import snp

    if not isinstance(data, (bytes, bytearray)):
        raise ProtocolError("evidence: expected bytes")
    if snp.looks_like_report(data):
        return "sev-snp"
    dcap = _optional("dcap")
    if dcap is not None:
        found = dcap.detect(bytes(data))
        if found is not None:
            return str(found)
    else:
        quote = _optional("dcap_quote")
        if quote is not None:
            found = quote.looks_like_quote(bytes(data))
            if found is not None:
                return str(found)
    raise ProtocolError(f"evidence: {len(data)} bytes are neither an SEV-SNP report"
                        " nor a DCAP quote")


@fault_boundary("evidence")
def verify_evidence(report: bytes, certs: Sequence[bytes], trust: TrustStore, at: datetime, *,
                    collateral: object | None = None, cache: ChainCache | None = None,
                    format: str | None = None,
                    budget: SignatureBudget | None = None) -> VerifiedEvidence:
    """Verify `report` with `certs` against `trust` at time `at`.

    `format` may be given (from an Evidence record); it is cross-checked with
    what the bytes look like so a mislabelled report cannot pick a verifier.
    One SignatureBudget (MAX_SIGNATURE_CHECKS unless given) bounds the
    signature checks of leaf selection and chain building together.
    """
    if not isinstance(report, (bytes, bytearray)):
        raise ProtocolError("evidence: report must be bytes")
    budget = budget if budget is not None else SignatureBudget()
    if len(report) > MAX_REPORT:
        raise ProtocolError(f"evidence: report of {len(report)} bytes exceeds {MAX_REPORT}")
    if len(certs) > MAX_VERIFY_CERTS:
        raise ProtocolError(f"evidence: {len(certs)} certificates exceeds {MAX_VERIFY_CERTS}")
    detected = detect_format(report)
    if format is not None and format != detected:
        raise ProtocolError(f"evidence: labelled {format!r} but looks like {detected!r}")
    verified: VerifiedEvidence
    if detected == "sev-snp":
        from keepmesh.protocol.attestation import snp

        verified = snp.verify(report, certs, trust, at, cache=cache, budget=budget)
    else:
        dcap = _optional("dcap")
        if dcap is None:
            raise ProtocolError(f"evidence: {detected} verification is not available")
        verified = dcap.verify_quote(report, certs, trust, at, cache=cache, budget=budget)
    if collateral is not None:
        coll = _optional("collateral")
        if coll is None:
            raise ProtocolError("evidence: collateral given but collateral checks are unavailable")
        result = coll.apply_collateral(verified, collateral, trust, at)
        if isinstance(result, VerifiedEvidence):
            verified = result
    return verified


@fault_boundary("evidence")
def verify_evidence_record(evidence: Evidence, trust: TrustStore, at: datetime, *,
                           collateral: object | None = None,
                           cache: ChainCache | None = None) -> VerifiedEvidence:
    return verify_evidence(evidence.report, evidence.certs, trust, at, collateral=collateral,
                           cache=cache, format=evidence.format)
