"""Intel SGX PCK certificate extensions (OID 1.2.840.113741.1.13.1).

Why: TCB status needs the platform's FMSPC, PCE SVN and the 16 CPU SVN
components, and Intel only delivers them inside the PCK leaf certificate as a
private ASN.1 structure that `cryptography` leaves as opaque bytes. This is a
minimal, bounds-checked DER reader for exactly that structure:

    SEQUENCE OF SEQUENCE { OID, value }
      .1 PPID OCTET STRING(16)   .2 TCB SEQUENCE OF SEQUENCE { OID .2.N, INTEGER|OCTET STRING }
      .3 PCE-ID OCTET STRING(2)  .4 FMSPC OCTET STRING(6)  .5 SGX type ENUMERATED
"""

from __future__ import annotations

import dataclasses

from cryptography import x509

from ..errors import ProtocolError

SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
_ARC = "1.2.840.113741.1.13.1"
_MAX_DEPTH = 6


@dataclasses.dataclass(frozen=True)
class PckExtensions:
    fmspc: bytes
    pce_id: bytes
    pce_svn: int
    cpu_svn: bytes
    comp_svns: tuple[int, ...]
    ppid: bytes | None
    sgx_type: int | None

    def to_json(self) -> dict[str, object]:
        return {"fmspc": self.fmspc.hex(), "pce_id": self.pce_id.hex(),
                "pce_svn": self.pce_svn, "cpu_svn": self.cpu_svn.hex(),
                "comp_svns": list(self.comp_svns),
                "sgx_type": self.sgx_type}


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Return (tag, value_start, value_end) of the DER element at pos."""
    if pos + 2 > end:
        raise ProtocolError("PCK SGX extension: truncated DER element")
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 3 or pos + n > end:
            raise ProtocolError("PCK SGX extension: bad DER length")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    if pos + length > end:
        raise ProtocolError("PCK SGX extension: DER element overruns its container")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    pos = start
    while pos < end:
        tag, vs, ve = _tlv(data, pos, end)
        out.append((tag, vs, ve))
        pos = ve
        if len(out) > 64:
            raise ProtocolError("PCK SGX extension: too many elements")
    return out


def _oid(raw: bytes) -> str:
    if not raw:
        raise ProtocolError("PCK SGX extension: empty OID")
    arcs = [raw[0] // 40, raw[0] % 40] if raw[0] < 80 else [2, raw[0] - 80]
    value = 0
    for byte in raw[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    return ".".join(str(a) for a in arcs)


def _int(raw: bytes) -> int:
    if not raw or len(raw) > 8:
        raise ProtocolError("PCK SGX extension: bad INTEGER")
    return int.from_bytes(raw, "big", signed=True)


def _pairs(data: bytes, start: int, end: int) -> dict[str, tuple[int, bytes, int, int]]:
    """Map OID -> (tag, value bytes, value_start, value_end) for SEQUENCE{OID, value} items."""
    out: dict[str, tuple[int, bytes, int, int]] = {}
    for tag, vs, ve in _children(data, start, end):
        if tag != 0x30:
            raise ProtocolError("PCK SGX extension: expected SEQUENCE")
        inner = _children(data, vs, ve)
        if len(inner) != 2 or inner[0][0] != 0x06:
            raise ProtocolError("PCK SGX extension: expected {OID, value}")
        oid = _oid(data[inner[0][1]:inner[0][2]])
        vtag, vvs, vve = inner[1]
        out[oid] = (vtag, data[vvs:vve], vvs, vve)
    return out


def parse_sgx_extension(der: bytes) -> PckExtensions:
    tag, vs, ve = _tlv(der, 0, len(der))
    if tag != 0x30:
        raise ProtocolError("PCK SGX extension: expected SEQUENCE")
    top = _pairs(der, vs, ve)

    def need(oid: str, want_tag: int) -> tuple[bytes, int, int]:
        item = top.get(f"{_ARC}.{oid}")
        if item is None or item[0] != want_tag:
            raise ProtocolError(f"PCK SGX extension: missing or malformed {_ARC}.{oid}")
        return item[1], item[2], item[3]

    fmspc, _, _ = need("4", 0x04)
    pce_id, _, _ = need("3", 0x04)
    _, tcb_s, tcb_e = need("2", 0x30)
    tcb = _pairs(der, tcb_s, tcb_e)
    comps = []
    for n in range(1, 17):
        item = tcb.get(f"{_ARC}.2.{n}")
        if item is None or item[0] != 0x02:
            raise ProtocolError(f"PCK SGX extension: missing TCB component {n}")
        comps.append(_int(item[1]))
    pcesvn = tcb.get(f"{_ARC}.2.17")
    cpusvn = tcb.get(f"{_ARC}.2.18")
    if pcesvn is None or pcesvn[0] != 0x02 or cpusvn is None or cpusvn[0] != 0x04:
        raise ProtocolError("PCK SGX extension: missing PCE SVN or CPU SVN")
    if len(fmspc) != 6 or len(pce_id) != 2 or len(cpusvn[1]) != 16:
        raise ProtocolError("PCK SGX extension: wrong FMSPC/PCE-ID/CPU SVN length")
    ppid = top.get(f"{_ARC}.1")
    sgx_type = top.get(f"{_ARC}.5")
    return PckExtensions(fmspc=fmspc, pce_id=pce_id, pce_svn=_int(pcesvn[1]),
                         cpu_svn=cpusvn[1], comp_svns=tuple(comps),
                         ppid=ppid[1] if ppid and ppid[0] == 0x04 else None,
                         sgx_type=_int(sgx_type[1]) if sgx_type and sgx_type[0] == 0x0A else None)


def pck_extensions(cert: x509.Certificate) -> PckExtensions | None:
    """The SGX extensions of a PCK leaf, or None when the certificate has none."""
    try:
        ext = cert.extensions.get_extension_for_oid(SGX_EXTENSION_OID)
    except x509.ExtensionNotFound:
        return None
    except ValueError as err:
        raise ProtocolError(f"PCK certificate: bad extensions ({err})") from None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise ProtocolError("PCK SGX extension: unexpected decoding")
    return parse_sgx_extension(value.value)
