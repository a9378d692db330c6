"""X.509 chain building and verification for attestation evidence.

Why a module of our own rather than a TLS-style path validator: TEE vendors
issue odd certificates (AMD signs with RSASSA-PSS/SHA-384 and uses serial
number 0, Intel ships PEM bundles in arbitrary order inside quotes), and an
attestation verifier must end every chain in a *pinned* root, never in a
system CA store. So chains are built here by issuer/subject name from a pool
of presented certificates, each link's signature is checked explicitly with
an allow-list of algorithms, every certificate must be valid at a caller-given
time (`at`, so tests and simulations pin the clock; protocol/ never reads it),
and the chain must end in a root held by a `TrustStore`.

Public API (also used by the Intel DCAP verifier):

- `load_certificates(data) -> list[x509.Certificate]`: PEM (one or many) or DER.
- `load_der(der) -> x509.Certificate`: one DER certificate, bounded.
- `verify_issued_by(cert, issuer)`: one link (names + signature), raises.
- `verify_signature(public_key, signature, data, hash_alg, pss=False)`.
- `TrustStore`: pinned vendor roots + extra roots, keyed by SHA-256 fingerprint.
- `build_chain(leaf, pool, trust, at, cache=None) -> VerifiedChain`.
- `ChainCache`: memoises verified chains so repeated evidence skips the
  (slow, RSA-4096) chain signatures; validity and trust are re-checked on hits.

Every failure raises `VerificationError` (or `ProtocolError` for unparsable
input) with a one-line reason naming the certificate.

Fault boundary: `cryptography` parses certificates lazily, so a damaged
name, extension, key or algorithm would otherwise raise ValueError,
TypeError, UnsupportedAlgorithm or InvalidVersion at whichever later line
first touches it. `load_der`/`load_certificates` therefore touch every part
of each certificate once (`_checked`) and turn any library error into a
ProtocolError naming the part; a certificate that loads is safe to use.

Work bound (hostile chains): the candidate pool is de-duplicated by DER and
capped at MAX_CANDIDATES; a path never repeats a subject name, is at most
MAX_CHAIN_DEPTH certificates long, each (child, issuer) link is checked at
most once, and one verification performs at most MAX_SIGNATURE_CHECKS
signature checks (`SignatureBudget`), leaf selection included.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ..errors import ProtocolError, VerificationError

MAX_CERT_DER = 16 * 1024
MAX_PEM_INPUT = 256 * 1024
MAX_CERTS = 16
MAX_CHAIN_DEPTH = 6
"""A chain is at most this many certificates, leaf and root included."""
MAX_CANDIDATES = 32
"""Distinct candidate certificates (presented + TrustStore intermediates) per chain build."""
MAX_SIGNATURE_CHECKS = 16
"""Signature checks one evidence verification may perform (leaf selection + chain links).

A genuine SNP or DCAP chain needs 2 (and SNP leaf selection 1 per presented
EC P-384 certificate, at most 8 on the wire); anything needing more is
hostile or broken and is rejected instead of searched."""
MIN_RSA_BITS = 2048

_ALLOWED_HASHES: tuple[type[hashes.HashAlgorithm], ...] = (
    hashes.SHA256, hashes.SHA384, hashes.SHA512)
_ALLOWED_CURVES: tuple[type[ec.EllipticCurve], ...] = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


# ------------------------------------------------------------------ loading


LIBRARY_ERRORS: tuple[type[Exception], ...] = (
    ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion, x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType, x509.ExtensionNotFound, x509.AttributeNotFound,
    IndexError, OverflowError, UnicodeError, KeyError, AttributeError)
"""What `cryptography` raises on hostile encodings (lazily, on first access)."""


def _short(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:80] if str(err) else ''}"


def _der_element(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, end) of the DER element at `pos`; ValueError if it overruns."""
    if pos + 2 > len(data):
        raise ValueError("DER element truncated")
    first = data[pos + 1]
    if first < 0x80:
        start, length = pos + 2, first
    else:
        n = first & 0x7F
        if not 1 <= n <= 4 or pos + 2 + n > len(data):
            raise ValueError("DER length malformed")
        start, length = pos + 2 + n, int.from_bytes(data[pos + 2:pos + 2 + n], "big")
    if start + length > len(data):
        raise ValueError("DER element overruns its container")
    return data[pos], start, start + length


