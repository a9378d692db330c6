"""AMD SEV-SNP attestation reports: parse, build, verify.

Why this shape: the report is a fixed 1184-byte little-endian structure
(AMD SEV-SNP ABI, ATTESTATION_REPORT) signed with ECDSA P-384 by a chip key
(VCEK) or a cloud-provider key (VLEK). The parser is pure slicing with bounds
checks; the verifier then ties four things together, any of which alone is
worthless: the certificate chain to a pinned ARK, the report signature by the
chain's leaf, the leaf's TCB/hwID extensions against the report's
reported_tcb/chip_id, and the product (Milan/Genoa/Turin) named by ARK, leaf
and CPUID. `build_report`/`attach_signature` produce the same format so the
simulated TEE exercises this very verifier (specs/attestation.md).
"""

from __future__ import annotations

import dataclasses
import re
import struct
import warnings
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
    ChainCache,
    SignatureBudget,
    TrustStore,
    WorkLimitExceeded,
    build_chain,
    dedupe,
    load_certificates,
    subject_str,
    verify_signature,
)
from .evidence import VerifiedEvidence

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SIG_R = slice(0x2A0, 0x2E8)
SIG_S = slice(0x2E8, 0x330)
SIG_RESERVED = slice(0x330, 0x4A0)
"""Reserved part of the 512-byte SIGNATURE field (after r and s): zero in every report."""
SIG_FIELD = 72
SUPPORTED_VERSIONS = (2, 3, 4, 5)
SIG_ALGO_ECDSA_P384_SHA384 = 1

SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1
SIGNING_KEY_NONE = 7

# Guest policy bits (ABI table "GUEST_POLICY").
POLICY_SMT = 1 << 16
POLICY_RESERVED_1 = 1 << 17  # must be one
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
POLICY_SINGLE_SOCKET = 1 << 20
POLICY_CXL_ALLOW = 1 << 21
POLICY_MEM_AES_256_XTS = 1 << 22
POLICY_RAPL_DIS = 1 << 23
POLICY_CIPHERTEXT_HIDING = 1 << 24
POLICY_PAGE_SWAP_DISABLE = 1 << 25

_OID_BASE = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = _OID_BASE + ".1"
OID_PRODUCT_NAME = _OID_BASE + ".2"
OID_BL_SPL = _OID_BASE + ".3.1"
OID_TEE_SPL = _OID_BASE + ".3.2"
OID_SNP_SPL = _OID_BASE + ".3.3"
OID_UCODE_SPL = _OID_BASE + ".3.8"
OID_FMC_SPL = _OID_BASE + ".3.9"
OID_HWID = _OID_BASE + ".4"
OID_CSP_ID = _OID_BASE + ".5"

PRODUCTS = ("Milan", "Genoa", "Turin")
_TCB_OIDS = {"bootloader": OID_BL_SPL, "tee": OID_TEE_SPL, "snp": OID_SNP_SPL,
             "microcode": OID_UCODE_SPL, "fmc": OID_FMC_SPL}
# Byte position of each SPL inside the 8-byte TCB_VERSION, per product family.
_TCB_LAYOUT_MILAN = {"bootloader": 0, "tee": 1, "snp": 6, "microcode": 7}
_TCB_LAYOUT_TURIN = {"fmc": 0, "bootloader": 1, "tee": 2, "snp": 3, "microcode": 7}


def tcb_layout(product: str | None) -> dict[str, int]:
    return dict(_TCB_LAYOUT_TURIN if product == "Turin" else _TCB_LAYOUT_MILAN)


def decode_tcb(raw: int, product: str | None) -> dict[str, int]:
    """Split a TCB_VERSION (u64 LE) into named SPLs using the product's layout."""
    data = raw.to_bytes(8, "little")
    return {name: data[pos] for name, pos in tcb_layout(product).items()}


