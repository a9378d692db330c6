"""Intel SGX/TDX quote verification against the published vectors (../shared/vectors)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keepmesh.protocol.attestation.certs import ChainCache, TrustStore
from keepmesh.protocol.attestation.dcap import detect, verify_quote
from keepmesh.protocol.attestation.dcap_quote import parse_quote
from keepmesh.protocol.attestation.evidence import detect_format, verify_evidence
from keepmesh.protocol.errors import ProtocolError, VerificationError

VEC = Path(__file__).resolve().parents[2] / "shared" / "vectors"
if not VEC.is_dir():
    VEC = Path("/work/shared/vectors")
pytestmark = pytest.mark.skipif(not VEC.is_dir(), reason="vectors not present")

T2023 = datetime(2023, 7, 1, tzinfo=UTC)
T2025 = datetime(2025, 6, 25, tzinfo=UTC)
T2026 = datetime(2026, 2, 3, tzinfo=UTC)
TRUST = TrustStore()

# name -> (file, at, format, measurement, report_data prefix, debug, extra expected claims)
POSITIVE = {
    "occlum": ("sgx-dcap/trustee-occlum-v3/quote.dat", T2025, "sgx-dcap",
               "8f173e4613ff05c52aaf04162d234edae8c9977eae47eb2299ae16a553011c68",
               "74657374" + "00" * 60, True,
               {"mrsigner": "83d719e77deaca1470f6baf62a4d774303c899db69020f9c70ee1dfc08c7ce9e",
                "isvprodid": 0, "isvsvn": 0, "fmspc": "00606a000000",
                "attributes": "0700000000000000e700000000000000"}),
    "phala-sgx": ("sgx-dcap/phala-dcapqvl-v3/quote.dat", T2025, "sgx-dcap",
                  "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb",
                  "48656c6c6f2c20776f726c6421", False,
                  {"mrsigner": "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6",
                   "fmspc": "00a067110000"}),
    "spr-v4": ("tdx/gotdxguest-v4-spr/quote.dat", T2023, "tdx",
               "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f"
               "22fc00b8dcd404bc10d5e119d7215cbb",
               "6c62dec1b8191749a31dab490be532a35944dea47caef1f980863993d9899545", False,
               {"rtmr0": "2927da70461cd63266f43230cc1849c03ef25ebe490062a801d8fcc80af42976"
                         "823adf08f833c1e50b51779c6593f32a",
                "td_attributes": "0000004000000000", "xfam": "e71a060000000000",
                "tee_tcb_svn": "03000400000000000000000000000000", "fmspc": "50806f000000",
                "body_type": "TD10"}),
    "gotdx-v5": ("tdx/gotdxguest-v5/quote.dat", T2026, "tdx",
                 "7348651a34b2d2d3462822e3a750ec6110125f36757c78480bbfc69cc0d21fb0"
                 "01a1ced3ee19747dda8f750c3bc8f876",
                 "945eaacf5abc1f719d8666a942fda03d", False,
                 {"tee_tcb_svn2": "0d010400000000000000000000000000", "body_type": "TD15",
                  "mrservicetd": "00" * 48, "fmspc": "90c06f000000"}),
    "trustee-v4": ("tdx/trustee-v4/quote.dat", T2025, "tdx",
                   "705ee9381b8633a9fbe532b52345e8433343d2868959f57889d84ca377c395b6"
                   "89cac1599ccea1b7d420483a9ce5f031",
                   "7c71fe2c86eff65a7cf8dbc22b3275689fd0464a", True,
                   {"td_attributes": "0100001000000000", "xfam": "e742060000000000",
                    "rtmr2": "00" * 48}),
    "trustee-v5": ("tdx/trustee-v5/quote.dat", T2025, "tdx",
                   "dfba221b48a22af8511542ee796603f37382800840dcd978703909bf8e64d4c8"
                   "a1e9de86e7c9638bfcba422f3886400a",
                   "6d6ab13b046cff606ac0074be13981b0", False,
                   {"mrservicetd": "383c87d3bbb047b2d171eaca95312ede99f258088dc788f6"
                                   "ae2ccf8b6dd848fe8d47629e08b3f6cbd4a00dd47a5a033d"}),
    "azure-v4": ("tdx/trustee-azure-v4/quote.dat", T2025, "tdx",
                 "024a32b070383331181619fa387cb4d55d1e38879f989933055ccad5bc2db795"
                 "d1737b66205949d15469dc8c1ba7ab7b",
                 "9734504f161d104c74e3165c15f779b06a9bb40dfa71937817d7eee68e593839" + "00" * 32,
                 False, {"rtmr0": "00" * 48, "fmspc": "00806f050000"}),
    "phala-tdx": ("tdx/phala-dcapqvl-v4/quote.dat", T2025, "tdx",
                  "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407"
                  "de03ae6dc5f87f27428b2538873118b7",
                  "9a9d48e7f6799642d3d1b34e1e5e1742", False,
                  {"fmspc": "b0c06f000000", "tee_tcb_svn": "06010300000000000000000000000000"}),
}


def load(rel: str) -> bytes:
    return (VEC / rel).read_bytes()


@pytest.mark.parametrize("name", sorted(POSITIVE))
def test_positive_vectors_verify_with_expected_fields(name: str) -> None:
    rel, at, fmt, meas, rd_prefix, debug, extra = POSITIVE[name]
    data = load(rel)
    assert detect(data) == fmt
    assert detect_format(data) == fmt
    v = verify_quote(data, [], TRUST, at)
    assert v.format == fmt
    assert v.tee == ("tdx" if fmt == "tdx" else "sgx")
    assert v.vendor_root
    assert v.measurement.hex() == meas
    assert v.report_data.hex().startswith(rd_prefix)
    assert len(v.report_data) == 64
    assert v.debug is debug
    assert v.tcb_status == "unknown"
    assert v.signer[0] == "Intel SGX PCK Certificate"
    assert v.signer[-1] == "Intel SGX Root CA"
    doc = v.to_json()
    for key, want in extra.items():
        assert doc[key] == want, key
    # The dispatcher reaches the same verifier.
    assert verify_evidence(data, [], TRUST, at).measurement.hex() == meas


def test_tdx_rtmrs_and_v5_descriptor_in_signed_range() -> None:
    q = parse_quote(load("tdx/gotdxguest-v5/quote.dat"))
    assert q.header.version == 5 and q.body_type == 3
    assert len(q.signed_data) == 54 + 648
    q4 = parse_quote(load("tdx/gotdxguest-v4-spr/quote.dat"))
    assert len(q4.signed_data) == 632
    assert q4.trailing == 39  # ASCII text after the signature data is tolerated


def test_trustee_expected_claims_json_agrees() -> None:
    import json

    expected = json.loads(load("tdx/trustee-v4/parse_tdx_claims_expected.json"))["quote"]["body"]
    doc = verify_quote(load("tdx/trustee-v4/quote.dat"), [], TRUST, T2025).to_json()
    assert doc["mrtd"] == expected["mr_td"]
    assert doc["mrseam"] == expected["mr_seam"]
    assert [doc[f"rtmr{i}"] for i in range(4)] == [expected[f"rtmr_{i}"] for i in range(4)]
    assert doc["report_data"] == expected["report_data"]


NEGATIVE = {
    "sgx-dcap/negative/trustee-occlum-header_user_data_byte_changed_0x1e.dat":
        (VerificationError, "SGX quote: signature invalid"),
    "sgx-dcap/negative/trustee-occlum-report_body_mrenclave_byte_changed_0x70.dat":
        (VerificationError, "SGX quote: signature invalid"),
    "sgx-dcap/negative/trustee-occlum-qe_report_byte_changed_0x274.dat":
        (VerificationError, "QE report (PCK key): signature invalid"),
    "sgx-dcap/negative/trustee-occlum-attest_key_byte_changed_0x1f4.dat":
        (VerificationError, "attestation key: not a valid P-256 point"),
    "tdx/negative/gotdxguest-spr-version_byte_changed_0x0.dat":
        (ProtocolError, "v3 is SGX only"),
    "tdx/negative/gotdxguest-spr-signed_data_size_byte_changed_0x278.dat":
        (ProtocolError, "QE report certification data needs"),
    "tdx/negative/gotdxguest-spr-cert_chain_byte_changed_0x1343.dat":
        (VerificationError, "PEM certificates parse"),
    "tdx/negative/gotdxguest-spr-root_cert_byte_changed_0x1329.dat":
        (VerificationError, "not on the chain to the trusted root"),
    "tdx/negative/gotdxguest-spr-intermediate_cert_byte_changed_0xf5f.dat":
        (VerificationError, "signature of 'Intel SGX PCK Platform CA' by 'Intel SGX Root CA'"),
    "tdx/negative/gotdxguest-spr-pck_cert_byte_changed_0xb77.dat":
        (VerificationError, "signature of 'Intel SGX PCK Certificate' by"),
    "tdx/negative/gotdxguest-spr-header_byte_changed_0x1e.dat":
        (VerificationError, "TDX quote: signature invalid"),
    "tdx/negative/gotdxguest-spr-td_quote_body_changed_0x3c.dat":
        (VerificationError, "TDX quote: signature invalid"),
}


@pytest.mark.parametrize("rel", sorted(NEGATIVE))
def test_negative_vectors_fail_at_expected_layer(rel: str) -> None:
    exc, text = NEGATIVE[rel]
    at = T2023 if "spr" in rel else T2025
    with pytest.raises(exc) as info:
        verify_quote(load(rel), [], TRUST, at)
    assert text in str(info.value)
    if exc is ProtocolError:
        assert not isinstance(info.value, VerificationError)


def test_expired_pck_fails() -> None:
    with pytest.raises(VerificationError, match="expired"):
        verify_quote(load("tdx/gotdxguest-v4-spr/quote.dat"), [],
                     TRUST, datetime(2053, 7, 1, tzinfo=UTC))
    with pytest.raises(VerificationError, match="not valid before"):
        verify_quote(load("tdx/gotdxguest-v5/quote.dat"), [], TRUST, T2023)


def test_untrusted_root_fails() -> None:
    empty = TrustStore(include_vendor=False)
    with pytest.raises(VerificationError, match="not trusted|no issuer"):
        verify_quote(load("sgx-dcap/trustee-occlum-v3/quote.dat"), [], empty, T2025)


def test_wrong_chain_pairing_fails() -> None:
    """Splice the SPR quote's PEM chain into the v5 quote (same sizes): PCK key no longer signs."""
    spr = bytearray(load("tdx/gotdxguest-v4-spr/quote.dat"))
    v5 = bytearray(load("tdx/gotdxguest-v5/quote.dat"))
    qs, qv = parse_quote(bytes(spr)), parse_quote(bytes(v5))
    pem_s, pem_v = qs.certification.pck_chain_pem, qv.certification.pck_chain_pem
    assert len(pem_s) == len(pem_v)
    i = v5.index(pem_v)
    v5[i:i + len(pem_v)] = pem_s
    with pytest.raises(VerificationError, match="QE report \\(PCK key\\): signature invalid"):
        verify_quote(bytes(v5), [], TRUST, T2025)


