"""Intel DCAP collateral: signed TCB info, QE identity, CRLs; TCB status.

Why: a quote whose signatures verify only proves "genuine Intel platform".
Whether that platform's microcode/SEAM/QE are patched is decided by Intel's
*collateral*, fetched from the PCS/PCCS and signed by "Intel SGX TCB
Signing" (chained to the same Intel root as the PCK). Without collateral the
status stays "unknown"; this module never invents one.

Accepted inputs (`load_collateral(files)`, a name -> bytes map, so protocol/
does no file I/O):

- dcap-qvl / `sgx_ql_qve_collateral_t` style JSON: string fields `tcb_info`,
  `qe_identity` (the exact signed JSON *text*), `*_signature` (hex r||s),
  `*_issuer_chain` (PEM), `root_ca_crl`, `pck_crl` (hex DER or PEM).
- Intel PCS responses: `{"tcbInfo": {...}, "signature": "hex"}` and
  `{"enclaveIdentity": {...}, "signature": "hex"}`; the signature covers the
  exact bytes of the inner object's text, which is sliced out of the file,
  never re-serialized.
- CRLs as DER, PEM or hex DER; certificate chains as PEM or DER.

TCB status follows Intel's QVL: first TCB level whose SGX components and PCE
SVN (from the PCK certificate) are all <= the platform's (and, for TDX, whose
TDX components are <= TEE_TCB_SVN, skipping the two module bytes when a TDX
module identity applies), converged with the TDX module identity and the QE
identity status. Revoked (by level or CRL) is a VerificationError.
"""

from __future__ import annotations

import binascii
import dataclasses
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ..errors import ProtocolError, VerificationError
from .boundary import fault_boundary
from .certs import (
    LIBRARY_ERRORS,
    TrustStore,
    build_chain,
    cert_der,
    load_certificates,
    subject_str,
    verify_signature,
)
from .evidence import VerifiedEvidence

MAX_COLLATERAL_FILE = 512 * 1024
MAX_COLLATERAL_FILES = 32
TCB_SIGNER_CN = "Intel SGX TCB Signing"

STATUS_ORDER = ("UpToDate", "SWHardeningNeeded", "ConfigurationNeeded",
                "ConfigurationAndSWHardeningNeeded", "OutOfDate",
                "OutOfDateConfigurationNeeded", "Revoked")


@dataclasses.dataclass(frozen=True)
class SignedJson:
    """A collateral object as delivered: exact text, raw r||s signature, signer chain."""

    kind: str                 # "tcb_info" | "qe_identity"
    text: bytes
    signature: bytes
    chain: tuple[x509.Certificate, ...]

    def body(self) -> dict[str, Any]:
        try:
            obj = json.loads(self.text)
        except (ValueError, RecursionError):  # RecursionError: hostile nesting depth
            raise ProtocolError(f"collateral {self.kind}: not JSON") from None
        if not isinstance(obj, dict):
            raise ProtocolError(f"collateral {self.kind}: not a JSON object")
        return obj


@dataclasses.dataclass(frozen=True)
class Collateral:
    tcb_info: SignedJson | None = None
    qe_identity: SignedJson | None = None
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    certs: tuple[x509.Certificate, ...] = ()
    ignored: tuple[str, ...] = ()


# ------------------------------------------------------------------ loading


def _top_level_texts(text: str) -> dict[str, str]:
    """Map each top-level key of a JSON object to the exact source text of its value."""
    dec = json.JSONDecoder()
    out: dict[str, str] = {}
    i = 0
    n = len(text)

    def ws(j: int) -> int:
        while j < n and text[j] in " \t\r\n":
            j += 1
        return j

    i = ws(i)
    if i >= n or text[i] != "{":
        raise ProtocolError("collateral: expected a JSON object")
    i = ws(i + 1)
    if i < n and text[i] == "}":
        return out
    while True:
        try:
            key, i = dec.raw_decode(text, i)
        except (ValueError, RecursionError):
            raise ProtocolError("collateral: malformed JSON") from None
        if not isinstance(key, str):
            raise ProtocolError("collateral: malformed JSON key")
        i = ws(i)
        if i >= n or text[i] != ":":
            raise ProtocolError("collateral: malformed JSON")
        i = ws(i + 1)
        start = i
        try:
            _, i = dec.raw_decode(text, i)
        except (ValueError, RecursionError):
            raise ProtocolError(f"collateral: malformed JSON value for {key[:40]!r}") from None
        out[key] = text[start:i]
        i = ws(i)
        if i < n and text[i] == ",":
            i = ws(i + 1)
            continue
        if i < n and text[i] == "}":
            return out
        raise ProtocolError("collateral: malformed JSON")