def encode_tcb(parts: dict[str, int], product: str | None = "Milan") -> int:
    data = bytearray(8)
    for name, pos in tcb_layout(product).items():
        value = parts.get(name, 0)
        if not 0 <= value <= 255:
            raise ValueError(f"tcb {name}={value} out of range")
        data[pos] = value
    return int.from_bytes(data, "little")


# ------------------------------------------------------------------ parsing


@dataclasses.dataclass(frozen=True)
class SnpReport:
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    flags: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    cpuid_fam_id: int
    cpuid_mod_id: int
    cpuid_step: int
    chip_id: bytes
    committed_tcb: int
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: int
    launch_mit_vector: int
    current_mit_vector: int
    signed: bytes
    sig_r: int
    sig_s: int

    @property
    def signing_key(self) -> int:
        return (self.flags >> 2) & 0x7

    @property
    def author_key_en(self) -> bool:
        return bool(self.flags & 1)

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.flags & 2)

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    def policy_flags(self) -> dict[str, Any]:
        p = self.policy
        return {"abi_minor": p & 0xFF, "abi_major": (p >> 8) & 0xFF,
                "smt": bool(p & POLICY_SMT), "migrate_ma": bool(p & POLICY_MIGRATE_MA),
                "debug": bool(p & POLICY_DEBUG), "single_socket": bool(p & POLICY_SINGLE_SOCKET),
                "cxl_allow": bool(p & POLICY_CXL_ALLOW),
                "mem_aes_256_xts": bool(p & POLICY_MEM_AES_256_XTS),
                "rapl_dis": bool(p & POLICY_RAPL_DIS),
                "ciphertext_hiding": bool(p & POLICY_CIPHERTEXT_HIDING),
                "page_swap_disable": bool(p & POLICY_PAGE_SWAP_DISABLE)}

    def platform_flags(self) -> dict[str, bool]:
        p = self.platform_info
        return {"smt_en": bool(p & 1), "tsme_en": bool(p & 2), "ecc_en": bool(p & 4),
                "rapl_dis": bool(p & 8), "ciphertext_hiding_en": bool(p & 16),
                "alias_check_complete": bool(p & 32)}

    def cpuid_product(self) -> str | None:
        """Product family from CPUID (v3+ only); None when absent or unknown."""
        fam, mod = self.cpuid_fam_id, self.cpuid_mod_id
        if self.version < 3 or fam == 0:
            return None
        if fam == 0x19:
            if mod <= 0x0F:
                return "Milan"
            if 0x10 <= mod <= 0x1F or 0xA0 <= mod <= 0xAF:
                return "Genoa"
        if fam == 0x1A and mod <= 0x1F:
            return "Turin"
        return None


_HEAD = struct.Struct("<IIQ16s16sIIQQI4x64s48s32s48s48s32s32sQBBB21x64sQBBBxBBBxQQQ")
assert _HEAD.size == 0x208, _HEAD.size


def looks_like_report(data: bytes) -> bool:
    """Cheap structural test used to tell SNP reports from DCAP quotes."""
    if len(data) < REPORT_SIZE:
        return False
    version, = struct.unpack_from("<I", data, 0)
    algo, = struct.unpack_from("<I", data, 0x34)
    return version in SUPPORTED_VERSIONS and algo == SIG_ALGO_ECDSA_P384_SHA384


