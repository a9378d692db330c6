"""TDREPORT through /dev/tdx_guest (TDX_CMD_GET_REPORT0).

Why only a TDREPORT: a TDREPORT is MAC'd with a platform-local key and is
verifiable only on the same machine; a remotely verifiable *quote* needs the
Quoting Enclave via a QGS (vsock) or the kernel's configfs-tsm path. So this
backend can say TDX is present and fetch TDREPORTs, but `collect` refuses to
pretend it produced evidence: use configfs-tsm for quotes.

    struct tdx_report_req { u8 reportdata[64]; u8 tdreport[1024]; }  /* inline, 1088 */
    TDX_CMD_GET_REPORT0 = _IOWR('T', 1, struct tdx_report_req)
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from keepmesh.agent.tee._common import pad_report_data, unavailable
from keepmesh.protocol.attestation.evidence import Evidence

TDREPORT_SIZE = 1024
REQ_SIZE = 64 + TDREPORT_SIZE
TDX_CMD_GET_REPORT0 = (3 << 30) | (REQ_SIZE << 16) | (ord("T") << 8) | 1


class TdxGuestBackend:
    kind = "tdx"
    name = "tdx-guest"

    def __init__(self, root: str | Path = "/", *,
                 ioctl: Callable[[int, int, Any, bool], Any] = fcntl.ioctl) -> None:
        self.device = Path(root) / "dev/tdx_guest"
        self._ioctl = ioctl

    def probe(self) -> str | None:
        if not self.device.exists():
            return f"{self.device} not present (not a TDX guest)"
        return None

    def get_tdreport(self, report_data: bytes) -> bytes:
        buf = bytearray(pad_report_data(report_data) + bytes(TDREPORT_SIZE))
        try:
            fd = os.open(self.device, os.O_RDWR)
        except OSError as err:
            raise unavailable(f"tdx-guest: cannot open {self.device}: {err.strerror}") from None
        try:
            self._ioctl(fd, TDX_CMD_GET_REPORT0, buf, True)
        except OSError as err:
            raise unavailable(f"tdx-guest: TDX_CMD_GET_REPORT0 failed: {err.strerror}") from None
        finally:
            os.close(fd)
        return bytes(buf[64:])

    def collect(self, report_data: bytes) -> Evidence:
        reason = self.probe()
        if reason is not None:
            raise unavailable(f"tdx-guest: {reason}")
        raise unavailable("tdx-guest: /dev/tdx_guest yields only a local TDREPORT; a quote "
                          "needs a QGS or configfs-tsm (/sys/kernel/config/tsm/report)")