def _unsigned_parts_consistent(der: bytes, tbs: bytes) -> None:
    """The parts of a certificate its signature does not cover must repeat the signed ones.

    `signatureAlgorithm` (outside tbsCertificate) must be byte-identical to
    tbsCertificate.signature (RFC 5280 4.1.1.2), and the signature BIT STRING must have
    no unused bits. Why: verification reads the outer copy (e.g. RSA-PSS parameters), so
    a flipped MGF1 hash there was accepted; one certificate had many encodings.
    Raises ValueError naming the inconsistency.
    """
    _, cert_start, _ = _der_element(der, 0)
    _, _, tbs_end = _der_element(der, cert_start)
    _, _, alg_end = _der_element(der, tbs_end)
    outer = der[tbs_end:alg_end]
    tag, sig_start, sig_end = _der_element(der, alg_end)
    if tag != 0x03 or sig_start == sig_end or der[sig_start] != 0:
        raise ValueError("signature BIT STRING has unused bits")
    _, pos, _ = _der_element(tbs, 0)
    tag, _, end = _der_element(tbs, pos)
    if tag == 0xA0:  # [0] version, then the serial number
        tag, _, end = _der_element(tbs, end)
    _, _, inner_end = _der_element(tbs, end)
    if tbs[end:inner_end] != outer:
        raise ValueError("signatureAlgorithm differs from the signed tbsCertificate.signature")


def _checked(cert: x509.Certificate) -> x509.Certificate:
    """Touch every part verification uses, so damage surfaces here as ProtocolError.

    Why: the parts are decoded lazily, and a failure first seen deep inside
    chain building or a claim reader would otherwise escape as a library
    exception. After this, reading any of them cannot raise.
    """
    part = "structure"
    try:
        part = "version"
        cert.version  # noqa: B018 - access is the check
        part = "serial"
        cert.serial_number  # noqa: B018
        part = "subject"
        cert.subject.rfc4514_string()
        for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            attr.value  # noqa: B018
        part = "issuer"
        cert.issuer.rfc4514_string()
        part = "validity"
        cert.not_valid_before_utc  # noqa: B018
        cert.not_valid_after_utc  # noqa: B018
        part = "signature algorithm"
        cert.signature_algorithm_oid  # noqa: B018
        cert.signature_hash_algorithm  # noqa: B018
        cert.signature_algorithm_parameters  # noqa: B018
        cert.signature  # noqa: B018
        cert.tbs_certificate_bytes  # noqa: B018
        part = "public key"
        cert.public_key()
        part = "extensions"
        cert.extensions  # noqa: B018
    except LIBRARY_ERRORS as err:
        raise ProtocolError(f"certificate: bad {part} ({_short(err)})") from None
    return cert


def _quiet_load(fn: object, data: bytes) -> x509.Certificate:
    """Load while hiding cryptography's warning about AMD's serial number 0.

    AMD VCEK/VLEK certificates carry serial 0, which cryptography 50 accepts
    with a CryptographyDeprecationWarning; the warning is noise for every
    real SNP evidence, so it is suppressed here and only here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cert = fn(data)  # type: ignore[operator]
        except LIBRARY_ERRORS as err:
            raise ProtocolError(f"certificate: unparsable ({_short(err)})") from None
        assert isinstance(cert, x509.Certificate)
        return _checked(cert)


def load_der(der: bytes) -> x509.Certificate:
    """Parse one DER certificate of at most MAX_CERT_DER bytes."""
    if not isinstance(der, (bytes, bytearray)):
        raise ProtocolError("certificate: expected bytes")
    if len(der) > MAX_CERT_DER:
        raise ProtocolError(f"certificate: {len(der)} bytes exceeds {MAX_CERT_DER}")
    if len(der) < 16:
        raise ProtocolError("certificate: too short")
    return _quiet_load(x509.load_der_x509_certificate, bytes(der))


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Parse PEM (any number of certificates, any order) or a single DER certificate."""
    if len(data) > MAX_PEM_INPUT:
        raise ProtocolError(f"certificates: {len(data)} bytes exceeds {MAX_PEM_INPUT}")
    if b"-----BEGIN CERTIFICATE-----" in data:
        if data.count(b"-----BEGIN CERTIFICATE-----") > MAX_CERTS:
            raise ProtocolError(f"certificates: more than {MAX_CERTS} in one PEM bundle")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                certs = x509.load_pem_x509_certificates(bytes(data))
            except LIBRARY_ERRORS as err:
                raise ProtocolError(f"certificates: bad PEM ({_short(err)})") from None
            if len(certs) > MAX_CERTS:
                raise ProtocolError(f"certificates: {len(certs)} exceeds {MAX_CERTS}")
            return [_checked(c) for c in certs]
    return [load_der(data)]


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def fingerprint(cert: x509.Certificate) -> bytes:
    """SHA-256 of the DER encoding: how roots are identified everywhere."""
    return hashlib.sha256(cert_der(cert)).digest()


