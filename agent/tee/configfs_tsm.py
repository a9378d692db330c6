"""Evidence through Linux configfs-tsm (/sys/kernel/config/tsm/report), kernel >= 6.7.

Why this is the preferred path: one vendor-neutral interface gives SEV-SNP
reports (with the VCEK/ASK/ARK certificate table in auxblob) and TDX quotes
(the kernel asks the QGS), so the agent needs no ioctls. The protocol is
racy by design: any process can write the same entry, so the kernel bumps
`generation` on every inblob write; we read it before and after taking the
blobs and retry if it moved, and always rmdir the entry.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Callable
from pathlib import Path

from keepmesh.agent.tee._common import pad_report_data, unavailable
from keepmesh.protocol.attestation.evidence import Evidence

TSM_DIR = "sys/kernel/config/tsm/report"
MAX_BLOB = 64 * 1024
MAX_ATTEMPTS = 3

# GUIDs of the SNP certificate table (GHCB spec / sev-guest docs).
SNP_CERT_GUIDS = {
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"): "vcek",
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"): "vlek",
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"): "ask",
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"): "ark",
}
PROVIDER_FORMATS = {"sev_guest": ("snp", "sev-snp"), "tdx_guest": ("tdx", "tdx")}


def parse_snp_cert_table(blob: bytes) -> list[bytes]:
    """Certificates from an SNP certificate table: (guid, offset, length)*, zero entry ends it."""
    out: list[bytes] = []
    pos = 0
    while pos + 24 <= len(blob) and len(out) < 8:
        guid = uuid.UUID(bytes_le=blob[pos:pos + 16])
        offset = int.from_bytes(blob[pos + 16:pos + 20], "little")
        length = int.from_bytes(blob[pos + 20:pos + 24], "little")
        pos += 24
        if guid.int == 0 and offset == 0 and length == 0:
            break
        if offset + length > len(blob) or length == 0 or length > 16 * 1024:
            raise unavailable(f"configfs-tsm: SNP certificate table entry {guid} out of bounds")
        if guid in SNP_CERT_GUIDS:
            out.append(blob[offset:offset + length])
    return out


class ConfigfsTsmBackend:
    """TeeBackend over configfs-tsm; `root` lets tests point it at a fake tree."""

    name = "configfs-tsm"

    def __init__(self, root: str | Path = "/", *,
                 mkdir: Callable[[str], None] = os.mkdir,
                 rmdir: Callable[[str], None] = os.rmdir) -> None:
        self.base = Path(root) / TSM_DIR
        self._mkdir = mkdir
        self._rmdir = rmdir
        self.kind = "unknown"

    def probe(self) -> str | None:
        """None when usable, else why not."""
        if not self.base.is_dir():
            return f"{self.base} not present (kernel without configfs-tsm, or not a CVM)"
        if not os.access(self.base, os.W_OK):
            return f"{self.base} not writable (need root)"
        return None

    def _read(self, path: Path) -> bytes:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BLOB + 1)
        if len(data) > MAX_BLOB:
            raise unavailable(f"configfs-tsm: {path.name} larger than {MAX_BLOB} bytes")
        return data

    def _generation(self, entry: Path) -> int:
        try:
            return int(self._read(entry / "generation").strip() or b"-1")
        except ValueError:
            raise unavailable("configfs-tsm: unreadable generation") from None

    def collect(self, report_data: bytes) -> Evidence:
        blob = pad_report_data(report_data)
        reason = self.probe()
        if reason is not None:
            raise unavailable(f"configfs-tsm: {reason}")
        last = "no attempt"
        for _ in range(MAX_ATTEMPTS):
            entry = self.base / f"keepmesh-{secrets.token_hex(8)}"
            try:
                self._mkdir(str(entry))
            except OSError as err:
                raise unavailable(f"configfs-tsm: cannot create report entry: {err}") from None
            try:
                with open(entry / "inblob", "wb") as fh:
                    fh.write(blob)
                before = self._generation(entry)
                provider = self._read(entry / "provider").strip().decode("ascii", "replace")
                out = self._read(entry / "outblob")
                aux_path = entry / "auxblob"
                aux = self._read(aux_path) if aux_path.exists() else b""
                after = self._generation(entry)
            except OSError as err:
                raise unavailable(f"configfs-tsm: {err}") from None
            finally:
                try:
                    self._rmdir(str(entry))
                except OSError:
                    pass
            if before != after:
                last = f"generation changed {before} -> {after} (concurrent writer)"
                continue
            if provider not in PROVIDER_FORMATS:
                raise unavailable(f"configfs-tsm: unsupported provider {provider[:40]!r}")
            kind, fmt = PROVIDER_FORMATS[provider]
            self.kind = kind
            certs = parse_snp_cert_table(aux) if fmt == "sev-snp" and aux else []
            return Evidence(format=fmt, report=out, certs=tuple(certs))
        raise unavailable(f"configfs-tsm: gave up after {MAX_ATTEMPTS} attempts: {last}")
