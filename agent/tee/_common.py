"""Helpers shared by the hardware evidence backends."""

from __future__ import annotations

from keepmesh.agent.tee.base import TeeUnavailable

REPORT_DATA_SIZE = 64


def pad_report_data(report_data: bytes) -> bytes:
    """Backends take up to 64 bytes and zero-pad, as the TeeBackend contract says."""
    if not isinstance(report_data, (bytes, bytearray)) or len(report_data) > REPORT_DATA_SIZE:
        raise ValueError("report_data must be at most 64 bytes")
    return bytes(report_data).ljust(REPORT_DATA_SIZE, b"\x00")


def unavailable(reason: str) -> TeeUnavailable:
    return TeeUnavailable(reason.replace("\n", " "))
