"""SEV-SNP verification against the public vectors (SOURCE.md) and mutations."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keepmesh.protocol.attestation import snp
from keepmesh.protocol.attestation.certs import ChainCache, TrustStore, cert_der, load_certificates
from keepmesh.protocol.attestation.evidence import (
    Evidence,
    detect_format,
    verify_evidence,
    verify_evidence_record,
)
from keepmesh.protocol.errors import ProtocolError, VerificationError
from keepmesh.protocol.wire import encode_payload

SNP = Path(__file__).parents[2] / "shared" / "vectors" / "sev-snp"
AT = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)  # before the VLEK expired (2025-12-10)
TRUST = TrustStore()


def chain(product: str) -> list[bytes]:
    return [cert_der(c) for c in
            load_certificates((SNP / f"amd-certs/{product}/ask_ark_asvk.pem").read_bytes())]


def read(rel: str) -> bytes:
    return (SNP / rel).read_bytes()


POSITIVE: list[tuple[str, str, str, dict[str, Any]]] = [
    ("gosevguest-milan-v2/report.bin", "gosevguest-milan-v2/vcek.der", "milan", {
        "version": 2, "guest_svn": 0, "policy": 0xB0000, "debug": True, "vmpl": 0,
        "signing_key": "vcek", "product": "Milan",
        "report_data": "0102030405" + "00" * 59,
        "measurement": "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b"
                       "6bdf8a9ece31a5a608eb0cf2e4872b01",
        "chip_id": "3ac3fe21e13fb0990eb28a802e3fb6a29483a6b0753590c951bdd3b8e53786184ca39e35"
                   "9669a2b76a1936776b564ea464cdce40c05f63c9b610c5068b006b5d",
        "tcb": {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68},
        "current_firmware": "1.49.3",
        "report_id": "8edc638e1857c555d21f6b11bda3c8b1b5a09dba4852b4c8ee7aa2f16f22cc0a"}),
    ("trustee-milan-v2/report.bin", "trustee-milan-v2/vcek.der", "milan", {
        "version": 2, "guest_svn": 4, "policy": 0x3001F, "debug": False, "product": "Milan",
        "report_data": "ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2"
                       + "00" * 32,
        "measurement": "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c"
                       "23500644e0e692e6be917f9050d3d38c",
        "id_key_digest": "0356215882a825279a85b300b0b742931d113bf7e32dde2e50ffde7ec743ca49"
                         "1ecdd7f336dc28a6e0b2bb57af7a44a3",
        "tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
        "current_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 206},
        "current_firmware": "1.52.4"}),
    ("virtee-milan-v2/report.bin", "virtee-milan-v2/vcek.der", "milan", {
        "version": 2, "policy": 0x30000, "debug": False,
        "measurement": "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d"
                       "3e1a0dc39b2c60bd95b9c480cd81841f",
        "tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}}),
    ("trustee-milan-vlek-v3/report.bin", "trustee-milan-vlek-v3/vlek.der", "milan", {
        "version": 3, "vmpl": 1, "platform_info": 0x27, "flags": 4, "signing_key": "vlek",
        "debug": False, "cpuid": [0x19, 0x01, 0x01], "chip_id": "00" * 64,
        "csp_id": "CN=cc-us-east-2.amazonaws.com",
        "measurement": "8922ebbdd00ec2c541f36a6e7a82a8773a7accb451ed67bc94e740dbe92c93c4"
                       "e8c9af857f5ceeb5a493df2a570d7bf0",
        "tcb": {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 217},
        "committed_tcb": {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 219},
        "current_firmware": "1.55.29"}),
    ("trustee-azure-genoa-v3/report.bin", "trustee-azure-genoa-v3/vcek-genoa.pem", "genoa", {
        "version": 3, "guest_svn": 0x1000B, "policy": 0x3001F, "platform_info": 0x24,
        "product": "Genoa", "cpuid": [0x19, 0x11, 0x01], "debug": False,
        "report_data": "b581f12e29a2d7d64e5e0b738d563879a78b51c644d0fa0cce02b48699f6bf5f"
                       + "00" * 32,
        "measurement": "f57dc09a507c6ecd82369bffb600f0003792f4d99bc26e985ec0c266fc34faf3"
                       "706faf814c9e61065768a6ff917c89ae",
        "chip_id": "0506ffba875e939c2729d20c74eb72b4c5ba6bf7ea1faaa640141f12c6d64782fb487f68"
                   "ce69dcd021e914cc0d9244327bc121f0242d6470903ad1d4aaea4ad1",
        "tcb": {"bootloader": 10, "tee": 0, "snp": 23, "microcode": 84},
        "current_firmware": "1.55.40"}),
]


@pytest.mark.parametrize("report, leaf, product, expected", POSITIVE,
                         ids=[p[0].split("/")[0] for p in POSITIVE])
def test_positive_vectors(report: str, leaf: str, product: str,
                          expected: dict[str, Any]) -> None:
    leaf_der = load_certificates(read(leaf))[0]
    verified = verify_evidence(read(report), [cert_der(leaf_der), *chain(product)], TRUST, AT)
    doc = verified.to_json()
    assert doc["verified"] and doc["format"] == "sev-snp" and doc["tee"] == "snp"
    assert doc["vendor_root"] and doc["tcb_status"] == "unknown"
    assert doc["signer"][-1] == f"ARK-{product.capitalize()}"
    for key, value in expected.items():
        assert doc[key] == value, key


def test_reports_with_trailing_bytes_verify_and_short_fail() -> None:
    data = read("trustee-milan-v2/report.bin")
    certs = [read("trustee-milan-v2/vcek.der"), *chain("milan")]
    assert verify_evidence(data + b"\0" * 100, certs, TRUST, AT).claims["guest_svn"] == 4
    with pytest.raises(ProtocolError):
        snp.verify(data[:-1], certs, TRUST, AT)
    with pytest.raises(ProtocolError):
        verify_evidence(data[:0x2A0], certs, TRUST, AT)


@pytest.mark.parametrize("report, leaf", [
    ("negative/trustee-report_byte42_plus1.bin", "trustee-milan-v2/vcek.der"),
    ("negative/trustee-report_byte384_plus1.bin", "trustee-milan-v2/vcek.der"),
    ("negative/trustee-vlek-report_byte42_plus1.bin", "trustee-milan-vlek-v3/vlek.der"),
])
def test_negative_reports_fail_at_signature(report: str, leaf: str) -> None:
    with pytest.raises(VerificationError, match="report signature invalid"):
        verify_evidence(read(report), [read(leaf), *chain("milan")], TRUST, AT)


def test_tampered_vcek_fails_at_chain() -> None:
    with pytest.raises(VerificationError, match="chain: signature of 'SEV-VCEK'"):
        verify_evidence(read("trustee-milan-v2/report.bin"),
                        [read("negative/trustee-vcek_byte42_plus1.der"), *chain("milan")],
                        TRUST, AT)


@pytest.mark.parametrize("report, leaf, product", [
    ("gosevguest-milan-v2/report.bin", "trustee-milan-v2/vcek.der", "milan"),  # wrong VCEK
    ("gosevguest-milan-v2/report.bin", "gosevguest-milan-v2/vcek.der", "genoa"),
    ("trustee-azure-genoa-v3/report.bin", "trustee-azure-genoa-v3/vcek-genoa.pem", "milan"),
    ("trustee-milan-v2/report.bin", "negative/trustee-vcek-invalid-new.der", "milan"),
])
def test_wrong_pairings_fail(report: str, leaf: str, product: str) -> None:
    leaf_der = cert_der(load_certificates(read(leaf))[0])
    with pytest.raises(VerificationError):
        verify_evidence(read(report), [leaf_der, *chain(product)], TRUST, AT)


def test_expired_vlek_fails_without_pinned_time() -> None:
    with pytest.raises(VerificationError, match="expired"):
        verify_evidence(read("trustee-milan-vlek-v3/report.bin"),
                        [read("trustee-milan-vlek-v3/vlek.der"), *chain("milan")], TRUST,
                        dt.datetime(2026, 2, 1, tzinfo=dt.UTC))


def test_no_vendor_root_fails() -> None:
    with pytest.raises(VerificationError):
        verify_evidence(read("virtee-milan-v2/report.bin"),
                        [read("virtee-milan-v2/vcek.der"), *chain("milan")],
                        TrustStore(include_vendor=False), AT)


def test_missing_leaf_fails() -> None:
    with pytest.raises(VerificationError, match="no VCEK"):
        verify_evidence(read("virtee-milan-v2/report.bin"), chain("milan"), TRUST, AT)


CACHE = ChainCache()
BASE_REPORT = read("trustee-milan-v2/report.bin")
BASE_CERTS = [read("trustee-milan-v2/vcek.der"), *chain("milan")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pos=st.integers(0, snp.SIGNED_SIZE - 1), delta=st.integers(1, 255))
def test_any_byte_flip_in_signed_region_fails(pos: int, delta: int) -> None:
    data = bytearray(BASE_REPORT)
    data[pos] = (data[pos] + delta) % 256
    with pytest.raises(ProtocolError):
        verify_evidence(bytes(data), BASE_CERTS, TRUST, AT, cache=CACHE)


@settings(max_examples=30, deadline=None)
@given(pos=st.integers(0x2A0, 0x2A0 + 47), delta=st.integers(1, 255))
def test_signature_flip_fails(pos: int, delta: int) -> None:
    data = bytearray(BASE_REPORT)
    data[pos] = (data[pos] + delta) % 256
    with pytest.raises(ProtocolError):
        verify_evidence(bytes(data), BASE_CERTS, TRUST, AT, cache=CACHE)


def test_cache_skips_chain_and_still_verifies() -> None:
    cache = ChainCache()
    for _ in range(3):
        verify_evidence(BASE_REPORT, BASE_CERTS, TRUST, AT, cache=cache)
    assert cache.hits == 2 and cache.misses == 1


def test_detect_format() -> None:
    assert detect_format(BASE_REPORT) == "sev-snp"
    with pytest.raises(ProtocolError):
        detect_format(b"\0" * 2000)
    with pytest.raises(ProtocolError):
        detect_format(b"garbage")


def test_evidence_record_roundtrip_and_bounds() -> None:
    ev = Evidence(format="sev-snp", report=BASE_REPORT, certs=tuple(BASE_CERTS[:2]))
    assert encode_payload(ev)
    back = Evidence.from_fields(ev.to_fields())
    assert back == ev
    assert isinstance(back, Evidence)
    assert verify_evidence_record(back, TRUST, AT).claims["product"] == "Milan"
    mislabelled = Evidence(format="tdx", report=BASE_REPORT, certs=ev.certs)
    with pytest.raises(ProtocolError, match="labelled"):
        verify_evidence_record(mislabelled, TRUST, AT)
    with pytest.raises(ProtocolError):
        Evidence.from_fields({"format": "sev-snp", "report": b"x" * (64 * 1024 + 1),
                              "certs": []})
    with pytest.raises(ProtocolError):
        Evidence.from_fields({"format": "sev-snp", "report": b"x", "certs": [b"c"] * 9})
    with pytest.raises(ProtocolError):
        Evidence.from_fields({"format": "other", "report": b"x", "certs": []})


def test_build_report_roundtrip_v2_v3_v5() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    for version in (2, 3, 5):
        tcb = snp.encode_tcb({"bootloader": 4, "tee": 1, "snp": 9, "microcode": 200})
        body = snp.build_report(version=version, guest_svn=7, report_data=b"rd", vmpl=2,
                                measurement=b"\x11" * 48, reported_tcb=tcb, current_tcb=tcb,
                                cpuid=(0x19, 0x11, 0x01), chip_id=b"\x22" * 64,
                                current_version=(3, 58, 1), signing_key=snp.SIGNING_KEY_VLEK)
        r, s = decode_dss_signature(key.sign(body, ec.ECDSA(hashes.SHA384())))
        rep = snp.parse_report(snp.attach_signature(body, r, s))
        assert (rep.version, rep.guest_svn, rep.vmpl, rep.signing_key) == (version, 7, 2, 1)
        assert rep.report_data == b"rd" + b"\0" * 62 and rep.measurement == b"\x11" * 48
        assert snp.decode_tcb(rep.reported_tcb, "Milan")["microcode"] == 200
        assert rep.cpuid_product() == (None if version == 2 else "Genoa")
        assert (rep.sig_r, rep.sig_s) == (r, s)
        assert (rep.current_major, rep.current_minor, rep.current_build) == (1, 58, 3)


def test_turin_tcb_layout() -> None:
    raw = snp.encode_tcb({"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 9},
                         "Turin")
    assert raw.to_bytes(8, "little") == bytes([1, 2, 3, 4, 0, 0, 0, 9])
    assert snp.decode_tcb(raw, "Turin")["snp"] == 4


# ------------------------------------------------ hostile input (issue 9)


def test_mutated_sim_certificates_only_raise_declared_errors(sim_root: Path,
                                                             tmp_path: Path) -> None:
    """Byte flips across the sim VCEK and ASK (how sim evidence is made: agent/tee/sim.py).

    Random mutation of sim certificates hit 8 distinct crash kinds in 100k cases
    before the fault boundary (ValueError on off-curve points and bad names,
    UnsupportedAlgorithm on unknown key/signature OIDs, DuplicateExtension...).
    """
    from keepmesh.agent.tee.sim import SimTee, read_sim_root
    from keepmesh.protocol.attestation.boundary import UnexpectedError
    tee = SimTee(sim_root, tmp_path / "agent")
    ev = tee.collect(b"\1" * 64)
    trust = TrustStore([read_sim_root(sim_root)])
    at = dt.datetime.now(dt.UTC)
    assert verify_evidence(ev.report, ev.certs, trust, at).tee == "sim"
    outcomes = {"rejected": 0, "accepted": 0}
    for which in range(len(ev.certs)):
        der = ev.certs[which]
        for pos in range(0, len(der), 5):
            for mask in (0x01, 0x80):
                bad = bytearray(der)
                bad[pos] ^= mask
                certs = list(ev.certs)
                certs[which] = bytes(bad)
                try:
                    verify_evidence(ev.report, certs, trust, at)
                    outcomes["accepted"] += 1
                except UnexpectedError as err:
                    raise AssertionError(f"cert {which} byte {pos}: {err.reason}") from err
                except ProtocolError:
                    outcomes["rejected"] += 1
    assert outcomes["rejected"] > 100


def test_default_policy_refuses_vmpl_above_zero() -> None:
    """The AWS VLEK vector reports VMPL 1: verified, but the default policy says no."""
    from keepmesh.protocol.attestation.policy import Policy, PolicyError, SnpPolicy, appraise
    verified = verify_evidence(read("trustee-milan-vlek-v3/report.bin"),
                               [cert_der(load_certificates(read("trustee-milan-vlek-v3/vlek.der"))[0]),
                                *chain("milan")], TRUST, AT)
    assert verified.claims["vmpl"] == 1
    with pytest.raises(PolicyError, match="snp.max_vmpl: expected <= 0, got 1"):
        appraise(Policy(), verified)
    appraise(Policy(snp=SnpPolicy(max_vmpl=1)), verified)
    at_zero = verify_evidence(read("trustee-milan-v2/report.bin"),
                              [read("trustee-milan-v2/vcek.der"), *chain("milan")], TRUST, AT)
    appraise(Policy(), at_zero)


def test_reserved_signature_bytes_must_be_zero() -> None:
    """0x330..0x49F (the SIGNATURE field after r and s) is not signed: a genuine report
    with a byte set there must not verify (it did, found by the attest verify sweep)."""
    for pos in (0x330, 0x400, 0x49F):
        data = bytearray(BASE_REPORT)
        data[pos] ^= 0x01
        with pytest.raises(ProtocolError, match="reserved signature bytes"):
            verify_evidence(bytes(data), BASE_CERTS, TRUST, AT)
    verify_evidence(BASE_REPORT + b"\1", BASE_CERTS, TRUST, AT)  # after 0x4A0: tolerated


def test_unsigned_copy_of_the_signature_algorithm_must_match_the_signed_one() -> None:
    """The VCEK's outer signatureAlgorithm (its RSA-PSS parameters) and the signature BIT
    STRING's unused-bits byte are not signed: a Genoa VCEK claiming MGF1-SHA-512 there,
    or one unused bit, still verified (found by the attest verify sweep)."""
    report = read("trustee-azure-genoa-v3/report.bin")
    leaf = bytearray(cert_der(load_certificates(read("trustee-azure-genoa-v3/vcek-genoa.pem"))[0]))
    sha384_oid = bytes.fromhex("0609608648016503040202")
    mgf_hash = leaf.rindex(sha384_oid) + len(sha384_oid) - 1  # outer MGF1 hash: sha384->sha512
    unused_bits = leaf.rindex(b"\x03\x82\x02\x01\x00") + 4     # signature BIT STRING
    assert verify_evidence(report, [bytes(leaf), *chain("genoa")], TRUST, AT).tee == "snp"
    for pos, reason in ((mgf_hash, "signatureAlgorithm differs"), (unused_bits, "unused bits")):
        bad = bytearray(leaf)
        bad[pos] ^= 0x01
        with pytest.raises(VerificationError, match=f"chain: signature of 'SEV-VCEK'.*{reason}"):
            verify_evidence(report, [bytes(bad), *chain("genoa")], TRUST, AT)