def parse_report(data: bytes) -> SnpReport:
    """Parse an attestation report; trailing bytes are tolerated, short data is not."""
    if not isinstance(data, (bytes, bytearray)):
        raise ProtocolError("snp report: expected bytes")
    if len(data) < REPORT_SIZE:
        raise ProtocolError(f"snp report: {len(data)} bytes, need {REPORT_SIZE}")
    data = bytes(data[:REPORT_SIZE])
    v = _HEAD.unpack_from(data, 0)
    (version, guest_svn, policy, family_id, image_id, vmpl, sig_algo, current_tcb,
     platform_info, flags, report_data, measurement, host_data, id_key_digest,
     author_key_digest, report_id, report_id_ma, reported_tcb, fam, mod, step, chip_id,
     committed_tcb, cur_build, cur_minor, cur_major, com_build, com_minor, com_major,
     launch_tcb, launch_mit, current_mit) = v
    if version not in SUPPORTED_VERSIONS:
        raise ProtocolError(f"snp report: unsupported version {version}")
    if sig_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise ProtocolError(f"snp report: unsupported signature algorithm {sig_algo}")
    if vmpl > 3:
        raise ProtocolError(f"snp report: vmpl {vmpl} out of range")
    r_raw, s_raw = data[SIG_R], data[SIG_S]
    if any(r_raw[48:]) or any(s_raw[48:]):
        raise ProtocolError("snp report: signature component wider than P-384")
    if any(data[SIG_RESERVED]):
        # Not covered by the signature: accepting anything here would let one signed
        # report travel as countless different byte strings (firmware writes zeros).
        raise ProtocolError("snp report: reserved signature bytes 0x330..0x49F are not zero")
    if version < 3:
        fam = mod = step = 0
    if version < 5:
        launch_mit = current_mit = 0
    return SnpReport(
        version=version, guest_svn=guest_svn, policy=policy, family_id=family_id,
        image_id=image_id, vmpl=vmpl, signature_algo=sig_algo, current_tcb=current_tcb,
        platform_info=platform_info, flags=flags, report_data=report_data,
        measurement=measurement, host_data=host_data, id_key_digest=id_key_digest,
        author_key_digest=author_key_digest, report_id=report_id, report_id_ma=report_id_ma,
        reported_tcb=reported_tcb, cpuid_fam_id=fam, cpuid_mod_id=mod, cpuid_step=step,
        chip_id=chip_id, committed_tcb=committed_tcb, current_build=cur_build,
        current_minor=cur_minor, current_major=cur_major, committed_build=com_build,
        committed_minor=com_minor, committed_major=com_major, launch_tcb=launch_tcb,
        launch_mit_vector=launch_mit, current_mit_vector=current_mit,
        signed=data[:SIGNED_SIZE], sig_r=int.from_bytes(r_raw, "little"),
        sig_s=int.from_bytes(s_raw, "little"))


# ----------------------------------------------------------------- building


def _fixed(name: str, value: bytes, size: int) -> bytes:
    if len(value) > size:
        raise ValueError(f"{name}: {len(value)} bytes exceeds {size}")
    return bytes(value).ljust(size, b"\0")


def build_report(*, version: int = 3, guest_svn: int = 0, policy: int = POLICY_RESERVED_1,
                 family_id: bytes = b"", image_id: bytes = b"", vmpl: int = 0,
                 current_tcb: int = 0, platform_info: int = 0, signing_key: int = 0,
                 report_data: bytes = b"", measurement: bytes = b"", host_data: bytes = b"",
                 id_key_digest: bytes = b"", author_key_digest: bytes = b"",
                 report_id: bytes = b"", report_id_ma: bytes = b"\xff" * 32,
                 reported_tcb: int = 0, cpuid: tuple[int, int, int] = (0, 0, 0),
                 chip_id: bytes = b"", committed_tcb: int | None = None,
                 current_version: tuple[int, int, int] = (0, 0, 0),
                 committed_version: tuple[int, int, int] | None = None,
                 launch_tcb: int | None = None) -> bytes:
    """The unsigned 0x2A0-byte body of a report in the ABI layout (sim TEE, tests).

    Versions are (build, minor, major) as in the report. committed/launch
    default to the current values, as on a freshly booted platform.
    """
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"version {version} not supported")
    if version < 3:
        cpuid = (0, 0, 0)
    committed_version = committed_version or current_version
    flags = (signing_key & 0x7) << 2
    body = _HEAD.pack(
        version, guest_svn, policy, _fixed("family_id", family_id, 16),
        _fixed("image_id", image_id, 16), vmpl, SIG_ALGO_ECDSA_P384_SHA384, current_tcb,
        platform_info, flags, _fixed("report_data", report_data, 64),
        _fixed("measurement", measurement, 48), _fixed("host_data", host_data, 32),
        _fixed("id_key_digest", id_key_digest, 48),
        _fixed("author_key_digest", author_key_digest, 48), _fixed("report_id", report_id, 32),
        _fixed("report_id_ma", report_id_ma, 32), reported_tcb, *cpuid,
        _fixed("chip_id", chip_id, 64),
        current_tcb if committed_tcb is None else committed_tcb,
        *current_version, *committed_version,
        current_tcb if launch_tcb is None else launch_tcb, 0, 0)
    return body.ljust(SIGNED_SIZE, b"\0")