def _hex(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or len(value) > 2 * MAX_COLLATERAL_FILE:
        raise ProtocolError(f"collateral: {what} must be a hex string")
    try:
        return binascii.unhexlify(value.strip())
    except (binascii.Error, ValueError):
        raise ProtocolError(f"collateral: {what} is not hex") from None


def _sig64(value: Any, what: str) -> bytes:
    sig = _hex(value, what)
    if len(sig) != 64:
        raise ProtocolError(f"collateral: {what} is {len(sig)} bytes, expected 64 (r||s)")
    return sig


def _load_crl(data: bytes, what: str) -> x509.CertificateRevocationList:
    """Parse a CRL and touch every part used later (cryptography decodes lazily)."""
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            crl = x509.load_pem_x509_crl(data)
        elif data[:1] == b"\x30":
            crl = x509.load_der_x509_crl(data)
        else:
            crl = x509.load_der_x509_crl(binascii.unhexlify(data.strip()))
        crl.issuer.rfc4514_string()
        crl.last_update_utc  # noqa: B018 - access is the check
        crl.next_update_utc  # noqa: B018
        crl.signature_hash_algorithm  # noqa: B018
        crl.extensions  # noqa: B018
        for entry in crl:
            entry.serial_number  # noqa: B018
    except LIBRARY_ERRORS:  # binascii.Error is a ValueError
        raise ProtocolError(f"collateral: {what} is not a CRL") from None
    return crl


def _hex_der(data: bytes) -> bytes | None:
    """The DER in a file of hex text (e.g. a CRL as PCS's JSON carries it), else None."""
    text = b"".join(data.split())
    if len(text) < 4 or len(text) % 2 or text[:2] != b"30" or \
            not all(c in b"0123456789abcdefABCDEF" for c in text):
        return None
    return binascii.unhexlify(text)


def _chain_from(value: Any, what: str) -> tuple[x509.Certificate, ...]:
    if value is None:
        return ()
    if not isinstance(value, str):
        raise ProtocolError(f"collateral: {what} must be PEM text")
    if "%" in value:  # PCS headers deliver the chain URL-encoded
        from urllib.parse import unquote

        value = unquote(value)
    return tuple(load_certificates(value.encode()))


def _from_qvl_json(obj: dict[str, Any], raw: Mapping[str, str]) -> Collateral:
    """dcap-qvl / QVL collateral: signed objects are JSON *strings* holding the text."""
    tcb = qe = None
    if "tcb_info" in obj:
        if not isinstance(obj["tcb_info"], str):
            raise ProtocolError("collateral: tcb_info must be the signed JSON text")
        tcb = SignedJson("tcb_info", obj["tcb_info"].encode(),
                         _sig64(obj.get("tcb_info_signature"), "tcb_info_signature"),
                         _chain_from(obj.get("tcb_info_issuer_chain"), "tcb_info_issuer_chain"))
    if "qe_identity" in obj:
        if not isinstance(obj["qe_identity"], str):
            raise ProtocolError("collateral: qe_identity must be the signed JSON text")
        qe = SignedJson("qe_identity", obj["qe_identity"].encode(),
                        _sig64(obj.get("qe_identity_signature"), "qe_identity_signature"),
                        _chain_from(obj.get("qe_identity_issuer_chain"),
                                    "qe_identity_issuer_chain"))
    crls = []
    for key in ("root_ca_crl", "pck_crl"):
        if obj.get(key):
            value = obj[key]
            if not isinstance(value, str):
                raise ProtocolError(f"collateral: {key} must be hex or PEM text")
            crls.append(_load_crl(value.encode(), key))
    certs = _chain_from(obj.get("pck_crl_issuer_chain"), "pck_crl_issuer_chain")
    return Collateral(tcb_info=tcb, qe_identity=qe, crls=tuple(crls), certs=certs)


def _from_pcs_json(obj: dict[str, Any], raw: Mapping[str, str], name: str) -> Collateral:
    """Intel PCS response body: sign over the exact text of the inner object."""
    for key, kind in (("tcbInfo", "tcb_info"), ("enclaveIdentity", "qe_identity"),
                      ("qeIdentity", "qe_identity")):
        if key in obj:
            signed = SignedJson(kind, raw[key].encode(),
                                _sig64(obj.get("signature"), f"{name} signature"), ())
            if kind == "tcb_info":
                return Collateral(tcb_info=signed)
            return Collateral(qe_identity=signed)
    raise ProtocolError(f"collateral: {name} is JSON but neither TCB info nor QE identity")


def _merge(a: Collateral, b: Collateral, name: str) -> Collateral:
    if a.tcb_info is not None and b.tcb_info is not None:
        raise ProtocolError(f"collateral: second TCB info in {name}")
    if a.qe_identity is not None and b.qe_identity is not None:
        raise ProtocolError(f"collateral: second QE identity in {name}")
    return Collateral(tcb_info=a.tcb_info or b.tcb_info,
                      qe_identity=a.qe_identity or b.qe_identity,
                      crls=a.crls + b.crls, certs=a.certs + b.certs,
                      ignored=a.ignored + b.ignored)


@fault_boundary("collateral")
def load_collateral(files: Mapping[str, bytes]) -> Collateral:
    """Classify files by content (names are free); unrecognised ones are listed in `ignored`.

    Chains given next to PCS-style JSON (a PEM file) are shared by both signed
    objects, as Intel uses one TCB signing chain for TCB info and QE identity.
    """
    if len(files) > MAX_COLLATERAL_FILES:
        raise ProtocolError(f"collateral: {len(files)} files exceeds {MAX_COLLATERAL_FILES}")
    result = Collateral()
    for name in sorted(files):
        data = files[name]
        if not isinstance(name, str) or not isinstance(data, (bytes, bytearray)):
            raise ProtocolError("collateral: expected a map of file names to bytes")
        data = bytes(data)
        if len(data) > MAX_COLLATERAL_FILE:
            raise ProtocolError(f"collateral: {name} exceeds {MAX_COLLATERAL_FILE} bytes")
        stripped = data.lstrip()
        part: Collateral
        if stripped[:1] == b"{":
            try:
                text = data.decode("utf-8")
                obj = json.loads(text)
            except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
                raise ProtocolError(f"collateral: {name} is not valid JSON") from None
            if not isinstance(obj, dict):
                raise ProtocolError(f"collateral: {name} is not a JSON object")
            raw = _top_level_texts(text)
            if "tcb_info" in obj or "qe_identity" in obj or "pck_crl" in obj:
                part = _from_qvl_json(obj, raw)
            else:
                part = _from_pcs_json(obj, raw, name)
        elif b"-----BEGIN X509 CRL-----" in data:
            part = Collateral(crls=(_load_crl(data, name),))
        elif b"-----BEGIN CERTIFICATE-----" in data:
            part = Collateral(certs=tuple(load_certificates(data)))
        elif data[:1] == b"\x30" or _hex_der(data) is not None:
            der = data if data[:1] == b"\x30" else _hex_der(data) or b""
            try:
                part = Collateral(crls=(_load_crl(der, name),))
            except ProtocolError:
                try:
                    part = Collateral(certs=tuple(load_certificates(der)))
                except ProtocolError:
                    if der is data and der[1:2] not in (b"\x81", b"\x82", b"\x83"):
                        part = Collateral(ignored=(name,))  # text that starts with "0"
                    else:
                        # Looks like a CRL/certificate but is damaged: ignoring it would
                        # quietly drop a revocation the operator meant to apply.
                        raise ProtocolError(f"collateral: {name[:80]} is DER but neither a "
                                            f"CRL nor a certificate") from None
        else:
            part = Collateral(ignored=(name,))
        result = _merge(result, part, name)
    if not (result.tcb_info or result.qe_identity or result.crls or result.certs):
        # Collateral asked for and none found is a mistake to say, not to run without:
        # the evidence would be judged as if no collateral had been given at all.
        where = f"in {', '.join(sorted(files))[:120]}" if files else "(no files)"
        raise ProtocolError(f"collateral: nothing usable {where} (expected Intel TCB info "
                            "or QE identity JSON, CRLs or certificates)")
    return result


# ------------------------------------------------------------ verification


def _parse_time(value: Any, what: str) -> datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise ProtocolError(f"collateral: {what} missing or not a date")
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ProtocolError(f"collateral: {what} {value[:40]!r} is not ISO 8601") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _verify_signed(obj: SignedJson, pool: tuple[x509.Certificate, ...], trust: TrustStore,
                   root_fp: bytes, at: datetime) -> dict[str, Any]:
    """Check the signer chain (same root as the quote) and the signature over the exact text."""
    certs = obj.chain or tuple(c for c in pool if subject_str(c) == TCB_SIGNER_CN)
    signers = [c for c in certs if subject_str(c) == TCB_SIGNER_CN]
    if not signers:
        raise VerificationError(f"collateral {obj.kind}: no {TCB_SIGNER_CN!r} certificate")
    signer = signers[0]
    try:
        chain = build_chain(signer, list(obj.chain) + list(pool), trust, at)
    except VerificationError as err:
        raise VerificationError(f"collateral {obj.kind} signer: {err.reason}") from None
    if chain.root.fingerprint != root_fp:
        raise VerificationError(f"collateral {obj.kind}: signed under a different root "
                                f"than the quote's PCK chain")
    r = int.from_bytes(obj.signature[:32], "big")
    s = int.from_bytes(obj.signature[32:], "big")
    key = signer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise VerificationError(f"collateral {obj.kind}: signer key is not ECDSA")
    try:
        verify_signature(key, encode_dss_signature(r, s), obj.text, hashes.SHA256())
    except VerificationError:
        raise VerificationError(f"collateral {obj.kind}: signature invalid") from None
    body = obj.body()
    issue = _parse_time(body.get("issueDate"), f"{obj.kind} issueDate")
    nxt = _parse_time(body.get("nextUpdate"), f"{obj.kind} nextUpdate")
    at = _aware(at)
    if at < issue:
        raise VerificationError(f"collateral {obj.kind}: issued {issue.isoformat()}, after "
                                f"the verification time")
    if at > nxt:
        raise VerificationError(f"collateral {obj.kind}: expired at {nxt.isoformat()}")
    return body


def _check_crls(verified: VerifiedEvidence, coll: Collateral, trust: TrustStore,
                at: datetime) -> list[str]:
    """Verify each CRL's signature and freshness; fail if a chain certificate is listed."""
    chain = verified.claims.get("pck_chain") or verified.claims.get("cert_chain") or []
    if not isinstance(chain, list):
        chain = []
    pool = list(coll.certs) + [r.cert for r in trust.roots]
    checked: list[str] = []
    at = _aware(at)
    for crl in coll.crls:
        issuers = [c for c in pool if c.subject == crl.issuer]
        if coll.tcb_info is not None:
            issuers += [c for c in coll.tcb_info.chain if c.subject == crl.issuer]
        good = None
        for issuer in issuers:
            try:
                if crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                    good = issuer
                    break
            except LIBRARY_ERRORS:
                continue
        issuer_name = crl.issuer.rfc4514_string()
        if good is None:
            # Its issuer name is not authenticated yet: skipping it as "another chain's CRL"
            # would let one flipped bit in that name switch a revocation off unnoticed.
            raise VerificationError(f"collateral: CRL of {issuer_name[:60]!r} has no valid "
                                    f"signature by a known issuer (collateral certificates or "
                                    f"trusted roots)")
        as_root = trust.find(good)
        if as_root is None:
            try:
                issuer_chain = build_chain(good, pool, trust, at)
            except VerificationError as err:
                raise VerificationError(f"collateral: CRL issuer {err.reason}") from None
            if issuer_chain.root.fingerprint != verified.root_fingerprint:
                continue
        elif as_root.fingerprint != verified.root_fingerprint:
            continue
        nxt = crl.next_update_utc
        if crl.last_update_utc > at:
            raise VerificationError(f"collateral: CRL of {subject_str(good)!r} issued after "
                                    f"the verification time")
        if nxt is not None and at > nxt:
            raise VerificationError(f"collateral: CRL of {subject_str(good)!r} expired at "
                                    f"{nxt.isoformat()}")
        for entry in chain:
            if not isinstance(entry, dict) or entry.get("issuer") != issuer_name:
                continue
            try:
                serial = int(str(entry.get("serial")), 16)
            except ValueError:
                continue
            if crl.get_revoked_certificate_by_serial_number(serial) is not None:
                raise VerificationError(f"collateral: certificate {entry.get('subject', '')[:60]!r}"
                                        f" (serial {serial:x}) is revoked")
        checked.append(subject_str(good))
    return checked


def _svn_list(level: Mapping[str, Any], key: str) -> list[int]:
    comps = level.get(key)
    if not isinstance(comps, list) or len(comps) != 16:
        raise ProtocolError(f"collateral tcb_info: {key} must list 16 components")
    out = []
    for c in comps:
        svn = c.get("svn") if isinstance(c, dict) else None
        if not isinstance(svn, int) or isinstance(svn, bool) or not 0 <= svn <= 255:
            raise ProtocolError(f"collateral tcb_info: bad {key} svn")
        out.append(svn)
    return out


def _status(value: Any, what: str) -> str:
    if not isinstance(value, str) or value not in STATUS_ORDER:
        raise ProtocolError(f"collateral: unknown {what} status {str(value)[:40]!r}")
    return value


def _list_of(value: Any, what: str) -> list[Any]:
    """A JSON array field (absent = empty); anything else is malformed collateral."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > 256:
        raise ProtocolError(f"collateral: {what} must be a list of at most 256 entries")
    return value


def _level_isvsvn(level: Any) -> int | None:
    """`tcb.isvsvn` of a QE / TDX-module TCB level, None when not a well-formed level."""
    tcb = level.get("tcb") if isinstance(level, dict) else None
    svn = tcb.get("isvsvn") if isinstance(tcb, dict) else None
    return svn if isinstance(svn, int) and not isinstance(svn, bool) else None


def _advisories(level: Mapping[str, Any]) -> list[str]:
    ids = level.get("advisoryIDs") or []
    return [str(x)[:40] for x in ids] if isinstance(ids, list) else []


def _tdx_module_status(body: Mapping[str, Any], tee_tcb_svn: bytes,
                       claims: Mapping[str, Any]) -> tuple[str | None, list[str]]:
    """TDX module identity (TCB info v3): keyed by TEE_TCB_SVN[1], svn TEE_TCB_SVN[0]."""
    version, isvsvn = tee_tcb_svn[1], tee_tcb_svn[0]
    if version == 0:
        return None, []
    ident_id = f"TDX_{version:02X}"
    for ident in _list_of(body.get("tdxModuleIdentities"), "tdxModuleIdentities"):
        if not isinstance(ident, dict) or str(ident.get("id", "")).upper() != ident_id:
            continue
        want = str(ident.get("mrsigner", "")).lower()
        if want and claims.get("mrsignerseam") not in (None, want):
            raise VerificationError(f"collateral: MRSIGNERSEAM does not match {ident_id}")
        for level in _list_of(ident.get("tcbLevels"), "TDX module tcbLevels"):
            svn = _level_isvsvn(level)
            if svn is not None and isvsvn >= svn:
                return _status(level.get("tcbStatus"), "TDX module"), _advisories(level)
        raise VerificationError(f"collateral: TDX module {ident_id} svn {isvsvn} below every "
                                f"TCB level")
    raise VerificationError(f"collateral: no TDX module identity {ident_id} in TCB info")


def _tcb_level(body: Mapping[str, Any], verified: VerifiedEvidence) -> tuple[str, list[str]]:
    claims = verified.claims
    comps = claims.get("sgx_tcb_components")
    pck_pce = verified.tcb.get("pck_pce_svn")
    if not isinstance(comps, list) or len(comps) != 16 or pck_pce is None:
        raise VerificationError("collateral: PCK certificate lacks SGX TCB extensions")
    tdx = verified.format == "tdx"
    tee_svn = bytes.fromhex(str(claims.get("tee_tcb_svn", ""))) if tdx else b""
    skip = 2 if tdx and len(tee_svn) == 16 and tee_svn[1] > 0 else 0
    levels = body.get("tcbLevels")
    if not isinstance(levels, list) or not levels or len(levels) > 256:
        raise ProtocolError("collateral tcb_info: tcbLevels missing")
    for level in levels:
        if not isinstance(level, dict) or not isinstance(level.get("tcb"), dict):
            raise ProtocolError("collateral tcb_info: malformed tcb level")
        tcb = level["tcb"]
        sgx = _svn_list(tcb, "sgxtcbcomponents")
        pce = tcb.get("pcesvn")
        if not isinstance(pce, int):
            raise ProtocolError("collateral tcb_info: pcesvn missing")
        if pck_pce < pce or any(have < need for have, need in zip(comps, sgx, strict=True)):
            continue
        if tdx:
            need_tdx = _svn_list(tcb, "tdxtcbcomponents")
            if any(tee_svn[i] < need_tdx[i] for i in range(skip, 16)):
                continue
        return _status(level.get("tcbStatus"), "TCB level"), _advisories(level)
    raise VerificationError("collateral: platform TCB is below every TCB level (unrecognized)")


def _converge(tcb: str, other: str) -> str:
    """Intel's convergence: an OutOfDate component downgrades the platform status."""
    if "Revoked" in (tcb, other):
        return "Revoked"
    if other == "OutOfDate":
        if tcb in ("UpToDate", "SWHardeningNeeded"):
            return "OutOfDate"
        if tcb in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
            return "OutOfDateConfigurationNeeded"
    return tcb


def _masked_eq(value: bytes, want_hex: Any, mask_hex: Any, what: str) -> None:
    try:
        want = bytes.fromhex(str(want_hex))
        mask = bytes.fromhex(str(mask_hex))
    except ValueError:
        raise ProtocolError(f"collateral qe_identity: {what} is not hex") from None
    if len(want) != len(value) or len(mask) != len(value):
        raise ProtocolError(f"collateral qe_identity: {what} has the wrong length")
    if any((v & m) != (w & m) for v, w, m in zip(value, want, mask, strict=True)):
        raise VerificationError(f"collateral: QE {what} does not match the QE identity")


def _qe_status(body: Mapping[str, Any], verified: VerifiedEvidence) -> tuple[str, list[str]]:
    qe = verified.claims.get("qe")
    if not isinstance(qe, dict):
        raise VerificationError("collateral: evidence has no QE report")
    want_id = "TD_QE" if verified.format == "tdx" else "QE"
    if body.get("id") not in (want_id, None):
        raise VerificationError(f"collateral: QE identity is for {str(body.get('id'))[:10]!r}, "
                                f"need {want_id!r}")
    if str(body.get("mrsigner", "")).lower() != qe["mrsigner"]:
        raise VerificationError("collateral: QE mrsigner does not match the QE identity")
    if body.get("isvprodid") != qe["isvprodid"]:
        raise VerificationError("collateral: QE isvprodid does not match the QE identity")
    _masked_eq(int(qe["miscselect"]).to_bytes(4, "little"),
               body.get("miscselect"), body.get("miscselectMask"), "miscselect")
    _masked_eq(bytes.fromhex(qe["attributes"]), body.get("attributes"),
               body.get("attributesMask"), "attributes")
    for level in _list_of(body.get("tcbLevels"), "QE tcbLevels"):
        svn = _level_isvsvn(level)
        if svn is not None and qe["isvsvn"] >= svn:
            return _status(level.get("tcbStatus"), "QE"), _advisories(level)
    raise VerificationError(f"collateral: QE isvsvn {qe['isvsvn']} below every QE TCB level")


@fault_boundary("collateral")
def apply_collateral(verified: VerifiedEvidence, collateral: object, trust: TrustStore,
                     at: datetime) -> VerifiedEvidence:
    """Return a copy of `verified` with tcb_status/claims from collateral; Revoked raises.

    `collateral` is a Collateral or a name -> bytes map (loaded here).
    """
    if isinstance(collateral, Mapping):
        coll = load_collateral(collateral)
    elif isinstance(collateral, Collateral):
        coll = collateral
    else:
        raise ProtocolError("collateral: expected Collateral or a map of file contents")
    claims = dict(verified.claims)
    crl_issuers = _check_crls(verified, coll, trust, at)
    info: dict[str, Any] = {"crls_checked": crl_issuers}
    status = verified.tcb_status
    if verified.format in ("sgx-dcap", "tdx"):
        pool = coll.certs + (coll.tcb_info.chain if coll.tcb_info else ()) + \
            (coll.qe_identity.chain if coll.qe_identity else ())
        advisories: list[str] = []
        if coll.tcb_info is not None:
            body = _verify_signed(coll.tcb_info, pool, trust, verified.root_fingerprint, at)
            want_id = "TDX" if verified.format == "tdx" else "SGX"
            if body.get("id", "SGX") != want_id:
                raise VerificationError(f"collateral: TCB info is for {str(body.get('id'))[:10]!r},"
                                        f" evidence is {want_id}")
            fmspc = str(body.get("fmspc", "")).lower()
            if fmspc != claims.get("fmspc"):
                raise VerificationError(f"collateral: TCB info FMSPC {fmspc[:12]} does not match "
                                        f"the PCK FMSPC {claims.get('fmspc')}")
            pce_id = str(body.get("pceId", "")).lower()
            if pce_id != claims.get("pce_id"):
                raise VerificationError("collateral: TCB info PCE-ID does not match the PCK")
            status, advisories = _tcb_level(body, verified)
            if verified.format == "tdx":
                tee_svn = bytes.fromhex(str(claims.get("tee_tcb_svn", "")))
                mod, mod_adv = _tdx_module_status(body, tee_svn, claims)
                if mod is not None:
                    status = _converge(status, mod)
                    advisories += [a for a in mod_adv if a not in advisories]
            info.update({"tcb_info_issue_date": body.get("issueDate"),
                         "tcb_evaluation_data_number": body.get("tcbEvaluationDataNumber")})
        if coll.qe_identity is not None:
            qbody = _verify_signed(coll.qe_identity, pool, trust, verified.root_fingerprint, at)
            qe_status, qe_adv = _qe_status(qbody, verified)
            info["qe_tcb_status"] = qe_status
            if coll.tcb_info is not None:
                status = _converge(status, qe_status)
                advisories += [a for a in qe_adv if a not in advisories]
        if coll.tcb_info is not None:
            info["advisory_ids"] = advisories
    claims["collateral"] = info
    if status == "Revoked":
        raise VerificationError("collateral: TCB status is Revoked")
    return dataclasses.replace(verified, tcb_status=status, claims=claims)


def collateral_certs(coll: Collateral) -> list[bytes]:
    """DER of every certificate the collateral carries (for callers that cache chains)."""
    return [cert_der(c) for c in coll.certs]
