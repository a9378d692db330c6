"""Bounds-checked parsing of Intel DCAP ECDSA quotes: SGX v3, SGX/TDX v4, TDX v5.

Why a separate module: parsing is pure byte slicing that never needs a key or
a clock, so it can be fuzzed on its own, and the verifier (dcap.py) only ever
sees a structure whose every length field was checked against the bytes it
claims to describe. Anything shorter than a length field says is a
ProtocolError; bytes *after* the signature data are tolerated because real
quotes carry padding (70 zero bytes on Azure) or even text (go-tdx-guest SPR).

Layout references: Intel SGX ECDSA Quote Library API (v3), Intel TDX DCAP
Quoting Library API (v4, v5); specs/attestation-intel.md restates them.
"""

from __future__ import annotations

import dataclasses
import struct

from ..errors import ProtocolError

MAX_QUOTE_SIZE = 256 * 1024
"""Real quotes are 4-8 KiB including padding; anything far larger is hostile."""

MAX_CERT_DATA_SIZE = 64 * 1024
MAX_QE_AUTH_DATA = 4096

INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
ATT_KEY_ECDSA_P256 = 2
TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081

HEADER_SIZE = 48
SGX_REPORT_BODY_SIZE = 384
TD10_BODY_SIZE = 584
TD15_BODY_SIZE = 648
V5_BODY_DESCRIPTOR_SIZE = 6

BODY_TYPE_SGX = 1
BODY_TYPE_TD10 = 2
BODY_TYPE_TD15 = 3
_BODY_SIZES = {BODY_TYPE_SGX: SGX_REPORT_BODY_SIZE, BODY_TYPE_TD10: TD10_BODY_SIZE,
               BODY_TYPE_TD15: TD15_BODY_SIZE}

CERT_TYPE_PCK_CHAIN = 5
CERT_TYPE_QE_REPORT = 6

SGX_ATTR_DEBUG = 0x02          # SGX ATTRIBUTES.FLAGS bit 1
TD_ATTR_DEBUG = 0x01           # TDX TD_ATTRIBUTES bit 0 (TUD.DEBUG)


@dataclasses.dataclass(frozen=True)
class QuoteHeader:
    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclasses.dataclass(frozen=True)
class EnclaveReportBody:
    """The 384-byte SGX REPORT body (ISV enclave or the Quoting Enclave)."""

    raw: bytes
    cpusvn: bytes
    miscselect: int
    isvextprodid: bytes
    attributes: bytes
    mrenclave: bytes
    mrsigner: bytes
    configid: bytes
    isvprodid: int
    isvsvn: int
    configsvn: int
    isvfamilyid: bytes
    report_data: bytes

    @property
    def debug(self) -> bool:
        return bool(self.attributes[0] & SGX_ATTR_DEBUG)


@dataclasses.dataclass(frozen=True)
class TdReportBody:
    """TD10 (584 bytes) or TD15 (648 bytes, adds tee_tcb_svn2 and mrservicetd)."""

    raw: bytes
    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None
    mrservicetd: bytes | None

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes[0] & TD_ATTR_DEBUG)


@dataclasses.dataclass(frozen=True)
class QeCertificationData:
    """What binds the attestation key to the platform: QE report signed by the PCK key."""

    qe_report: EnclaveReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes


@dataclasses.dataclass(frozen=True)
class DcapQuote:
    header: QuoteHeader
    body_type: int
    body: EnclaveReportBody | TdReportBody
    signed_data: bytes
    signature: bytes
    attestation_key: bytes
    certification: QeCertificationData
    trailing: int

    @property
    def is_tdx(self) -> bool:
        return isinstance(self.body, TdReportBody)


