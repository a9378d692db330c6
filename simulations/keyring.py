"""SIMULATION ONLY record signing: a keyed-BLAKE2b keyring behind the RecordSigner and
RecordVerifier protocols of keepmesh.protocol.membership.signing.

Why not Ed25519 and why not in protocol/: 10,000 simulated members cannot
afford Ed25519 on every record version, and the simulator does not model a
key-stealing adversary beyond "does not know the keyring secret". Kept out of
the product package so no agent can be configured with it by mistake.
"""

from __future__ import annotations

import hashlib
import hmac

from keepmesh.protocol.membership.signing import NODE_ID_LEN, NodeId


class SimulationKeyring:
    """SIMULATION ONLY - NOT SECURE AGAINST ANYONE WHO KNOWS `master`.

    Each node's signing secret is BLAKE2b(node_id, key=master); a signature is
    a keyed BLAKE2b MAC of the data. Anyone without `master` cannot forge, which
    is all the simulator needs to exercise the rejection paths at ~1 us a check.
    """

    def __init__(self, master: bytes = b"keepmesh-simulation-only") -> None:
        self._master = hashlib.blake2b(master, digest_size=32).digest()

    def _secret(self, node_id: NodeId) -> bytes:
        return hashlib.blake2b(node_id, key=self._master, digest_size=32).digest()

    def signer(self, node_id: NodeId) -> SimulationSigner:
        return SimulationSigner(node_id, self._secret(node_id))

    def verifier(self) -> SimulationVerifier:
        return SimulationVerifier(self)

    def _mac(self, node_id: NodeId, data: bytes) -> bytes:
        return hashlib.blake2b(data, key=self._secret(node_id), digest_size=32).digest()


class SimulationSigner:
    """SIMULATION ONLY: see SimulationKeyring."""

    def __init__(self, node_id: NodeId, secret: bytes) -> None:
        if len(node_id) != NODE_ID_LEN:
            raise ValueError("node id must be 32 bytes")
        self.node_id = node_id
        self._secret = secret

    def sign(self, data: bytes) -> bytes:
        return hashlib.blake2b(data, key=self._secret, digest_size=32).digest()


class SimulationVerifier:
    """SIMULATION ONLY: see SimulationKeyring."""

    def __init__(self, keyring: SimulationKeyring) -> None:
        self._keyring = keyring

    def verify(self, node_id: NodeId, data: bytes, signature: bytes) -> bool:
        if len(node_id) != NODE_ID_LEN:
            return False
        return hmac.compare_digest(self._keyring._mac(node_id, data), signature)