def attach_signature(body: bytes, r: int, s: int) -> bytes:
    """Append the signature block (r, s little-endian in 72-byte fields) to a body."""
    if len(body) != SIGNED_SIZE:
        raise ValueError(f"body must be {SIGNED_SIZE} bytes")
    sig = r.to_bytes(SIG_FIELD, "little") + s.to_bytes(SIG_FIELD, "little")
    return body + sig.ljust(REPORT_SIZE - SIGNED_SIZE, b"\0")


# ------------------------------------------------------- certificate claims


def _der_tlv(data: bytes) -> tuple[int, bytes]:
    """Decode one DER TLV that must span `data` exactly (extension values)."""
    if len(data) < 2:
        raise ProtocolError("der: too short")
    tag, first = data[0], data[1]
    pos = 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 2 or len(data) < 2 + n:
            raise ProtocolError("der: bad length")
        length = int.from_bytes(data[2:2 + n], "big")
        pos += n
    if pos + length != len(data):
        raise ProtocolError("der: length mismatch")
    return tag, data[pos:]


def _ext_raw(cert: x509.Certificate, oid: str) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        return None
    except ValueError:
        raise VerificationError(f"{subject_str(cert)!r}: malformed extensions") from None
    value = ext.value
    if isinstance(value, x509.UnrecognizedExtension):
        return value.value
    raise VerificationError(f"{subject_str(cert)!r}: unexpected extension {oid}")


def _ext_tlv(cert: x509.Certificate, oid: str) -> tuple[int, bytes] | None:
    """The extension's single DER value as (tag, content), or None when absent."""
    raw = _ext_raw(cert, oid)
    if raw is None:
        return None
    try:
        return _der_tlv(raw)
    except ProtocolError as err:
        raise VerificationError(f"{subject_str(cert)!r}: extension {oid}: {err.reason}") from None


def _ext_int(cert: x509.Certificate, oid: str) -> int | None:
    tlv = _ext_tlv(cert, oid)
    if tlv is None:
        return None
    tag, content = tlv
    if tag != 0x02 or not content or len(content) > 9:
        raise VerificationError(f"{subject_str(cert)!r}: extension {oid} is not a small INTEGER")
    return int.from_bytes(content, "big", signed=True)


def _ext_str(cert: x509.Certificate, oid: str) -> str | None:
    tlv = _ext_tlv(cert, oid)
    if tlv is None:
        return None
    tag, content = tlv
    if tag not in (0x16, 0x0C, 0x13):
        raise VerificationError(f"{subject_str(cert)!r}: extension {oid} is not a string")
    return content.decode("latin-1")


def cert_hwid(cert: x509.Certificate) -> bytes | None:
    """hwID extension: raw bytes (legacy KDS) or a DER OCTET STRING (newer KDS)."""
    raw = _ext_raw(cert, OID_HWID)
    if raw is None:
        return None
    if len(raw) >= 2 and raw[0] == 0x04 and raw[1] < 0x80 and len(raw) == 2 + raw[1]:
        return raw[2:]
    return raw


def cert_tcb(cert: x509.Certificate) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, oid in _TCB_OIDS.items():
        value = _ext_int(cert, oid)
        if value is not None:
            out[name] = value
    return out


def _product_name(text: str | None) -> str | None:
    if text is None:
        return None
    for product in PRODUCTS:
        if text == product or text.startswith(product + "-"):
            return product
    return None