def subject_str(cert: x509.Certificate) -> str:
    """Short human name: the CN if present, else the RFC 4514 subject."""
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if cns:
        value = cns[0].value
        return value if isinstance(value, str) else value.decode("latin-1")
    return cert.subject.rfc4514_string()[:120]


# --------------------------------------------------------------- signatures


class WorkLimitExceeded(VerificationError):
    """A verification needed more signature checks than its budget allows."""


class SignatureBudget:
    """Counts the signature checks of one verification and stops it past a limit.

    Why: chain building searches, and a hostile pool can make a search cost
    thousands of RSA/ECDSA checks on the event loop. Every check goes through
    `spend`; the verification fails with a one-line reason once `limit` is
    reached. `used` is what tests assert on (work, not wall time).
    """

    def __init__(self, limit: int = MAX_SIGNATURE_CHECKS) -> None:
        self.limit = limit
        self.used = 0

    def spend(self, what: str) -> None:
        if self.used >= self.limit:
            raise WorkLimitExceeded(
                f"{what}: more than {self.limit} signature checks needed (hostile or broken "
                f"certificates)")
        self.used += 1


def verify_signature(public_key: object, signature: bytes, data: bytes,
                     hash_alg: hashes.HashAlgorithm, *, pss: bool = False,
                     budget: SignatureBudget | None = None) -> None:
    """Check one signature with an allow-listed algorithm; raise VerificationError.

    RSA: PKCS#1 v1.5, or PSS with MGF1 of the same hash and salt = digest
    length (AMD's parameters). ECDSA on P-256/P-384/P-521 (DER signature).
    A `budget`, when given, is charged one check before any work is done.
    """
    if budget is not None:
        budget.spend("signature")
    if not isinstance(hash_alg, _ALLOWED_HASHES):
        raise VerificationError(f"signature: hash {hash_alg.name} not allowed")
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < MIN_RSA_BITS:
                raise VerificationError(f"signature: RSA key of {public_key.key_size} bits")
            pad: padding.AsymmetricPadding
            if pss:
                pad = padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
            else:
                pad = padding.PKCS1v15()
            public_key.verify(signature, data, pad, hash_alg)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            if not isinstance(public_key.curve, _ALLOWED_CURVES):
                raise VerificationError(f"signature: curve {public_key.curve.name} not allowed")
            public_key.verify(signature, data, ec.ECDSA(hash_alg))
        else:
            raise VerificationError(f"signature: key type {type(public_key).__name__} not allowed")
    except InvalidSignature:
        raise VerificationError("signature: invalid") from None
    except LIBRARY_ERRORS as err:
        raise VerificationError(f"signature: unusable ({_short(err)})") from None


def _cert_uses_pss(cert: x509.Certificate) -> bool:
    params = cert.signature_algorithm_parameters
    if isinstance(params, padding.PSS):
        # Enforce AMD's (and RFC 4055's common) parameters: salt = hash length.
        hash_alg = cert.signature_hash_algorithm
        salt = getattr(params, "_salt_length", None)
        if hash_alg is None or salt != hash_alg.digest_size:
            raise VerificationError(f"certificate {subject_str(cert)!r}: unsupported PSS salt")
        return True
    return False


