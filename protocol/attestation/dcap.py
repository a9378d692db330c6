"""Verification of Intel DCAP ECDSA quotes (SGX v3/v4, TDX v4/v5).

Why each step exists (Intel's chain of trust for a quote):

1. The attestation key signs header + report body, so the measured values
   are authentic *if* the attestation key belongs to a genuine QE.
2. The QE (Quoting Enclave) commits to that key: its REPORT's report_data
   holds SHA-256(attestation key || QE auth data) followed by 32 zero bytes.
3. The PCK (Provisioning Certification Key) of this very platform signs the
   QE REPORT, so the QE ran on genuine, identified hardware.
4. The PCK certificate chains (Platform or Processor CA) to the Intel SGX
   Root CA, which is pinned in the TrustStore.

Checks run in that order, so a tampered byte fails at the layer it belongs
to. The PCK chain is normally carried inside the quote (certification data
type 5, nested inside type 6 for v4/v5); every certificate the quote
carries must be on the verified chain, so a tampered embedded root or a
truncated PEM bundle is rejected even though the pinned root could have
completed the chain on its own.

TCB status is *not* decided here: without Intel's signed collateral it is
"unknown" (collateral.py computes it when collateral is supplied).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ..errors import ProtocolError, VerificationError
from .boundary import fault_boundary
from .certs import (
    LIBRARY_ERRORS,
    ChainCache,
    SignatureBudget,
    TrustStore,
    VerifiedChain,
    WorkLimitExceeded,
    build_chain,
    cert_der,
    load_certificates,
    verify_signature,
)
from .dcap_quote import (
    DcapQuote,
    EnclaveReportBody,
    TdReportBody,
    looks_like_quote,
    parse_quote,
)
from .evidence import VerifiedEvidence
from .pck_extensions import PckExtensions, pck_extensions

__all__ = ["DcapVerification", "detect", "verify_quote", "verify_quote_details"]

PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


def detect(data: bytes) -> str | None:
    """"sgx-dcap" / "tdx" when `data` looks like an Intel quote, else None."""
    return looks_like_quote(data)


@dataclasses.dataclass(frozen=True)
class DcapVerification:
    """Everything learned from a quote whose signatures and chain verified."""

    quote: DcapQuote
    chain: VerifiedChain
    pck: PckExtensions | None

    @property
    def format(self) -> str:
        return "tdx" if self.quote.is_tdx else "sgx-dcap"

    @property
    def measurement(self) -> bytes:
        body = self.quote.body
        return body.mrtd if isinstance(body, TdReportBody) else body.mrenclave

    def tcb(self) -> dict[str, int]:
        """Integer TCB values (policy minimums compare these); hex ones are in claims."""
        h = self.quote.header
        out: dict[str, int] = {"qe_svn": h.qe_svn, "pce_svn": h.pce_svn,
                               "qe_isvsvn": self.quote.certification.qe_report.isvsvn}
        if self.pck is not None:
            out["pck_pce_svn"] = self.pck.pce_svn
            for i, svn in enumerate(self.pck.comp_svns):
                out[f"sgx_comp_{i + 1:02d}"] = svn
        body = self.quote.body
        if isinstance(body, TdReportBody):
            out["tdx_module_svn"] = body.tee_tcb_svn[0]
            out["tdx_module_version"] = body.tee_tcb_svn[1]
        else:
            out["isvsvn"] = body.isvsvn
        return out

    def claims(self) -> dict[str, Any]:
        """Kind-specific fields, hex-encoded, for policy and `attest verify --json`."""
        q = self.quote
        qe = q.certification.qe_report
        claims: dict[str, Any] = {
            "quote_version": q.header.version,
            "user_data": q.header.user_data.hex(),
            "qe": {"mrenclave": qe.mrenclave.hex(), "mrsigner": qe.mrsigner.hex(),
                   "isvprodid": qe.isvprodid, "isvsvn": qe.isvsvn,
                   "attributes": qe.attributes.hex(), "miscselect": qe.miscselect},
        }
        body = q.body
        if isinstance(body, TdReportBody):
            claims.update({
                "mrtd": body.mrtd.hex(),
                "rtmrs": [r.hex() for r in body.rtmrs],
                "rtmr0": body.rtmrs[0].hex(), "rtmr1": body.rtmrs[1].hex(),
                "rtmr2": body.rtmrs[2].hex(), "rtmr3": body.rtmrs[3].hex(),
                "mrseam": body.mrseam.hex(), "mrsignerseam": body.mrsignerseam.hex(),
                "seam_attributes": body.seam_attributes.hex(),
                "td_attributes": body.td_attributes.hex(), "xfam": body.xfam.hex(),
                "tee_tcb_svn": body.tee_tcb_svn.hex(),
                "mrconfigid": body.mrconfigid.hex(), "mrowner": body.mrowner.hex(),
                "mrownerconfig": body.mrownerconfig.hex(),
                "body_type": "TD15" if body.tee_tcb_svn2 is not None else "TD10",
            })
            if body.tee_tcb_svn2 is not None and body.mrservicetd is not None:
                claims["tee_tcb_svn2"] = body.tee_tcb_svn2.hex()
                claims["mrservicetd"] = body.mrservicetd.hex()
        else:
            claims.update({
                "mrenclave": body.mrenclave.hex(), "mrsigner": body.mrsigner.hex(),
                "isvprodid": body.isvprodid, "isvsvn": body.isvsvn,
                "attributes": body.attributes.hex(), "miscselect": body.miscselect,
                "cpusvn": body.cpusvn.hex(), "configid": body.configid.hex(),
                "configsvn": body.configsvn, "isvextprodid": body.isvextprodid.hex(),
                "isvfamilyid": body.isvfamilyid.hex(),
            })
        if self.pck is not None:
            claims["fmspc"] = self.pck.fmspc.hex()
            claims["pce_id"] = self.pck.pce_id.hex()
            claims["pck_pce_svn"] = self.pck.pce_svn
            claims["pck_cpu_svn"] = self.pck.cpu_svn.hex()
            claims["sgx_tcb_components"] = list(self.pck.comp_svns)
        claims["pck_chain"] = [
            {"subject": c.subject.rfc4514_string(), "issuer": c.issuer.rfc4514_string(),
             "serial": format(c.serial_number, "x")} for c in self.chain.certs]
        return claims


def _p256_key(raw: bytes, what: str) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except LIBRARY_ERRORS:
        raise VerificationError(f"{what}: not a valid P-256 point") from None


def _raw_sig(sig: bytes) -> bytes:
    """Quote signatures are r||s big-endian, 32 bytes each; cryptography wants DER."""
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:64], "big")
    return encode_dss_signature(r, s)


def _verify_p256(key: object, sig: bytes, data: bytes, what: str) -> None:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise VerificationError(f"{what}: signing key is not ECDSA P-256")
    try:
        verify_signature(key, _raw_sig(sig), data, hashes.SHA256())
    except VerificationError:
        raise VerificationError(f"{what}: signature invalid") from None


def _load_embedded_chain(pem: bytes) -> list[x509.Certificate]:
    """All certificates of the type-5 PEM bundle; any unparsable one fails the quote."""
    if PEM_BEGIN not in pem:
        raise VerificationError("PCK chain: certification data holds no PEM certificate")
    try:
        certs = load_certificates(pem)
    except ProtocolError as err:
        raise VerificationError(f"PCK chain: {err.reason}") from None
    markers = pem.count(PEM_BEGIN)
    if len(certs) != markers:
        raise VerificationError(
            f"PCK chain: only {len(certs)} of {markers} PEM certificates parse")
    return certs


def _pick_leaf(certs: Sequence[x509.Certificate]) -> x509.Certificate:
    """The PCK leaf is the one certificate that no other presented one was issued by."""
    issuers = {c.issuer for c in certs}
    non_self = [c for c in certs if c.subject not in issuers and c.subject != c.issuer]
    if len(non_self) != 1:
        raise VerificationError(f"PCK chain: cannot identify a single leaf among {len(certs)}")
    return non_self[0]


@fault_boundary("dcap")
def verify_quote_details(report: bytes, certs: Sequence[x509.Certificate | bytes],
                         trust: TrustStore, at: datetime, *,
                         cache: ChainCache | None = None,
                         budget: SignatureBudget | None = None) -> DcapVerification:
    """Run every cryptographic check on a quote; raise ProtocolError/VerificationError."""
    quote = parse_quote(report)
    what = "TDX quote" if quote.is_tdx else "SGX quote"
    att_key = _p256_key(quote.attestation_key, f"{what}: attestation key")
    _verify_p256(att_key, quote.signature, quote.signed_data, what)

    qe = quote.certification
    binding = hashlib.sha256(quote.attestation_key + qe.qe_auth_data).digest()
    if qe.qe_report.report_data[:32] != binding:
        raise VerificationError(f"{what}: QE report_data does not commit to the attestation key")
    if any(qe.qe_report.report_data[32:]):
        raise VerificationError(f"{what}: QE report_data upper half is not zero")

    embedded = _load_embedded_chain(qe.pck_chain_pem)
    extra = _load_extra(certs)
    leaf = _pick_leaf(embedded)
    pool = [c for c in embedded + extra if c is not leaf]
    try:
        chain = build_chain(leaf, pool, trust, at, cache=cache, budget=budget)
    except WorkLimitExceeded:
        raise
    except VerificationError as err:
        raise VerificationError(f"PCK {err.reason}") from None
    on_chain = {cert_der(c) for c in chain.certs}
    for cert in embedded:
        if cert_der(cert) not in on_chain:
            raise VerificationError(
                "PCK chain: a certificate carried in the quote is not on the chain to the "
                "trusted root (tampered or foreign root/intermediate)")
    if cert_der(chain.root.cert) not in {cert_der(c) for c in embedded + extra}:
        raise VerificationError("PCK chain: the quote does not carry its root certificate")

    _verify_p256(chain.leaf.public_key(), qe.qe_report_signature, qe.qe_report.raw,
                 f"{what}: QE report (PCK key)")
    try:
        pck = pck_extensions(chain.leaf)
    except ProtocolError as err:
        raise VerificationError(err.reason) from None
    return DcapVerification(quote=quote, chain=chain, pck=pck)


def _load_extra(certs: Sequence[x509.Certificate | bytes]) -> list[x509.Certificate]:
    out: list[x509.Certificate] = []
    for item in certs:
        if isinstance(item, x509.Certificate):
            out.append(item)
        elif isinstance(item, (bytes, bytearray)):
            out.extend(load_certificates(bytes(item)))
        else:
            raise ProtocolError("dcap: certificates must be bytes")
    return out


@fault_boundary("dcap")
def verify_quote(report: bytes, certs: Sequence[x509.Certificate | bytes], trust: TrustStore,
                 at: datetime, *, cache: ChainCache | None = None,
                 budget: SignatureBudget | None = None) -> VerifiedEvidence:
    """Verify a quote; tcb_status stays "unknown" until collateral.apply_collateral."""
    details = verify_quote_details(report, certs, trust, at, cache=cache, budget=budget)
    return to_verified_evidence(details, trust)


def to_verified_evidence(details: DcapVerification, trust: TrustStore) -> VerifiedEvidence:
    body: EnclaveReportBody | TdReportBody = details.quote.body
    vendor = trust.is_vendor(details.chain.root)
    claims = details.claims()
    if isinstance(body, TdReportBody):
        tee = "tdx"
    else:
        tee = "sgx"
    return VerifiedEvidence(
        format=details.format,
        tee=tee if vendor else "sim",
        measurement=details.measurement,
        report_data=body.report_data,
        debug=body.debug,
        signer=details.chain.subjects,
        root_fingerprint=details.chain.root.fingerprint,
        vendor_root=vendor,
        tcb=details.tcb(),
        tcb_status="unknown",
        claims=claims,
    )
