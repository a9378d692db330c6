"""Intel collateral: signed TCB info / QE identity, CRLs, TCB status."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from keepmesh.protocol.attestation.certs import TrustStore
from keepmesh.protocol.attestation.collateral import (
    _converge,
    _top_level_texts,
    apply_collateral,
    load_collateral,
)
from keepmesh.protocol.attestation.dcap import verify_quote
from keepmesh.protocol.attestation.evidence import verify_evidence
from keepmesh.protocol.errors import ProtocolError, VerificationError

VEC = Path("/work/shared/vectors")
pytestmark = pytest.mark.skipif(not VEC.is_dir(), reason="vectors not present")
AT = datetime(2025, 6, 25, tzinfo=UTC)
TRUST = TrustStore()


def files(rel: str) -> dict[str, bytes]:
    return {"collateral.json": (VEC / rel / "collateral.json").read_bytes()}


def quote(rel: str) -> bytes:
    return (VEC / rel / "quote.dat").read_bytes()


def test_sgx_status_matches_dcap_qvl() -> None:
    v = verify_quote(quote("sgx-dcap/phala-dcapqvl-v3"), [], TRUST, AT)
    out = apply_collateral(v, files("sgx-dcap/phala-dcapqvl-v3"), TRUST, AT)
    assert out.tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert out.claims["collateral"]["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    assert out.claims["collateral"]["qe_tcb_status"] == "UpToDate"
    assert v.tcb_status == "unknown"  # the input is not mutated


def test_tdx_status_matches_dcap_qvl_via_dispatcher() -> None:
    out = verify_evidence(quote("tdx/phala-dcapqvl-v4"), [], TRUST, AT,
                          collateral=files("tdx/phala-dcapqvl-v4"))
    assert out.tcb_status == "UpToDate"
    assert out.claims["collateral"]["advisory_ids"] == []
    assert "Intel SGX PCK Platform CA" in out.claims["collateral"]["crls_checked"]


def test_collateral_for_other_platform_fails() -> None:
    v = verify_quote(quote("tdx/trustee-v4"), [], TRUST, AT)
    with pytest.raises(VerificationError, match="FMSPC"):
        apply_collateral(v, files("tdx/phala-dcapqvl-v4"), TRUST, AT)
    s = verify_quote(quote("sgx-dcap/trustee-occlum-v3"), [], TRUST, AT)
    with pytest.raises(VerificationError, match="TCB info is for 'TDX'"):
        apply_collateral(s, files("tdx/phala-dcapqvl-v4"), TRUST, AT)


def _tamper(rel: str, key: str, old: str, new: str) -> dict[str, bytes]:
    obj = json.loads((VEC / rel / "collateral.json").read_bytes())
    assert old in obj[key]
    obj[key] = obj[key].replace(old, new, 1)
    return {"c.json": json.dumps(obj).encode()}


def test_tampered_tcb_info_fails_signature() -> None:
    rel = "tdx/phala-dcapqvl-v4"
    v = verify_quote(quote(rel), [], TRUST, AT)
    bad = _tamper(rel, "tcb_info", '"tcbStatus":"OutOfDate"', '"tcbStatus":"UpToDate"')
    with pytest.raises(VerificationError, match="tcb_info: signature invalid"):
        apply_collateral(v, bad, TRUST, AT)
    bad = _tamper(rel, "qe_identity", '"isvprodid":2', '"isvprodid":3')
    with pytest.raises(VerificationError, match="qe_identity: signature invalid"):
        apply_collateral(v, bad, TRUST, AT)
    bad = _tamper(rel, "tcb_info_signature", "0", "1")
    with pytest.raises(VerificationError, match="signature invalid"):
        apply_collateral(v, bad, TRUST, AT)


def test_reserialized_text_is_not_accepted() -> None:
    """The signature is over the exact text: re-serializing with spaces must fail."""
    rel = "tdx/phala-dcapqvl-v4"
    obj = json.loads((VEC / rel / "collateral.json").read_bytes())
    obj["tcb_info"] = json.dumps(json.loads(obj["tcb_info"]), indent=1)
    v = verify_quote(quote(rel), [], TRUST, AT)
    with pytest.raises(VerificationError, match="signature invalid"):
        apply_collateral(v, {"c.json": json.dumps(obj).encode()}, TRUST, AT)


def test_expired_or_future_collateral_fails() -> None:
    rel = "tdx/phala-dcapqvl-v4"
    v = verify_quote(quote(rel), [], TRUST, AT)
    with pytest.raises(VerificationError, match="expired"):
        apply_collateral(v, files(rel), TRUST, datetime(2025, 8, 1, tzinfo=UTC))
    with pytest.raises(VerificationError, match="after the verification time"):
        apply_collateral(v, files(rel), TRUST, datetime(2025, 6, 1, tzinfo=UTC))


def test_pcs_style_files_slice_exact_text() -> None:
    """PCS format {"tcbInfo": {...}, "signature": ...}: signed bytes are the inner text."""
    rel = "tdx/phala-dcapqvl-v4"
    obj = json.loads((VEC / rel / "collateral.json").read_bytes())
    tcb = '{"tcbInfo":' + obj["tcb_info"] + ',"signature":"' + obj["tcb_info_signature"] + '"}'
    qe = ('{ "enclaveIdentity" : ' + obj["qe_identity"] + ' , "signature":"'
          + obj["qe_identity_signature"] + '"}')
    f = {"tcb.json": tcb.encode(), "qe.json": qe.encode(),
         "chain.pem": obj["tcb_info_issuer_chain"].encode(),
         "pck.crl": bytes.fromhex(obj["pck_crl"]), "root.crl": bytes.fromhex(obj["root_ca_crl"]),
         "pckcrl_chain.pem": obj["pck_crl_issuer_chain"].encode(), "notes.txt": b"hello"}
    coll = load_collateral(f)
    assert coll.ignored == ("notes.txt",)
    v = verify_quote(quote(rel), [], TRUST, AT)
    assert apply_collateral(v, coll, TRUST, AT).tcb_status == "UpToDate"


def test_revoked_pck_fails() -> None:
    """A CRL listing the PCK serial (signed by a foreign key) is rejected; the real one passes."""
    rel = "tdx/phala-dcapqvl-v4"
    v = verify_quote(quote(rel), [], TRUST, AT)
    coll = load_collateral(files(rel))
    pck = v.claims["pck_chain"][0]
    crl = coll.crls[1] if "Platform" in coll.crls[1].issuer.rfc4514_string() else coll.crls[0]
    assert crl.get_revoked_certificate_by_serial_number(int(pck["serial"], 16)) is None
    # Forge: mark the serial as revoked in a CRL signed by a key that is not the CA's.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    forged = (x509.CertificateRevocationListBuilder().issuer_name(crl.issuer)
              .last_update(datetime(2025, 6, 1, tzinfo=UTC))
              .next_update(datetime(2025, 7, 30, tzinfo=UTC))
              .add_revoked_certificate(x509.RevokedCertificateBuilder()
                                       .serial_number(int(pck["serial"], 16))
                                       .revocation_date(datetime(2025, 6, 1, tzinfo=UTC)).build())
              .sign(key, hashes.SHA256()))
    from cryptography.hazmat.primitives.serialization import Encoding

    with pytest.raises(VerificationError, match="no valid signature"):
        apply_collateral(v, {"x.crl": forged.public_bytes(Encoding.DER)}, TRUST, AT)


def test_stale_root_crl_fails() -> None:
    v = verify_quote(quote("tdx/phala-dcapqvl-v4"), [], TRUST, AT)
    stale = (VEC / "sgx-dcap/intel-root/rootcrl.der").read_bytes()
    with pytest.raises(VerificationError, match="CRL of 'Intel SGX Root CA' expired"):
        apply_collateral(v, {"rootcrl.der": stale}, TRUST, AT)
    ok = apply_collateral(v, {"rootcrl.der": stale}, TRUST, datetime(2023, 5, 1, tzinfo=UTC))
    assert ok.tcb_status == "unknown"  # CRL only: no TCB info, no invented status


def test_converge_rules() -> None:
    assert _converge("UpToDate", "OutOfDate") == "OutOfDate"
    assert _converge("ConfigurationNeeded", "OutOfDate") == "OutOfDateConfigurationNeeded"
    assert _converge("SWHardeningNeeded", "UpToDate") == "SWHardeningNeeded"
    assert _converge("UpToDate", "Revoked") == "Revoked"


def test_exact_text_slicer_and_bad_input() -> None:
    assert _top_level_texts('{"a" : {"b": [1, 2]} , "c":"x"}') == {"a": '{"b": [1, 2]}',
                                                                      "c": '"x"'}
    for bad in (b"{", b'{"tcbInfo": 1}', b'{"tcb_info": 5}', b'{"x": 1}'):
        with pytest.raises(ProtocolError):
            load_collateral({"f.json": bad})
    with pytest.raises(ProtocolError):
        load_collateral({"f.json": b"{" + b" " * 600 * 1024 + b"}"})


# --------------------------------------------- fail closed without collateral (issue 9)


def test_default_policy_needs_collateral_for_tdx() -> None:
    """Without collateral a TDX quote's status is "unknown": the default policy says no;
    the same quote with its collateral is UpToDate and accepted."""
    from keepmesh.protocol.attestation.policy import Policy, PolicyError, appraise
    bare = verify_evidence(quote("tdx/phala-dcapqvl-v4"), [], TRUST, AT)
    assert bare.tcb_status == "unknown"
    with pytest.raises(PolicyError, match="accepted_tcb_status"):
        appraise(Policy(allow_debug=True), bare)
    full = verify_evidence(quote("tdx/phala-dcapqvl-v4"), [], TRUST, AT,
                           collateral=files("tdx/phala-dcapqvl-v4"))
    appraise(Policy(allow_debug=True), full)
    sgx = verify_evidence(quote("sgx-dcap/phala-dcapqvl-v3"), [], TRUST, AT,
                          collateral=files("sgx-dcap/phala-dcapqvl-v3"))
    with pytest.raises(PolicyError, match="ConfigurationAndSWHardeningNeeded"):
        appraise(Policy(allow_debug=True), sgx)


def test_agent_config_collateral_is_loaded(tmp_path: Path) -> None:
    """`collateral = "DIR"` in the agent config names files loaded at start-up."""
    from keepmesh.agent.config import load_config
    from keepmesh.agent.startup import StartupError, load_agent_collateral
    from keepmesh.protocol.attestation.collateral import Collateral
    folder = tmp_path / "coll"
    folder.mkdir()
    (folder / "tdx.json").write_bytes(files("tdx/phala-dcapqvl-v4")["collateral.json"])
    cfg_file = tmp_path / "agent.toml"
    cfg_file.write_text('collateral = "coll"\n')
    cfg = load_config(cfg_file)
    assert cfg.collateral == folder
    coll = load_agent_collateral(cfg.collateral)
    assert isinstance(coll, Collateral) and coll.tcb_info is not None
    out = verify_evidence(quote("tdx/phala-dcapqvl-v4"), [], TRUST, AT, collateral=coll)
    assert out.tcb_status == "UpToDate"
    (folder / "bad.json").write_bytes(b'{"tcb_info": 5}')
    with pytest.raises(StartupError, match="tcb_info"):
        load_agent_collateral(folder)
    with pytest.raises(StartupError, match="collateral"):
        load_agent_collateral(tmp_path / "missing")


def test_hostile_collateral_json_nesting_is_a_protocol_error() -> None:
    deep = b'{"tcb_info": ' + b"[" * 50000 + b"]" * 50000 + b"}"
    with pytest.raises(ProtocolError):
        load_collateral({"c.json": deep})


def test_crl_with_a_flipped_issuer_name_is_not_skipped() -> None:
    """One bit flipped in the (signed) issuer name of a genuine CRL made it look like
    another chain's CRL, and it was skipped: a revocation could be switched off
    unnoticed (found by the attest verify sweep). An unverifiable CRL is an error."""
    import binascii

    rel = "tdx/phala-dcapqvl-v4"
    v = verify_quote(quote(rel), [], TRUST, AT)
    for key, name in (("pck_crl", b"SGX PCK Platform CA"), ("root_ca_crl", b"SGX Root CA")):
        obj = json.loads((VEC / rel / "collateral.json").read_bytes())
        der = bytearray(binascii.unhexlify(obj[key]))
        der[der.index(name)] ^= 0x01  # "RGX ..."
        obj[key] = der.hex()
        with pytest.raises(VerificationError, match="no valid signature by a known issuer"):
            apply_collateral(v, {"c.json": json.dumps(obj).encode()}, TRUST, AT)
    # A genuine CRL of an unrelated chain (Intel's root CRL beside SNP evidence) is still
    # skipped: its signature verifies, and its root is not the evidence's.
    snp = VEC.parent / "vectors/sev-snp"
    ev = verify_evidence((snp / "trustee-milan-v2/report.bin").read_bytes(),
                         [(snp / "trustee-milan-v2/vcek.der").read_bytes(),
                          (snp / "amd-certs/milan/ask_ark_asvk.pem").read_bytes()], TRUST, AT)
    crl = (VEC / "sgx-dcap/intel-root/rootcrl.der").read_bytes()
    assert apply_collateral(ev, {"root.crl": crl}, TRUST, AT).claims["collateral"] == {
        "crls_checked": []}
