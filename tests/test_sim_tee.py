"""The INSECURE sim TEE goes through the real SNP verifier and policy."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from keepmesh.agent.cli import main
from keepmesh.agent.tee.base import TeeBackend
from keepmesh.agent.tee.measurement import code_measurement, measure_sources
from keepmesh.agent.tee.sim import SimRootError, SimTee, init_sim_root, read_sim_root
from keepmesh.protocol.attestation import snp
from keepmesh.protocol.attestation.certs import TrustStore, fingerprint
from keepmesh.protocol.attestation.evidence import Evidence, verify_evidence_record
from keepmesh.protocol.attestation.policy import Policy, PolicyError, SnpPolicy, appraise
from keepmesh.protocol.errors import ProtocolError, VerificationError

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, x509.Certificate,
                                                             x509.Certificate]:
    base = tmp_path_factory.mktemp("sim")
    ark = init_sim_root(base / "root", key_bits=2048)
    other = init_sim_root(base / "other", key_bits=2048)
    return base, ark, other


@pytest.fixture(scope="module")
def tee(roots: tuple[Path, x509.Certificate, x509.Certificate]) -> SimTee:
    return SimTee(roots[0] / "root", roots[0] / "agent-a")


def test_sim_evidence_verifies_with_its_root(
        tee: SimTee, roots: tuple[Path, x509.Certificate, x509.Certificate]) -> None:
    assert isinstance(tee, TeeBackend) and tee.kind == "sim"
    ev = tee.collect(b"bind me")
    assert ev.format == "sev-snp" and len(ev.report) == snp.REPORT_SIZE
    verified = verify_evidence_record(ev, TrustStore([roots[1]]), NOW)
    assert verified.tee == "sim" and not verified.vendor_root
    assert verified.measurement == code_measurement() and not verified.debug
    assert verified.report_data == b"bind me" + b"\0" * 57
    assert verified.root_fingerprint == fingerprint(roots[1])
    assert "keepmesh INSECURE sim" in verified.signer[-1]
    assert verified.claims["chip_id"] == tee.chip_id
    assert verified.to_json()["tee"] == "sim"


def test_sim_evidence_fails_without_or_with_other_root(
        tee: SimTee, roots: tuple[Path, x509.Certificate, x509.Certificate]) -> None:
    ev = tee.collect(b"x")
    with pytest.raises(VerificationError):
        verify_evidence_record(ev, TrustStore(), NOW)
    with pytest.raises(VerificationError):
        verify_evidence_record(ev, TrustStore([roots[2]]), NOW)


@pytest.mark.parametrize("pos", [0x50, 0x90, 0x180, 0x1A0, 0x2A0, 0x2E8])
def test_tampered_sim_report_fails(
        tee: SimTee, roots: tuple[Path, x509.Certificate, x509.Certificate], pos: int) -> None:
    ev = tee.collect(b"x")
    data = bytearray(ev.report)
    data[pos] ^= 1
    with pytest.raises(ProtocolError):
        verify_evidence_record(Evidence("sev-snp", bytes(data), ev.certs),
                               TrustStore([roots[1]]), NOW)


def test_other_agent_vcek_cannot_sign_for_this_chip(
        tee: SimTee, roots: tuple[Path, x509.Certificate, x509.Certificate]) -> None:
    other = SimTee(roots[0] / "root", roots[0] / "agent-b")
    assert other.chip_id != tee.chip_id
    mixed = Evidence("sev-snp", tee.collect(b"x").report, other.collect(b"x").certs)
    with pytest.raises(VerificationError):
        verify_evidence_record(mixed, TrustStore([roots[1]]), NOW)


def test_policy_rejects_sim_unless_allowed(
        tee: SimTee, roots: tuple[Path, x509.Certificate, x509.Certificate]) -> None:
    verified = verify_evidence_record(tee.collect(b""), TrustStore([roots[1]]), NOW)
    with pytest.raises(PolicyError, match="allow_sim"):
        appraise(Policy(), verified)
    with pytest.raises(PolicyError, match="sim_roots"):
        appraise(Policy(allow_sim=True, sim_roots=(fingerprint(roots[2]),)), verified)
    appraise(Policy(allow_sim=True, sim_roots=(fingerprint(roots[1]),),
                    snp=SnpPolicy(measurements=(code_measurement(),),
                                  min_tcb={"snp": 22})), verified)


def test_debug_report_flagged(tee: SimTee,
                              roots: tuple[Path, x509.Certificate, x509.Certificate]) -> None:
    report = tee.report(b"", policy=snp.POLICY_RESERVED_1 | snp.POLICY_DEBUG)
    ev = Evidence("sev-snp", report, tee.collect(b"").certs)
    verified = verify_evidence_record(ev, TrustStore([roots[1]]), NOW)
    assert verified.debug
    with pytest.raises(PolicyError, match="allow_debug"):
        appraise(Policy(allow_sim=True), verified)


def test_identity_persists_and_keys_are_private(
        tee: SimTee, roots: tuple[Path, x509.Certificate, x509.Certificate]) -> None:
    again = SimTee(roots[0] / "root", roots[0] / "agent-a")
    assert again.chip_id == tee.chip_id
    assert again.collect(b"").certs[0] == tee.collect(b"").certs[0]
    for path in (roots[0] / "root" / "ark.key", roots[0] / "root" / "ask.key",
                 roots[0] / "agent-a" / "sim-vcek.key"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(ValueError):
        tee.collect(b"x" * 65)


def test_root_refuses_overwrite_and_is_labelled(
        roots: tuple[Path, x509.Certificate, x509.Certificate]) -> None:
    with pytest.raises(SimRootError, match="refusing to overwrite"):
        init_sim_root(roots[0] / "root", key_bits=2048)
    ark = read_sim_root(roots[0] / "root")
    assert "keepmesh INSECURE sim" in ark.subject.rfc4514_string()
    with pytest.raises(SimRootError):
        SimTee(roots[0] / "missing", roots[0] / "agent-c")


def test_cli_init_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "r"
    assert main(["sim", "init-root", str(target), "--key-bits", "2048"]) == 0
    out = capsys.readouterr().out
    assert "INSECURE" in out and fingerprint(read_sim_root(target)).hex() in out
    assert main(["sim", "init-root", str(target), "--key-bits", "2048"]) == 1
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and len(err.strip().splitlines()) == 1


def test_measurement_tracks_source(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("x = 1\n")
    first = measure_sources([("p", pkg)])
    assert len(first) == 48 and measure_sources([("p", pkg)]) == first
    (pkg / "a.py").write_text("x = 2\n")
    assert measure_sources([("p", pkg)]) != first
    assert len(code_measurement()) == 48


@pytest.mark.slow
def test_default_root_is_rsa_4096(tmp_path: Path) -> None:
    ark = init_sim_root(tmp_path / "big")
    assert ark.public_key().key_size == 4096  # type: ignore[union-attr]