def test_truncation_and_garbage_are_protocol_errors() -> None:
    data = load("tdx/trustee-v5/quote.dat")
    end = len(data)
    for cut in (0, 10, 47, 48, 53, 100, 700, 702, 800, 1500, end - 10):
        with pytest.raises(ProtocolError):
            verify_quote(data[:cut], [], TRUST, T2025)
    with pytest.raises(ProtocolError):
        parse_quote(b"\x00" * 5000)


def test_chain_cache_hit_gives_same_result() -> None:
    cache = ChainCache()
    data = load("tdx/trustee-v4/quote.dat")
    a = verify_quote(data, [], TRUST, T2025, cache=cache)
    b = verify_quote(data, [], TRUST, T2025, cache=cache)
    assert a == b and cache.hits == 1
    with pytest.raises(VerificationError, match="expired"):
        verify_quote(data, [], TRUST, datetime(2060, 1, 1, tzinfo=UTC), cache=cache)


def test_qe_binding_checked() -> None:
    """Changing the QE auth data breaks SHA-256(key || auth) == QE report_data[0:32]."""
    data = bytearray(load("sgx-dcap/trustee-occlum-v3/quote.dat"))
    q = parse_quote(bytes(data))
    assert q.certification.qe_report.report_data[:32] == hashlib.sha256(
        q.attestation_key + q.certification.qe_auth_data).digest()
    data[1014] ^= 1  # first byte of qe_auth_data (v3 layout)
    with pytest.raises(VerificationError, match="does not commit to the attestation key"):
        verify_quote(bytes(data), [], TRUST, T2025)


