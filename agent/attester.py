"""This agent's own evidence: produced by the TEE backend, bound to the identity key.

Real reports are slow (a TDX quote ≈ 39 ms, serialised per host), so the
generic evidence (no nonce) is produced once and reused until it reaches half
of its lifetime; only a peer that demands freshness costs a new report.
"""

from __future__ import annotations

import time

import trio
from keepmesh.agent.identity import Identity
from keepmesh.agent.tee.base import TeeBackend
from keepmesh.protocol.attestation.evidence import Evidence
from keepmesh.protocol.channel import evidence_report_data


class LocalAttester:
    def __init__(self, identity: Identity, backend: TeeBackend, lifetime_s: float = 3600.0) -> None:
        self.identity = identity
        self.backend = backend
        self.lifetime_s = lifetime_s
        self._generic: tuple[Evidence, int] | None = None
        self._token: object = self._state_token()
        self._lock = trio.Lock()  # hardware interfaces serialise report requests anyway

    async def evidence(self, nonce: bytes | None) -> tuple[Evidence, int]:
        """Evidence whose report_data commits to our identity (and `nonce` if given)."""
        if nonce is None:
            cached = self._generic
            token = self._state_token()
            if token != self._token:  # e.g. `keepmesh sim set-tcb`: old evidence is stale
                self._token, cached = token, None
            if cached is not None and time.time() - cached[1] < self.lifetime_s / 2:
                return cached
        async with self._lock:
            issued_at = int(time.time())
            report_data = evidence_report_data(self.identity.public_bytes, issued_at, nonce or b"")
            evidence = await trio.to_thread.run_sync(self.backend.collect, report_data)
        if nonce is None:
            self._generic = (evidence, issued_at)
        return evidence, issued_at

    def _state_token(self) -> object:
        """Backends whose evidence can change while running (the sim TEE's TCB knob)
        expose `state_token()`; hardware backends do not, and never invalidate."""
        probe = getattr(self.backend, "state_token", None)
        return probe() if callable(probe) else None

    def evidence_now(self, nonce: bytes | None) -> tuple[Evidence, int]:
        """Synchronous variant for start-up, before trio runs."""
        issued_at = int(time.time())
        report_data = evidence_report_data(self.identity.public_bytes, issued_at, nonce or b"")
        evidence = self.backend.collect(report_data)
        if nonce is None:
            self._generic = (evidence, issued_at)
        return evidence, issued_at