def _root_product(cn: str) -> str | None:
    m = re.search(r"ARK-(Milan|Genoa|Turin)\b", cn)
    return m.group(1) if m else None


# ------------------------------------------------------------ verification


def _chain_ids(certs: Sequence[x509.Certificate]) -> list[dict[str, str]]:
    """Issuer/serial of each chain certificate, so CRLs in collateral can be checked."""
    with warnings.catch_warnings():
        # Some AMD VCEKs carry a non-positive serial; cryptography warns on reading it.
        warnings.simplefilter("ignore")
        return [{"subject": c.subject.rfc4514_string(), "issuer": c.issuer.rfc4514_string(),
                 "serial": format(c.serial_number, "x")} for c in certs]


def _leaf_for(report: SnpReport, certs: list[x509.Certificate],
              budget: SignatureBudget) -> x509.Certificate:
    """The presented P-384 certificate whose key signed the report.

    Work: one report-signature check per distinct presented P-384
    certificate (at most 8 on the wire), charged to the verification's budget.
    """
    der_sig = encode_dss_signature(report.sig_r, report.sig_s)
    candidates = [c for c in certs if isinstance(c.public_key(), ec.EllipticCurvePublicKey)]
    if not candidates:
        raise VerificationError("snp: no VCEK/VLEK (EC P-384) certificate presented")
    for cert in candidates:
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        if not isinstance(key.curve, ec.SECP384R1):
            continue
        try:
            verify_signature(key, der_sig, report.signed, hashes.SHA384(), budget=budget)
        except WorkLimitExceeded:
            raise
        except VerificationError:
            continue
        return cert
    raise VerificationError("snp: report signature invalid for the presented VCEK/VLEK")


