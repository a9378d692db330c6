"""Who may speak for a member: its own key, and nobody else.

Records are signed by their subject so that no peer can forge, alter or
resurrect another member. The agent uses Ed25519 (the node id *is* the public
key); the simulator's keyed-BLAKE2b keyring lives in simulations/keyring.py,
outside the product package, behind the same two protocols.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Protocol

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

NodeId = bytes
Address = str

NODE_ID_LEN = 32
MAX_SIGNATURE = 128


class RecordSigner(Protocol):
    """Signs this node's own record and leave notice."""

    node_id: NodeId

    def sign(self, data: bytes) -> bytes: ...


class RecordVerifier(Protocol):
    """Checks a signature by the record's subject."""

    def verify(self, node_id: NodeId, data: bytes, signature: bytes) -> bool: ...


class Ed25519Signer:
    """Real signer: node id = raw 32-byte Ed25519 public key."""

    def __init__(self, private_key: bytes) -> None:
        if len(private_key) != 32:
            raise ValueError("Ed25519 private key seed must be 32 bytes")
        self._key = SigningKey(private_key)
        self.node_id: NodeId = bytes(self._key.verify_key)

    def sign(self, data: bytes) -> bytes:
        return bytes(self._key.sign(data).signature)


class Ed25519Verifier:
    """Real verifier; never raises on hostile input, answers False."""

    def verify(self, node_id: NodeId, data: bytes, signature: bytes) -> bool:
        if len(node_id) != NODE_ID_LEN or len(signature) != 64:
            return False
        try:
            VerifyKey(node_id).verify(data, signature)
        except (BadSignatureError, ValueError, TypeError):
            return False
        except Exception:  # nacl raises CryptoError on points not on the curve
            return False
        return True


class CachingVerifier:
    """Remembers good verdicts so one record version is checked once, even when
    thousands of simulated members share this object.

    The key is a digest of (node id, data, signature), so a valid signature
    paired with other bytes is never a cache hit, and an entry costs ~100 bytes
    whatever the record's size. Only *valid* signatures are remembered: caching
    failures let anyone fill the table with garbage (every forgery is also
    penalised, so re-checking one is rare). Bounded: oldest entries go first.
    """

    def __init__(self, inner: RecordVerifier, max_entries: int = 1 << 16) -> None:
        self._inner = inner
        self._max = max_entries
        self._cache: OrderedDict[bytes, bool] = OrderedDict()
        # Encoded gossip items whose signature verified, by their exact bytes: an item's
        # bytes fix its signer, what was signed and the signature, so the same bytes need
        # no check at all, not even the digest above or re-encoding what was signed (a
        # crash at 10,000 members is ~10,000 checks of every accusation in one process).
        self._items: OrderedDict[bytes, bool] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._cache)

    def verify(self, node_id: NodeId, data: bytes, signature: bytes) -> bool:
        h = hashlib.blake2b(node_id, digest_size=24)
        h.update(len(data).to_bytes(4, "big"))
        h.update(data)
        h.update(signature)
        key = h.digest()
        if key in self._cache:
            self.hits += 1
            return True
        self.misses += 1
        verdict = self._inner.verify(node_id, data, signature)
        if verdict:
            self._cache[key] = True
            if len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return verdict

    def verified_item(self, item: bytes) -> bool:
        """Did these exact encoded bytes pass `remember_item` (a good signature)?"""
        if item in self._items:
            self.hits += 1
            return True
        return False

    def remember_item(self, item: bytes) -> None:
        """`item` (an encoded signed message) verified: its exact bytes pass from now on.
        Only good verdicts, bounded like the digest cache."""
        self._items[item] = True
        if len(self._items) > self._max:
            self._items.popitem(last=False)