def verify_issued_by(cert: x509.Certificate, issuer: x509.Certificate, *,
                     budget: SignatureBudget | None = None) -> None:
    """One chain link: issuer name matches, issuer may sign, signature valid."""
    name = subject_str(cert)
    if cert.issuer != issuer.subject:
        raise VerificationError(
            f"chain: {name!r} is issued by {cert.issuer.rfc4514_string()[:80]!r},"
            f" not {subject_str(issuer)!r}")
    try:
        bc = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not bc.ca:
            raise VerificationError(f"chain: issuer {subject_str(issuer)!r} is not a CA")
    except x509.ExtensionNotFound:
        pass  # AMD's KDS certificates predate strict profiles; name + signature decide
    except ValueError:
        raise VerificationError(
            f"chain: issuer {subject_str(issuer)!r} has bad extensions") from None
    try:
        hash_alg = cert.signature_hash_algorithm
    except LIBRARY_ERRORS:
        hash_alg = None
    if hash_alg is None:
        raise VerificationError(f"chain: {name!r} uses an unsupported signature algorithm")
    try:
        _unsigned_parts_consistent(cert_der(cert), cert.tbs_certificate_bytes)
    except ValueError as err:
        raise VerificationError(
            f"chain: signature of {name!r} by {subject_str(issuer)!r}: {err}") from None
    try:
        verify_signature(issuer.public_key(), cert.signature, cert.tbs_certificate_bytes,
                         hash_alg, pss=_cert_uses_pss(cert), budget=budget)
    except WorkLimitExceeded:
        raise
    except VerificationError as err:
        raise VerificationError(
            f"chain: signature of {name!r} by {subject_str(issuer)!r}: {err.reason}") from None
    except LIBRARY_ERRORS as err:
        raise VerificationError(
            f"chain: key of {subject_str(issuer)!r} unusable: {_short(err)}") from None


def check_validity(cert: x509.Certificate, at: datetime) -> None:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    if at < cert.not_valid_before_utc:
        raise VerificationError(
            f"chain: {subject_str(cert)!r} not valid before"
            f" {cert.not_valid_before_utc.isoformat()}")
    if at > cert.not_valid_after_utc:
        raise VerificationError(
            f"chain: {subject_str(cert)!r} expired at {cert.not_valid_after_utc.isoformat()}")


# -------------------------------------------------------------- trust store


@dataclasses.dataclass(frozen=True)
class Root:
    """A trusted anchor: its certificate, SHA-256 fingerprint and provenance."""

    cert: x509.Certificate
    fingerprint: bytes
    vendor: bool
    name: str


def _load_vendor_roots() -> tuple[list[Root], list[x509.Certificate]]:
    roots: list[Root] = []
    intermediates: list[x509.Certificate] = []
    folder = resources.files("keepmesh.protocol.attestation").joinpath("roots")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".pem"):
            continue
        certs = load_certificates(entry.read_bytes())
        if "intermediates" in entry.name:
            # Not trusted: only offered as chain candidates, still verified per use.
            intermediates.extend(certs)
            continue
        for cert in certs:
            # A pinned root must be self-signed; refusing a bad file here
            # catches a corrupted package before it silently trusts nothing.
            verify_issued_by(cert, cert)
            roots.append(Root(cert, fingerprint(cert), True, entry.name[:-4]))
    return roots, intermediates


_VENDOR_CACHE: tuple[list[Root], list[x509.Certificate]] | None = None


def vendor_roots() -> list[Root]:
    """The pinned AMD ARKs and Intel SGX root shipped in protocol/attestation/roots/."""
    global _VENDOR_CACHE
    if _VENDOR_CACHE is None:
        _VENDOR_CACHE = _load_vendor_roots()
    return list(_VENDOR_CACHE[0])


def vendor_intermediates() -> list[x509.Certificate]:
    """AMD ASK/ASVK certificates shipped beside the roots (untrusted chain candidates)."""
    vendor_roots()
    assert _VENDOR_CACHE is not None
    return list(_VENDOR_CACHE[1])


vendor_intermediates_list = vendor_intermediates