@fault_boundary("snp")
def verify_report(report: SnpReport, certs: Sequence[bytes], trust: TrustStore, at: datetime,
                  *, cache: ChainCache | None = None,
                  budget: SignatureBudget | None = None) -> VerifiedEvidence:
    """Verify a parsed report against its certificates; see module docstring."""
    budget = budget if budget is not None else SignatureBudget()
    key_sel = report.signing_key
    if key_sel not in (SIGNING_KEY_VCEK, SIGNING_KEY_VLEK):
        raise VerificationError(f"snp: signing key selector {key_sel} is neither VCEK nor VLEK")
    parsed: list[x509.Certificate] = []
    for blob in certs:
        if not isinstance(blob, (bytes, bytearray)):
            raise ProtocolError("snp: certificates must be bytes")
        parsed.extend(load_certificates(bytes(blob)))
    parsed = dedupe(parsed)
    leaf = _leaf_for(report, parsed, budget)
    pool = [c for c in parsed if c is not leaf] + trust.intermediates
    chain = build_chain(leaf, pool, trust, at, cache=cache, budget=budget)
    if len(chain.certs) < 3:
        raise VerificationError("snp: chain must be ARK -> ASK/ASVK -> VCEK/VLEK")
    kind = "VCEK" if key_sel == SIGNING_KEY_VCEK else "VLEK"
    leaf_cn = subject_str(leaf)
    if leaf_cn != f"SEV-{kind}":
        raise VerificationError(f"snp: report names a {kind} but was signed by {leaf_cn!r}")
    issuer_cn = subject_str(chain.certs[1])
    if kind == "VLEK" and not issuer_cn.startswith("SEV-VLEK"):
        raise VerificationError(f"snp: VLEK must be issued by an ASVK, not {issuer_cn!r}")
    if kind == "VCEK" and issuer_cn.startswith("SEV-VLEK"):
        raise VerificationError(f"snp: VCEK issued by ASVK {issuer_cn!r}")

    # Product (Milan/Genoa/Turin) must agree between ARK, leaf and CPUID.
    leaf_product_text = _ext_str(leaf, OID_PRODUCT_NAME)
    leaf_product = _product_name(leaf_product_text)
    root_product = _root_product(subject_str(chain.root.cert))
    vendor = chain.root.vendor
    if vendor and root_product is None:
        raise VerificationError(f"snp: root {subject_str(chain.root.cert)!r} is not an AMD ARK")
    if leaf_product is None:
        raise VerificationError(f"snp: {kind} productName {leaf_product_text!r} unknown")
    if root_product is not None and leaf_product != root_product:
        raise VerificationError(
            f"snp: {kind} is for {leaf_product} but the chain ends in ARK-{root_product}")
    cpu_product = report.cpuid_product()
    if cpu_product is not None and cpu_product != leaf_product:
        raise VerificationError(
            f"snp: report CPUID says {cpu_product} but the {kind} is for {leaf_product}")
    product = leaf_product

    # The leaf certifies one TCB; it must be exactly the report's reported_tcb.
    reported = decode_tcb(report.reported_tcb, product)
    certified = cert_tcb(leaf)
    for name, value in reported.items():
        if name not in certified:
            raise VerificationError(f"snp: {kind} lacks the {name} SPL extension")
        if certified[name] != value:
            raise VerificationError(
                f"snp: reported_tcb.{name}={value} but the {kind} certifies {certified[name]}")
    csp_id: str | None = None
    if kind == "VCEK":
        hwid = cert_hwid(leaf)
        if hwid is None:
            raise VerificationError("snp: VCEK lacks the hwID extension")
        chip = report.chip_id[:len(hwid)] if len(hwid) < 64 else report.chip_id
        if len(hwid) not in (8, 64) or hwid != chip:
            raise VerificationError("snp: chip_id does not match the VCEK hwID")
    else:
        csp_id = _ext_str(leaf, OID_CSP_ID)

    claims: dict[str, Any] = {
        # Issuer/serial of each chain certificate, so AMD CRLs in collateral can be checked.
        "cert_chain": _chain_ids(chain.certs),
        "version": report.version,
        "product": product,
        "signing_key": kind.lower(),
        "guest_svn": report.guest_svn,
        "policy": report.policy,
        "policy_flags": report.policy_flags(),
        "vmpl": report.vmpl,
        "family_id": report.family_id,
        "image_id": report.image_id,
        "host_data": report.host_data,
        "id_key_digest": report.id_key_digest,
        "author_key_digest": report.author_key_digest,
        "report_id": report.report_id,
        "report_id_ma": report.report_id_ma,
        "chip_id": report.chip_id,
        "platform_info": report.platform_info,
        "platform_flags": report.platform_flags(),
        "flags": report.flags,
        "reported_tcb_raw": f"{report.reported_tcb:016x}",
        "current_tcb": decode_tcb(report.current_tcb, product),
        "committed_tcb": decode_tcb(report.committed_tcb, product),
        "launch_tcb": decode_tcb(report.launch_tcb, product),
        "current_firmware": f"{report.current_major}.{report.current_minor}"
                            f".{report.current_build}",
        "committed_firmware": f"{report.committed_major}.{report.committed_minor}"
                              f".{report.committed_build}",
        "cpuid": [report.cpuid_fam_id, report.cpuid_mod_id, report.cpuid_step],
    }
    if csp_id is not None:
        claims["csp_id"] = csp_id
    if not vendor:
        claims["insecure"] = "chain ends in a non-vendor (simulated) root"
    return VerifiedEvidence(
        format="sev-snp", tee="snp" if vendor else "sim", measurement=report.measurement,
        report_data=report.report_data, debug=report.debug, signer=chain.subjects,
        root_fingerprint=chain.root.fingerprint, vendor_root=vendor, tcb=reported,
        tcb_status="unknown", claims=claims)


@fault_boundary("snp")
def verify(data: bytes, certs: Sequence[bytes], trust: TrustStore, at: datetime, *,
           cache: ChainCache | None = None,
           budget: SignatureBudget | None = None) -> VerifiedEvidence:
    """Parse and verify an SEV-SNP report (the `verify_evidence` entry for "sev-snp")."""
    return verify_report(parse_report(data), certs, trust, at, cache=cache, budget=budget)