class _Reader:
    """Cursor over a bounded window; every read is checked against `end`."""

    def __init__(self, data: bytes, pos: int, end: int, what: str) -> None:
        self.data = data
        self.pos = pos
        self.end = end
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise ProtocolError(
                f"{self.what}: {field} needs {n} bytes at offset {self.pos}, "
                f"only {max(0, self.end - self.pos)} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u16(self, field: str) -> int:
        value: int = struct.unpack("<H", self.take(2, field))[0]
        return value

    def u32(self, field: str) -> int:
        value: int = struct.unpack("<I", self.take(4, field))[0]
        return value


def parse_header(data: bytes) -> QuoteHeader:
    if len(data) < HEADER_SIZE:
        raise ProtocolError(f"quote: {len(data)} bytes is shorter than the 48-byte header")
    version, key_type, tee_type, qe_svn, pce_svn = struct.unpack_from("<HHIHH", data, 0)
    return QuoteHeader(version=version, att_key_type=key_type, tee_type=tee_type,
                       qe_svn=qe_svn, pce_svn=pce_svn, qe_vendor_id=data[12:28],
                       user_data=data[28:48])


def parse_enclave_report(raw: bytes) -> EnclaveReportBody:
    if len(raw) != SGX_REPORT_BODY_SIZE:
        raise ProtocolError(f"SGX report body: {len(raw)} bytes, expected 384")
    return EnclaveReportBody(
        raw=raw, cpusvn=raw[0:16], miscselect=struct.unpack_from("<I", raw, 16)[0],
        isvextprodid=raw[32:48], attributes=raw[48:64], mrenclave=raw[64:96],
        mrsigner=raw[128:160], configid=raw[192:256],
        isvprodid=struct.unpack_from("<H", raw, 256)[0],
        isvsvn=struct.unpack_from("<H", raw, 258)[0],
        configsvn=struct.unpack_from("<H", raw, 260)[0],
        isvfamilyid=raw[304:320], report_data=raw[320:384])


def parse_td_report(raw: bytes) -> TdReportBody:
    if len(raw) not in (TD10_BODY_SIZE, TD15_BODY_SIZE):
        raise ProtocolError(f"TD report body: {len(raw)} bytes, expected 584 or 648")
    td15 = len(raw) == TD15_BODY_SIZE
    return TdReportBody(
        raw=raw, tee_tcb_svn=raw[0:16], mrseam=raw[16:64], mrsignerseam=raw[64:112],
        seam_attributes=raw[112:120], td_attributes=raw[120:128], xfam=raw[128:136],
        mrtd=raw[136:184], mrconfigid=raw[184:232], mrowner=raw[232:280],
        mrownerconfig=raw[280:328],
        rtmrs=(raw[328:376], raw[376:424], raw[424:472], raw[472:520]),
        report_data=raw[520:584],
        tee_tcb_svn2=raw[584:600] if td15 else None,
        mrservicetd=raw[600:648] if td15 else None)


def _strip_pem(cert_data: bytes) -> bytes:
    """The PEM chain is usually NUL-terminated (C string); the NUL is not PEM."""
    return cert_data.rstrip(b"\x00")


def _parse_qe_certification(r: _Reader) -> QeCertificationData:
    qe_raw = r.take(SGX_REPORT_BODY_SIZE, "QE report")
    qe_sig = r.take(64, "QE report signature")
    auth_len = r.u16("QE auth data size")
    if auth_len > MAX_QE_AUTH_DATA:
        raise ProtocolError(
            f"{r.what}: QE auth data of {auth_len} bytes exceeds {MAX_QE_AUTH_DATA}")
    auth = r.take(auth_len, "QE auth data")
    cert_type = r.u16("certification data type")
    cert_size = r.u32("certification data size")
    if cert_type != CERT_TYPE_PCK_CHAIN:
        raise ProtocolError(f"{r.what}: certification data type {cert_type} unsupported "
                            f"(need 5, PEM PCK chain)")
    if cert_size > MAX_CERT_DATA_SIZE:
        raise ProtocolError(f"{r.what}: certification data of {cert_size} bytes exceeds limit")
    pem = r.take(cert_size, "PCK certificate chain")
    return QeCertificationData(qe_report=parse_enclave_report(qe_raw),
                               qe_report_signature=qe_sig, qe_auth_data=auth,
                               pck_chain_pem=_strip_pem(pem))


def _body_layout(data: bytes, header: QuoteHeader) -> tuple[int, int, int]:
    """Return (body_type, body_offset, body_size) after checking version/tee_type together."""
    v, tee = header.version, header.tee_type
    if v == 3:
        if tee != TEE_TYPE_SGX:
            raise ProtocolError(f"quote v3 with tee_type {tee:#x}: v3 is SGX only")
        return BODY_TYPE_SGX, HEADER_SIZE, SGX_REPORT_BODY_SIZE
    if v == 4:
        if tee == TEE_TYPE_SGX:
            return BODY_TYPE_SGX, HEADER_SIZE, SGX_REPORT_BODY_SIZE
        if tee == TEE_TYPE_TDX:
            return BODY_TYPE_TD10, HEADER_SIZE, TD10_BODY_SIZE
        raise ProtocolError(f"quote v4: unknown tee_type {tee:#x}")
    if v == 5:
        r = _Reader(data, HEADER_SIZE, len(data), "quote v5")
        body_type = r.u16("body type")
        body_size = r.u32("body size")
        expected = _BODY_SIZES.get(body_type)
        if expected is None:
            raise ProtocolError(f"quote v5: unknown body type {body_type}")
        if body_size != expected:
            raise ProtocolError(f"quote v5: body type {body_type} with size {body_size}, "
                                f"expected {expected}")
        if (body_type == BODY_TYPE_SGX) != (tee == TEE_TYPE_SGX) or \
                tee not in (TEE_TYPE_SGX, TEE_TYPE_TDX):
            raise ProtocolError(f"quote v5: body type {body_type} does not match tee_type {tee:#x}")
        return body_type, HEADER_SIZE + V5_BODY_DESCRIPTOR_SIZE, body_size
    raise ProtocolError(f"quote version {v} not supported (3, 4 or 5)")


def parse_quote(data: bytes) -> DcapQuote:
    """Parse an untrusted quote; raise ProtocolError on any structural problem."""
    if not isinstance(data, (bytes, bytearray)):
        raise ProtocolError("quote: expected bytes")
    data = bytes(data)
    if len(data) > MAX_QUOTE_SIZE:
        raise ProtocolError(f"quote of {len(data)} bytes exceeds limit {MAX_QUOTE_SIZE}")
    header = parse_header(data)
    if header.att_key_type != ATT_KEY_ECDSA_P256:
        raise ProtocolError(f"quote: attestation key type {header.att_key_type} unsupported "
                            f"(need 2, ECDSA P-256)")
    if header.qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise ProtocolError(f"quote: QE vendor {header.qe_vendor_id.hex()} is not Intel")
    body_type, body_off, body_size = _body_layout(data, header)
    r = _Reader(data, body_off, len(data), f"quote v{header.version}")
    body_raw = r.take(body_size, "report body")
    signed_end = r.pos
    sig_len = r.u32("signature data length")
    sig_start = r.pos
    if sig_len > len(data) - sig_start:
        raise ProtocolError(f"quote: signature data length {sig_len} overruns the "
                            f"{len(data) - sig_start} bytes left")
    s = _Reader(data, sig_start, sig_start + sig_len, "quote signature data")
    signature = s.take(64, "quote signature")
    att_key = s.take(64, "attestation key")
    if header.version == 3:
        cert = _parse_qe_certification(s)
    else:
        outer_type = s.u16("certification data type")
        outer_size = s.u32("certification data size")
        if outer_type != CERT_TYPE_QE_REPORT:
            raise ProtocolError(f"quote: outer certification data type {outer_type} "
                                f"unsupported (need 6, QE report certification data)")
        outer_start = s.pos
        s.take(outer_size, "QE report certification data")  # bounds check vs signature data
        cert = _parse_qe_certification(
            _Reader(data, outer_start, outer_start + outer_size, "QE report certification data"))
    body: EnclaveReportBody | TdReportBody
    if body_type == BODY_TYPE_SGX:
        body = parse_enclave_report(body_raw)
    else:
        body = parse_td_report(body_raw)
    return DcapQuote(header=header, body_type=body_type, body=body,
                     signed_data=data[:signed_end], signature=signature,
                     attestation_key=att_key, certification=cert,
                     trailing=len(data) - (sig_start + sig_len))


def looks_like_quote(data: bytes) -> str | None:
    """Cheap content sniffing: "sgx-dcap", "tdx" or None (no signature work).

    Keyed on the Intel QE vendor id only, so that a quote with a bad version
    or key type is still routed to the DCAP parser and rejected with a
    precise reason instead of "unknown format".
    """
    if len(data) < HEADER_SIZE or data[12:28] != INTEL_QE_VENDOR_ID:
        return None
    (tee_type,) = struct.unpack_from("<I", data, 4)
    return "tdx" if tee_type == TEE_TYPE_TDX else "sgx-dcap"