class TrustStore:
    """Pinned vendor roots plus extra (non-vendor) roots such as sim roots.

    Evidence chaining to an extra root verifies, but is marked non-vendor so
    the dispatcher reports it as `tee="sim"` and policy can reject it.
    """

    def __init__(self, extra_roots: Iterable[x509.Certificate | bytes] = (), *,
                 include_vendor: bool = True, vendor_intermediates: bool = False) -> None:
        """`vendor_intermediates=True` lets chains borrow the shipped AMD ASK/ASVK
        when evidence carries only its VCEK/VLEK (they are verified, not trusted)."""
        self._roots: dict[bytes, Root] = {}
        self._intermediates: list[x509.Certificate] = (
            vendor_intermediates_list() if vendor_intermediates else [])
        if include_vendor:
            for root in vendor_roots():
                self._roots[root.fingerprint] = root
        for extra in extra_roots:
            self.add_root(extra)

    def add_root(self, cert: x509.Certificate | bytes, *, vendor: bool = False,
                 name: str | None = None) -> Root:
        """Trust a self-signed root (PEM/DER bytes or a certificate)."""
        if isinstance(cert, (bytes, bytearray)):
            certs = load_certificates(bytes(cert))
            if len(certs) != 1:
                raise ProtocolError(f"root: expected one certificate, got {len(certs)}")
            cert = certs[0]
        verify_issued_by(cert, cert)
        fp = fingerprint(cert)
        existing = self._roots.get(fp)
        if existing is not None:
            return existing
        root = Root(cert, fp, vendor, name or subject_str(cert))
        self._roots[fp] = root
        return root

    def get(self, fp: bytes) -> Root | None:
        return self._roots.get(fp)

    def find(self, cert: x509.Certificate) -> Root | None:
        return self._roots.get(fingerprint(cert))

    def issuers_of(self, cert: x509.Certificate) -> list[Root]:
        return [r for r in self._roots.values() if r.cert.subject == cert.issuer]

    def is_vendor(self, root: Root | x509.Certificate | bytes) -> bool:
        if isinstance(root, Root):
            fp = root.fingerprint
        elif isinstance(root, x509.Certificate):
            fp = fingerprint(root)
        else:
            fp = bytes(root)
        found = self._roots.get(fp)
        return found is not None and found.vendor

    @property
    def intermediates(self) -> list[x509.Certificate]:
        return list(self._intermediates)

    def add_intermediate(self, cert: x509.Certificate) -> None:
        """Offer a certificate as a chain candidate without trusting it."""
        self._intermediates.append(cert)

    @property
    def roots(self) -> list[Root]:
        return list(self._roots.values())

    def __contains__(self, fp: object) -> bool:
        return fp in self._roots


# --------------------------------------------------------------- chain build


@dataclasses.dataclass(frozen=True)
class VerifiedChain:
    """A chain whose every link verified: certs leaf first, root last."""

    certs: tuple[x509.Certificate, ...]
    root: Root

    @property
    def leaf(self) -> x509.Certificate:
        return self.certs[0]

    @property
    def subjects(self) -> tuple[str, ...]:
        return tuple(subject_str(c) for c in self.certs)


