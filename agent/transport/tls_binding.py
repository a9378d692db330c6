"""What aioquic does not give us: client authentication and an RFC 9266 exporter.

Both reach into aioquic internals (pinned exactly in pyproject.toml):

- aioquic's server only asks for a client certificate when the private
  `_request_client_certificate` flag is set, and even then accepts an empty
  Certificate message. We set the flag, and `peer_identity()` refuses a
  session whose peer sent no certificate (checked at HandshakeCompleted).
- There is no public TLS exporter. The exporter master secret is
  Derive-Secret(master, "exp master", ClientHello..server Finished), the same
  transcript as the first 1-RTT ("s ap traffic") secret, so we capture it when
  that key is installed, before the client's Finished enters the hash.
  tests/test_tls_binding.py checks both ends derive the same value.
"""

from __future__ import annotations

from typing import Any

from aioquic import tls
from aioquic.quic.connection import QuicConnection
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from keepmesh.agent.identity import public_key_bytes
from keepmesh.protocol.errors import ProtocolError

CHANNEL_BINDING_LABEL = b"EXPORTER-Channel-Binding"


class BoundQuicConnection(QuicConnection):
    """QuicConnection that demands a client certificate and exposes tls-exporter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._exporter_master: bytes | None = None

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if not self._is_client:
            self.tls._request_client_certificate = True

    def _update_traffic_key(self, direction: tls.Direction, epoch: tls.Epoch,
                            cipher_suite: tls.CipherSuite, secret: bytes) -> None:
        schedule = self.tls.key_schedule
        if epoch == tls.Epoch.ONE_RTT and self._exporter_master is None and schedule is not None:
            self._exporter_master = schedule.derive_secret(b"exp master")
        super()._update_traffic_key(direction, epoch, cipher_suite, secret)

    def tls_exporter(self, label: bytes = CHANNEL_BINDING_LABEL, context: bytes = b"",
                     length: int = 32) -> bytes:
        """RFC 8446 §7.5 TLS-Exporter; with the defaults, RFC 9266 tls-exporter."""
        if self._exporter_master is None:
            raise ProtocolError("tls-exporter requested before the handshake completed")
        ks = self.tls.key_schedule
        if ks is None:
            raise ProtocolError("tls-exporter requested without a key schedule")
        algorithm = ks.algorithm

        def digest(data: bytes) -> bytes:
            h = hashes.Hash(algorithm)
            h.update(data)
            return h.finalize()

        derived = tls.hkdf_expand_label(algorithm, self._exporter_master, label, digest(b""),
                                        algorithm.digest_size)
        return tls.hkdf_expand_label(algorithm, derived, b"exporter", digest(context), length)

    def peer_certificate(self) -> x509.Certificate | None:
        cert: x509.Certificate | None = self.tls._peer_certificate
        return cert

    def peer_identity(self) -> bytes:
        """The peer's Ed25519 identity key; raises if it presented none (aioquic would allow it)."""
        cert = self.peer_certificate()
        if cert is None:
            raise ProtocolError("peer presented no certificate")
        return public_key_bytes(cert)
