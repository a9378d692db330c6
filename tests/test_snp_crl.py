"""SNP revocation: a CRL from the root revoking the ASK makes SNP evidence fail.

No AMD CRL is among the vectors, so the sim PKI (same RSA-PSS ARK -> ASK shape
as AMD's) stands in: the same collateral code path checks AMD CRLs.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from keepmesh.agent.tee.sim import SimTee, read_sim_root
from keepmesh.protocol.attestation.certs import TrustStore, load_certificates
from keepmesh.protocol.attestation.collateral import apply_collateral
from keepmesh.protocol.attestation.evidence import verify_evidence_record
from keepmesh.protocol.errors import ProtocolError, VerificationError


def crl(root: Path, revoked_serials: list[int]) -> bytes:
    ark = read_sim_root(root)
    key = serialization.load_pem_private_key((root / "ark.key").read_bytes(), password=None)
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ark.subject)
               .last_update(now - dt.timedelta(hours=1))
               .next_update(now + dt.timedelta(days=7)))
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial)
            .revocation_date(now - dt.timedelta(minutes=5)).build())
    return builder.sign(key, hashes.SHA384()).public_bytes(serialization.Encoding.DER)  # type: ignore[arg-type]


def test_snp_crl_revocation(tmp_path: Path, sim_root: Path) -> None:
    tee = SimTee(sim_root, tmp_path / "agent")
    evidence = tee.collect(b"\x01" * 64)
    trust = TrustStore([read_sim_root(sim_root)])
    now = dt.datetime.now(dt.UTC)
    verified = verify_evidence_record(evidence, trust, now)
    chain = verified.claims["cert_chain"]
    assert [c["subject"] for c in chain][-1] == read_sim_root(sim_root).subject.rfc4514_string()

    clean = apply_collateral(verified, {"ark.crl": crl(sim_root, [12345])}, trust, now)
    assert clean.claims["collateral"]["crls_checked"]  # the CRL was checked, nothing revoked

    ask = load_certificates((sim_root / "ask.pem").read_bytes())[0]
    with pytest.raises(VerificationError, match="(?i)revoked"):
        apply_collateral(verified, {"ark.crl": crl(sim_root, [ask.serial_number])}, trust, now)


def test_crl_as_hex_text_revokes_and_a_damaged_crl_is_an_error(tmp_path: Path,
                                                               sim_root: Path) -> None:
    """A CRL file in hex (as the spec allows) was listed as `ignored`, and a truncated DER
    CRL too: next to the ASK certificate the collateral was still "usable", so a revoked
    VCEK verified (found by the attest verify sweep)."""
    from tests.sim_crl import sim_ask_crl
    tee = SimTee(sim_root, tmp_path / "agent")
    evidence = tee.collect(b"\x01" * 64)
    trust = TrustStore([read_sim_root(sim_root)])
    now = dt.datetime.now(dt.UTC)
    verified = verify_evidence_record(evidence, trust, now)
    vcek = x509.load_der_x509_certificate(evidence.certs[0])
    der = sim_ask_crl(sim_root, [vcek.serial_number]).public_bytes(serialization.Encoding.DER)
    ask = (sim_root / "ask.pem").read_bytes()
    for name, blob in (("kds.crl.hex", der.hex().encode()),
                       ("kds.crl.hex", der.hex().upper().encode() + b"\n")):
        with pytest.raises(VerificationError, match="revoked"):
            apply_collateral(verified, {"ask.pem": ask, name: blob}, trust, now)
    for blob in (der[:-20], der.hex().encode()[:-40]):
        with pytest.raises(ProtocolError, match="neither a CRL nor a certificate"):
            apply_collateral(verified, {"ask.pem": ask, "kds.crl": blob}, trust, now)
    notes = {"ask.pem": ask, "README": b"0 CRLs here yet\n"}  # text, not DER: still ignored
    assert apply_collateral(verified, notes, trust, now).claims["collateral"] == {
        "crls_checked": []}