class ChainCache:
    """Memoises verified chains keyed by the presented DER certificates.

    Why: chain signatures (RSA-4096 PSS for AMD) dominate evidence checking,
    and peers present the same chain over and over. A hit skips signatures
    but still re-checks validity at the new `at` and that the root is still
    in the caller's TrustStore. Bounded LRU.
    """

    def __init__(self, max_entries: int = 1024) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[bytes, ...], VerifiedChain] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[bytes, ...]) -> VerifiedChain | None:
        chain = self._entries.get(key)
        if chain is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return chain

    def put(self, key: tuple[bytes, ...], chain: VerifiedChain) -> None:
        self._entries[key] = chain
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class _Search:
    """Depth-first search for a path to a trusted root, bounded in work.

    Bounds (see module docstring): a path never repeats a subject name (so a
    pile of self-issued or same-named certificates cannot be chained through
    each other), is at most MAX_CHAIN_DEPTH long, each (child, issuer) link
    is checked at most once, and every signature check is charged to the
    verification's SignatureBudget.
    """

    def __init__(self, pool: Sequence[x509.Certificate], trust: TrustStore, at: datetime,
                 budget: SignatureBudget) -> None:
        self.pool = pool
        self.trust = trust
        self.at = at
        self.budget = budget
        self.errors: list[str] = []
        self._links: dict[tuple[bytes, bytes], str | None] = {}

    def _link(self, cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
        """None when `issuer` validly issued `cert` (and is valid now), else the reason."""
        key = (fingerprint(cert), fingerprint(issuer))
        if key in self._links:
            return self._links[key]
        try:
            verify_issued_by(cert, issuer, budget=self.budget)
            check_validity(issuer, self.at)
            reason = None
        except WorkLimitExceeded:
            raise
        except VerificationError as err:
            reason = err.reason
        self._links[key] = reason
        return reason

    def run(self, cert: x509.Certificate, path: list[x509.Certificate]) -> VerifiedChain | None:
        root = self.trust.find(cert)
        if root is not None:
            check_validity(cert, self.at)  # its self-signature was checked when it was trusted
            return VerifiedChain(tuple(path), root)
        if len(path) >= MAX_CHAIN_DEPTH:
            self.errors.append(f"chain: longer than {MAX_CHAIN_DEPTH} certificates")
            return None
        names = [c.subject for c in path]
        candidates: list[x509.Certificate] = [r.cert for r in self.trust.issuers_of(cert)]
        candidates += [c for c in self.pool
                       if c.subject == cert.issuer and c.subject not in names]
        if not candidates:
            if cert.issuer == cert.subject:
                self.errors.append(
                    f"chain: {subject_str(cert)!r} is a self-signed root that is not trusted")
            else:
                self.errors.append(
                    f"chain: no issuer {cert.issuer.rfc4514_string()[:80]!r}"
                    f" for {subject_str(cert)!r} among presented or trusted certificates")
            return None
        for issuer in candidates:
            reason = self._link(cert, issuer)
            if reason is not None:
                self.errors.append(reason)
                continue
            found = self.run(issuer, [*path, issuer])
            if found is not None:
                return found
        return None


def dedupe(certs: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    """Certificates in first-seen order, identical DER kept once."""
    seen: set[bytes] = set()
    out: list[x509.Certificate] = []
    for cert in certs:
        der = cert_der(cert)
        if der not in seen:
            seen.add(der)
            out.append(cert)
    return out


def build_chain(leaf: x509.Certificate, pool: Sequence[x509.Certificate], trust: TrustStore,
                at: datetime, *, cache: ChainCache | None = None,
                budget: SignatureBudget | None = None) -> VerifiedChain:
    """Verify `leaf` up to a root in `trust`, using `pool` (any order) for intermediates.

    Raise VerificationError with the most specific reason found. The pool is
    de-duplicated (the leaf itself is dropped from it) and capped at
    MAX_CANDIDATES; signature checks are charged to `budget` (a fresh
    MAX_SIGNATURE_CHECKS budget when none is given).
    """
    leaf_der = cert_der(leaf)
    pool = [c for c in dedupe(pool) if cert_der(c) != leaf_der]
    if len(pool) > MAX_CANDIDATES:
        raise ProtocolError(f"chain: {len(pool)} candidate certificates exceeds {MAX_CANDIDATES}")
    key: tuple[bytes, ...] | None = None
    if cache is not None:
        key = (leaf_der, *sorted(cert_der(c) for c in pool))
        hit = cache.get(key)
        if hit is not None and trust.get(hit.root.fingerprint) is not None:
            for c in hit.certs:
                check_validity(c, at)
            return VerifiedChain(hit.certs, trust.get(hit.root.fingerprint) or hit.root)
    check_validity(leaf, at)
    search = _Search(pool, trust, at, budget if budget is not None else SignatureBudget())
    chain = search.run(leaf, [leaf])
    if chain is None:
        # Prefer a signature/validity reason over the generic "no issuer".
        errors = search.errors
        specific = [e for e in errors if "no issuer" not in e]
        raise VerificationError((specific or errors or ["chain: no path to a trusted root"])[0])
    if cache is not None and key is not None:
        cache.put(key, chain)
    return chain
