"""SGX DCAP quotes through Gramine's /dev/attestation pseudo-files.

Why: inside a Gramine enclave the only way to get a quote is to write the 64
report_data bytes to /dev/attestation/user_report_data and read
/dev/attestation/quote (Gramine talks to the AESM/QE for us). We check
attestation_type is "dcap": an EPID quote is not verifiable here.
"""

from __future__ import annotations

from pathlib import Path

from keepmesh.agent.tee._common import pad_report_data, unavailable
from keepmesh.protocol.attestation.evidence import Evidence

MAX_QUOTE = 64 * 1024


class GramineBackend:
    kind = "sgx"
    name = "gramine"

    def __init__(self, root: str | Path = "/") -> None:
        self.base = Path(root) / "dev/attestation"

    def probe(self) -> str | None:
        if not self.base.is_dir():
            return f"{self.base} not present (not inside a Gramine SGX enclave)"
        kind_file = self.base / "attestation_type"
        if kind_file.exists():
            kind = kind_file.read_bytes()[:32].strip().decode("ascii", "replace")
            if kind != "dcap":
                return f"Gramine attestation_type is {kind!r}, need 'dcap'"
        return None

    def collect(self, report_data: bytes) -> Evidence:
        data = pad_report_data(report_data)
        reason = self.probe()
        if reason is not None:
            raise unavailable(f"gramine: {reason}")
        try:
            with open(self.base / "user_report_data", "wb") as fh:
                fh.write(data)
            with open(self.base / "quote", "rb") as fh:
                quote = fh.read(MAX_QUOTE + 1)
        except OSError as err:
            raise unavailable(f"gramine: {err.strerror or err}") from None
        if not quote or len(quote) > MAX_QUOTE:
            raise unavailable(f"gramine: quote of {len(quote)} bytes")
        return Evidence(format="sgx-dcap", report=quote, certs=())
