"""Chain building against the pinned AMD roots and a private test PKI."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from keepmesh.protocol.attestation.certs import (
    ChainCache,
    TrustStore,
    build_chain,
    cert_der,
    fingerprint,
    load_certificates,
    load_der,
    vendor_roots,
)
from keepmesh.protocol.errors import ProtocolError, VerificationError

VECTORS = Path(__file__).parents[2] / "shared" / "vectors"
SNP = VECTORS / "sev-snp"
AT = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)


def pem(path: Path) -> list[x509.Certificate]:
    return load_certificates(path.read_bytes())


def test_vendor_roots_pinned_and_self_signed() -> None:
    roots = {r.name: r for r in vendor_roots()}
    assert set(roots) == {"amd-ark-milan", "amd-ark-genoa", "amd-ark-turin", "intel-sgx-root-ca"}
    assert roots["amd-ark-milan"].fingerprint.hex() == (
        "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd")
    assert roots["amd-ark-genoa"].fingerprint.hex() == (
        "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1")
    trust = TrustStore()
    for root in roots.values():
        assert root.vendor and trust.is_vendor(root) and trust.is_vendor(root.cert)
        assert root.cert.subject == root.cert.issuer


def test_milan_vcek_chain_any_order() -> None:
    pool = pem(SNP / "amd-certs/milan/ask_ark_asvk.pem")
    leaf = load_der((SNP / "trustee-milan-v2/vcek.der").read_bytes())
    trust = TrustStore()
    for seed in range(3):
        random.Random(seed).shuffle(pool)
        chain = build_chain(leaf, pool, trust, AT)
        assert chain.subjects == ("SEV-VCEK", "SEV-Milan", "ARK-Milan")
        assert chain.root.vendor


def test_vlek_chain_through_asvk_and_expiry() -> None:
    pool = pem(SNP / "amd-certs/milan/ask_ark_asvk.pem")
    leaf = load_der((SNP / "trustee-milan-vlek-v3/vlek.der").read_bytes())
    trust = TrustStore()
    assert build_chain(leaf, pool, trust, AT).subjects == (
        "SEV-VLEK", "SEV-VLEK-Milan", "ARK-Milan")
    with pytest.raises(VerificationError, match="expired"):
        build_chain(leaf, pool, trust, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    with pytest.raises(VerificationError, match="not valid before"):
        build_chain(leaf, pool, trust, dt.datetime(2024, 1, 1, tzinfo=dt.UTC))


def test_turin_and_genoa_chains() -> None:
    trust = TrustStore()
    turin = build_chain(load_der((SNP / "amd-certs/turin/vcek_turin.der").read_bytes()),
                        pem(SNP / "amd-certs/turin/cert_chain_ask_ark.pem"), trust, AT)
    assert turin.subjects == ("SEV-VCEK", "SEV-Turin", "ARK-Turin")
    genoa_leaf = pem(SNP / "trustee-azure-genoa-v3/vcek-genoa.pem")[0]
    genoa = build_chain(genoa_leaf, pem(SNP / "amd-certs/genoa/cert_chain_ask_ark.pem"),
                        trust, AT)
    assert genoa.subjects == ("SEV-VCEK", "SEV-Genoa", "ARK-Genoa")


@pytest.mark.parametrize("leaf_file, pool_file", [
    ("negative/trustee-vcek_byte42_plus1.der", "amd-certs/milan/ask_ark_asvk.pem"),
    ("negative/trustee-vcek-invalid-legacy.der", "amd-certs/milan/ask_ark_asvk.pem"),
    ("negative/trustee-vcek-invalid-new.der", "amd-certs/milan/ask_ark_asvk.pem"),
    ("trustee-milan-v2/vcek.der", "amd-certs/genoa/ask_ark_asvk.pem"),
])
def test_bad_chains_fail(leaf_file: str, pool_file: str) -> None:
    leaf = load_der((SNP / leaf_file).read_bytes())
    with pytest.raises(VerificationError):
        build_chain(leaf, pem(SNP / pool_file), TrustStore(), AT)


def test_genoa_vcek_against_milan_ask_fails() -> None:
    leaf = pem(SNP / "trustee-azure-genoa-v3/vcek-genoa.pem")[0]
    with pytest.raises(VerificationError):
        build_chain(leaf, pem(SNP / "amd-certs/milan/ask_ark_asvk.pem"), TrustStore(), AT)


def test_milan_ask_under_genoa_ark_and_swapped_roles_fail() -> None:
    milan_ask = pem(SNP / "amd-certs/milan/ask.pem")[0]
    genoa_ark = pem(SNP / "amd-certs/genoa/ark.pem")[0]
    milan_ark = pem(SNP / "amd-certs/milan/ark.pem")[0]
    only_genoa = TrustStore([genoa_ark], include_vendor=False)
    with pytest.raises(VerificationError):
        build_chain(milan_ask, [genoa_ark], only_genoa, AT)
    # ARK presented as if issued by the ASK: not trusted, and the names do not link.
    with pytest.raises(VerificationError):
        build_chain(milan_ark, [milan_ask], TrustStore(include_vendor=False), AT)


def test_untrusted_root_fails_and_extra_root_verifies() -> None:
    pool = pem(SNP / "amd-certs/milan/ask_ark_asvk.pem")
    leaf = load_der((SNP / "gosevguest-milan-v2/vcek.der").read_bytes())
    with pytest.raises(VerificationError, match="not trusted"):
        build_chain(leaf, pool, TrustStore(include_vendor=False), AT)
    ark = pem(SNP / "amd-certs/milan/ark.pem")[0]
    extra = TrustStore([ark], include_vendor=False)
    chain = build_chain(leaf, pool, extra, AT)
    assert not chain.root.vendor and not extra.is_vendor(ark)


# ---------------------------------------------------------- private test PKI


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: object, issuer: str, issuer_key: object, *, ca: bool,
          pad: padding.AsymmetricPadding | None = None,
          hash_alg: hashes.HashAlgorithm | None = None) -> x509.Certificate:
    now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key())  # type: ignore[attr-defined]
               .serial_number(x509.random_serial_number()).not_valid_before(now)
               .not_valid_after(now + dt.timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return builder.sign(issuer_key, hash_alg or hashes.SHA256(),  # type: ignore[arg-type]
                        rsa_padding=pad)


@pytest.fixture(scope="module")
def pki() -> dict[str, x509.Certificate]:
    root_key = ec.generate_private_key(ec.SECP384R1())
    mid_key = rsa.generate_private_key(65537, 2048)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    notca_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert("test root", root_key, "test root", root_key, ca=True, hash_alg=hashes.SHA384())
    mid = _cert("test mid", mid_key, "test root", root_key, ca=True, hash_alg=hashes.SHA384())
    leaf = _cert("test leaf", leaf_key, "test mid", mid_key, ca=False, pad=padding.PKCS1v15())
    notca = _cert("not a ca", notca_key, "test mid", mid_key, ca=False)
    below = _cert("below leaf", leaf_key, "not a ca", notca_key, ca=False)
    return {"root": root, "mid": mid, "leaf": leaf, "notca": notca, "below": below}


def test_private_pki_ecdsa_and_pkcs1(pki: dict[str, x509.Certificate]) -> None:
    trust = TrustStore([cert_der(pki["root"])], include_vendor=False)
    chain = build_chain(pki["leaf"], [pki["mid"]], trust, AT)
    assert chain.subjects == ("test leaf", "test mid", "test root")
    assert chain.root.fingerprint == fingerprint(pki["root"])
    assert not trust.is_vendor(chain.root)


def test_non_ca_issuer_rejected(pki: dict[str, x509.Certificate]) -> None:
    trust = TrustStore([pki["root"]], include_vendor=False)
    with pytest.raises(VerificationError, match="not a CA"):
        build_chain(pki["below"], [pki["mid"], pki["notca"]], trust, AT)


def test_add_root_requires_self_signed(pki: dict[str, x509.Certificate]) -> None:
    with pytest.raises(VerificationError):
        TrustStore([pki["mid"]], include_vendor=False)


def test_chain_cache_hits_but_rechecks_validity_and_trust() -> None:
    pool = pem(SNP / "amd-certs/milan/ask_ark_asvk.pem")
    leaf = load_der((SNP / "trustee-milan-vlek-v3/vlek.der").read_bytes())
    cache = ChainCache()
    trust = TrustStore()
    first = build_chain(leaf, pool, trust, AT, cache=cache)
    second = build_chain(leaf, list(reversed(pool)), trust, AT, cache=cache)
    assert (cache.hits, cache.misses) == (1, 1) and first.subjects == second.subjects
    with pytest.raises(VerificationError, match="expired"):
        build_chain(leaf, pool, trust, dt.datetime(2026, 1, 1, tzinfo=dt.UTC), cache=cache)
    with pytest.raises(VerificationError):
        build_chain(leaf, pool, TrustStore(include_vendor=False), AT, cache=cache)


def test_loading_bounds_and_garbage() -> None:
    der = (SNP / "trustee-milan-v2/vcek.der").read_bytes()
    assert load_certificates(der)[0].subject == load_der(der).subject
    assert len(pem(SNP / "amd-certs/milan/ask_ark_asvk.pem")) == 3
    with pytest.raises(ProtocolError):
        load_der(b"\x30\x82" + b"\x00" * 40)
    with pytest.raises(ProtocolError):
        load_der(b"\x30" * (17 * 1024))
    with pytest.raises(ProtocolError):
        load_certificates(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


# ------------------------------------------------- hostile certificates (issue 9)


def _leaf_der() -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    root_key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert("hostile leaf", key, "test root", root_key, ca=False)
    return cert_der(cert), key


def _patched(der: bytes, old: bytes, new: bytes) -> bytes:
    assert der.count(old) >= 1 and len(old) == len(new)
    return der.replace(old, new, 1)


def _with_ski(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    return (x509.CertificateBuilder().subject_name(_name("d")).issuer_name(_name("d"))
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(x509.SubjectKeyIdentifier(b"\1" * 20), False)
            .sign(key, hashes.SHA256()))


def _hostile_variants() -> dict[str, bytes]:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    der, key = _leaf_der()
    point = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    off_curve = point[:-1] + bytes([point[-1] ^ 1])
    return {
        "off-curve EC point": _patched(der, point, off_curve),
        "unknown key algorithm": _patched(der, bytes.fromhex("2a8648ce3d0201"),
                                          bytes.fromhex("2a8648ce3d0209")),
        "invalid version": _patched(der, bytes.fromhex("a003020102"),
                                    bytes.fromhex("a003020107")),
        "unknown signature algorithm": der.replace(bytes.fromhex("2a8648ce3d040302"),
                                                   bytes.fromhex("2a8648ce3d040309")),
        # The SubjectKeyIdentifier's OID rewritten to BasicConstraints' OID: two BCs.
        "duplicate extension": _patched(cert_der(_with_ski(key)), bytes.fromhex("0603551d0e"),
                                        bytes.fromhex("0603551d13")),
    }


@pytest.mark.parametrize("name", sorted(_hostile_variants()))
def test_library_errors_become_protocol_errors(name: str) -> None:
    """Each of these raised ValueError/UnsupportedAlgorithm/InvalidVersion/
    DuplicateExtension out of chain building before the fault boundary."""
    der = _hostile_variants()[name]
    with pytest.raises(ProtocolError) as err:
        load_der(der)
    assert "\n" not in str(err.value) and str(err.value).startswith("certificate")
    with pytest.raises(ProtocolError):
        load_certificates(der)


def test_good_certificate_still_loads() -> None:
    der, _ = _leaf_der()
    assert load_der(der).subject == _name("hostile leaf")


def test_self_issued_pile_is_rejected_in_few_signature_checks() -> None:
    """8 self-issued certificates under one name and key: before the bound every
    ordering was searched (thousands of checks); now a path never repeats a name."""
    from keepmesh.protocol.attestation.certs import SignatureBudget
    key = ec.generate_private_key(ec.SECP256R1())
    pile = [_cert("x", key, "x", key, ca=True) for _ in range(8)]
    leaf = _cert("victim", ec.generate_private_key(ec.SECP256R1()), "x", key, ca=False)
    budget = SignatureBudget()
    with pytest.raises(VerificationError):
        build_chain(leaf, pile, TrustStore(include_vendor=False), AT, budget=budget)
    assert 1 <= budget.used <= 8


def test_wide_pool_stops_at_the_signature_budget() -> None:
    """5 levels x 3 certificates that all verify: 243 paths; the budget ends it."""
    from keepmesh.protocol.attestation.certs import (
        MAX_SIGNATURE_CHECKS,
        SignatureBudget,
        WorkLimitExceeded,
    )
    key = ec.generate_private_key(ec.SECP256R1())
    pool = [_cert(f"L{level}", key, f"L{level + 1}", key, ca=True)
            for level in range(1, 6) for _ in range(3)]
    leaf = _cert("victim", ec.generate_private_key(ec.SECP256R1()), "L1", key, ca=False)
    budget = SignatureBudget()
    with pytest.raises(WorkLimitExceeded, match="signature checks"):
        build_chain(leaf, pool, TrustStore(include_vendor=False), AT, budget=budget)
    assert budget.used == MAX_SIGNATURE_CHECKS


def test_duplicates_deduped_and_candidates_capped(pki: dict[str, x509.Certificate]) -> None:
    from keepmesh.protocol.attestation.certs import MAX_CANDIDATES, SignatureBudget
    trust = TrustStore([pki["root"]], include_vendor=False)
    budget = SignatureBudget()
    chain = build_chain(pki["leaf"], [pki["mid"]] * 100 + [pki["leaf"]] * 5, trust, AT,
                        budget=budget)
    assert chain.subjects == ("test leaf", "test mid", "test root") and budget.used == 2
    key = ec.generate_private_key(ec.SECP256R1())
    many = [_cert(f"c{i}", key, "c", key, ca=True) for i in range(MAX_CANDIDATES + 1)]
    with pytest.raises(ProtocolError, match="candidate certificates"):
        build_chain(pki["leaf"], many, trust, AT)


def test_real_chains_need_two_checks() -> None:
    from keepmesh.protocol.attestation.certs import SignatureBudget
    pool = pem(SNP / "amd-certs/milan/ask_ark_asvk.pem")
    leaf = load_der((SNP / "trustee-milan-v2/vcek.der").read_bytes())
    budget = SignatureBudget()
    build_chain(leaf, pool, TrustStore(), AT, budget=budget)
    assert budget.used == 2
