"""Evidence through /dev/sev-guest (SNP_GET_REPORT / SNP_GET_EXT_REPORT ioctls).

Why: the fallback on SNP guests whose kernel predates configfs-tsm. The
ioctl argument carries *pointers* to request/response buffers, so the real
struct layouts (include/uapi/linux/sev-guest.h) are built with ctypes:

    struct snp_guest_request_ioctl { u8 msg_version; u64 req_data; u64 resp_data;
                                     u64 exitinfo2; }                       /* 32 bytes */
    struct snp_report_req { u8 user_data[64]; u32 vmpl; u8 rsvd[28]; }     /* 96 */
    struct snp_report_resp { u8 data[4000]; }  -> msg: u32 status; u32 report_size;
                                                  u8 rsvd[24]; u8 report[1184]
    struct snp_ext_report_req { struct snp_report_req data; u64 certs_address;
                                u32 certs_len; }                            /* 112 */

The ioctl function is injectable so tests feed real report bytes through the
same buffers.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from keepmesh.agent.tee._common import pad_report_data, unavailable
from keepmesh.agent.tee.configfs_tsm import parse_snp_cert_table
from keepmesh.protocol.attestation.evidence import Evidence


def _iowr(type_char: str, nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (ord(type_char) << 8) | nr


class SnpGuestRequestIoctl(ctypes.Structure):
    _fields_ = [("msg_version", ctypes.c_uint8), ("req_data", ctypes.c_uint64),
                ("resp_data", ctypes.c_uint64), ("exitinfo2", ctypes.c_uint64)]


class SnpReportReq(ctypes.Structure):
    _fields_ = [("user_data", ctypes.c_uint8 * 64), ("vmpl", ctypes.c_uint32),
                ("rsvd", ctypes.c_uint8 * 28)]


class SnpReportResp(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint8 * 4000)]


class SnpExtReportReq(ctypes.Structure):
    _fields_ = [("data", SnpReportReq), ("certs_address", ctypes.c_uint64),
                ("certs_len", ctypes.c_uint32)]


assert ctypes.sizeof(SnpGuestRequestIoctl) == 32
assert ctypes.sizeof(SnpReportReq) == 96
assert ctypes.sizeof(SnpExtReportReq) == 112

SNP_GET_REPORT = _iowr("S", 0x0, ctypes.sizeof(SnpGuestRequestIoctl))
SNP_GET_EXT_REPORT = _iowr("S", 0x2, ctypes.sizeof(SnpGuestRequestIoctl))
SNP_REPORT_SIZE = 1184
CERTS_BUF = 4 * 4096
SNP_GUEST_VMM_ERR_INVALID_LEN = 1

IoctlFn = Callable[[int, int, Any], Any]


class SevGuestBackend:
    """TeeBackend over /dev/sev-guest; `root` for fake trees, `ioctl` for fake firmware."""

    kind = "snp"
    name = "sev-guest"

    def __init__(self, root: str | Path = "/", *, ioctl: IoctlFn = fcntl.ioctl,
                 extended: bool = True, vmpl: int = 0) -> None:
        self.device = Path(root) / "dev/sev-guest"
        self._ioctl = ioctl
        self.extended = extended
        self.vmpl = vmpl

    def probe(self) -> str | None:
        if not self.device.exists():
            return f"{self.device} not present (not an SEV-SNP guest or sev-guest not loaded)"
        if not os.access(self.device, os.R_OK | os.W_OK):
            return f"{self.device} not accessible (need root)"
        return None

    def collect(self, report_data: bytes) -> Evidence:
        data = pad_report_data(report_data)
        reason = self.probe()
        if reason is not None:
            raise unavailable(f"sev-guest: {reason}")
        req = SnpExtReportReq()
        ctypes.memmove(req.data.user_data, data, 64)
        req.data.vmpl = self.vmpl
        resp = SnpReportResp()
        certs = ctypes.create_string_buffer(CERTS_BUF)
        if self.extended:
            req.certs_address = ctypes.addressof(certs)
            req.certs_len = CERTS_BUF
        arg = SnpGuestRequestIoctl(msg_version=1, req_data=ctypes.addressof(req),
                                   resp_data=ctypes.addressof(resp))
        request = SNP_GET_EXT_REPORT if self.extended else SNP_GET_REPORT
        try:
            fd = os.open(self.device, os.O_RDWR)
        except OSError as err:
            raise unavailable(f"sev-guest: cannot open {self.device}: {err.strerror}") from None
        try:
            self._ioctl(fd, request, arg)
        except OSError as err:
            raise unavailable(f"sev-guest: ioctl failed: {err.strerror or err} "
                              f"(fw_error {arg.exitinfo2 & 0xFFFFFFFF:#x}, "
                              f"vmm_error {arg.exitinfo2 >> 32:#x})") from None
        finally:
            os.close(fd)
        raw = bytes(resp.data)
        status = int.from_bytes(raw[0:4], "little")
        size = int.from_bytes(raw[4:8], "little")
        if status != 0:
            raise unavailable(f"sev-guest: firmware status {status:#x}")
        if size != SNP_REPORT_SIZE:
            raise unavailable(f"sev-guest: report size {size}, expected {SNP_REPORT_SIZE}")
        report = raw[32:32 + size]
        chain = parse_snp_cert_table(certs.raw[:req.certs_len]) if self.extended else []
        return Evidence(format="sev-snp", report=report, certs=tuple(chain))
