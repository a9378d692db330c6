"""The seam between the agent and whatever produces TEE evidence.

Why a Protocol: real backends (configfs-tsm, /dev/sev-guest, TDX, Gramine)
and the simulated TEE must be interchangeable behind one face, so the agent
and its tests never care which hardware is present.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from keepmesh.protocol.attestation.evidence import Evidence

__all__ = ["Evidence", "TeeBackend", "TeeUnavailable"]


class TeeUnavailable(Exception):
    """This backend cannot produce evidence on this host (one-line reason)."""


@runtime_checkable
class TeeBackend(Protocol):
    """Produces evidence whose report_data commits to caller-chosen bytes.

    `kind` is "snp" | "tdx" | "sgx" | "sim"; `name` says which mechanism
    (e.g. "configfs-tsm", "sev-guest", "sim"). `collect` is blocking (real
    hardware takes tens of milliseconds), so the agent calls it in a worker
    thread. `report_data` is at most 64 bytes; shorter values are
    zero-padded by the backend.
    """

    kind: str
    name: str

    def collect(self, report_data: bytes) -> Evidence:
        ...