# Signed regions of the SPR v4 quote: header+body, signature, attestation key,
# QE report, QE report signature, QE auth data. Any flipped byte must fail.
SPR = load("tdx/gotdxguest-v4-spr/quote.dat") if VEC.is_dir() else b""
SGX = load("sgx-dcap/trustee-occlum-v3/quote.dat") if VEC.is_dir() else b""
SPR_REGIONS = [(0, 632), (636, 764), (770, 1154), (1154, 1218), (1220, 1252)]
SGX_REGIONS = [(0, 432), (436, 564), (564, 948), (948, 1012), (1014, 1046)]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_flipping_any_signed_byte_fails(data: st.DataObject) -> None:
    quote, regions, at = data.draw(st.sampled_from([(SPR, SPR_REGIONS, T2023),
                                                     (SGX, SGX_REGIONS, T2025)]))
    lo, hi = data.draw(st.sampled_from(regions))
    pos = data.draw(st.integers(lo, hi - 1))
    bit = data.draw(st.integers(1, 255))
    mutated = bytearray(quote)
    mutated[pos] ^= bit
    with pytest.raises(ProtocolError):
        verify_quote(bytes(mutated), [], TRUST, at)


# ---------------------------------------- damaged embedded certificates (issue 9)


def _flip_in_cert(quote: bytes, cert_index: int, pos: int) -> bytes:
    """Flip one bit at `pos` of the DER of the cert_index-th embedded PEM certificate."""
    import base64
    import re
    m = list(re.finditer(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----",
                         quote, re.S))[cert_index]
    body = m.group(1)
    der = bytearray(base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", body)))
    der[pos % len(der)] ^= 0x10
    new64 = iter(base64.b64encode(bytes(der)))
    out = bytes(c if c in b"\r\n" else next(new64) for c in body)
    return quote[:m.start(1)] + out + quote[m.end(1):]


@pytest.mark.parametrize("rel", ["tdx/gotdxguest-v4-spr/quote.dat",
                                 "sgx-dcap/trustee-occlum-v3/quote.dat"])
def test_byte_flipped_inside_embedded_certs_is_a_declared_error(rel: str) -> None:
    """Before the fault boundary these raised ValueError, UnsupportedAlgorithm,
    InvalidVersion or TypeError (4 crash kinds in 100k public-quote mutations)."""
    from keepmesh.protocol.attestation.boundary import UnexpectedError
    quote = (VEC / rel).read_bytes()
    at = T2023 if "spr" in rel else T2025
    for index in range(3):
        for pos in range(0, 1400, 23):
            bad = _flip_in_cert(quote, index, pos)
            assert len(bad) == len(quote)
            try:
                verify_evidence(bad, (), TRUST, at)
            except UnexpectedError as err:  # guarded, but still a missed narrow check
                raise AssertionError(f"cert {index} byte {pos}: {err.reason}") from err
            except ProtocolError:
                continue
            # A flip in a byte the chain does not depend on may still verify; never crash.
