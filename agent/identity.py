"""Persistent Ed25519 identities for agents and CLI clients.

The identity key is who an agent *is* on the mesh: its TLS certificate key,
the key its evidence's report_data commits to, the key that signs its
membership record. It lives in the data dir, owner-only (0600), and is
created once. The certificate is self-issued: trust comes from attestation
and pinning, not from a CA.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from keepmesh.protocol.errors import ProtocolError

from keepmesh.files import read_at_most

KEY_FILE = "identity.key"
MAX_KEY_FILE = 16384


def fingerprint(public_key: bytes) -> str:
    """Short, stable, human-checkable name for an identity key (SHA-256, hex)."""
    return hashlib.sha256(public_key).hexdigest()[:32]


@dataclass(frozen=True)
class Identity:
    private_key: ed25519.Ed25519PrivateKey
    certificate: x509.Certificate
    # Derived once: deriving the public key costs tens of microseconds and it is
    # read on hot paths (status, membership, channel).
    public_bytes: bytes = field(init=False)

    def __post_init__(self) -> None:
        pub = self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        object.__setattr__(self, "public_bytes", pub)

    @property
    def seed(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption())

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_bytes)  # sha256 of 32 bytes: cheap enough

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    @classmethod
    def from_private_key(cls, key: ed25519.Ed25519PrivateKey, name: str = "keepmesh") -> Identity:
        return cls(key, self_signed_certificate(key, name))

    @classmethod
    def generate(cls, name: str = "keepmesh") -> Identity:
        return cls.from_private_key(ed25519.Ed25519PrivateKey.generate(), name)


def self_signed_certificate(key: ed25519.Ed25519PrivateKey, name: str) -> x509.Certificate:
    """Certificate carrying the identity key; validity is wide because it is pinned, not chained."""
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, f"{name} {fingerprint(pub)}"),
    ])
    now = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(hashlib.sha256(pub).digest()[:16], "big") >> 1)
        .not_valid_before(now)
        .not_valid_after(datetime.datetime(2120, 1, 1, tzinfo=datetime.UTC))
        .sign(key, None)
    )


def write_private_key(path: Path, key: ed25519.Ed25519PrivateKey) -> None:
    """Create the key file owner-only from the start (no window where it is world-readable)."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def read_private_key(path: Path) -> ed25519.Ed25519PrivateKey:
    try:
        data = read_at_most(path, MAX_KEY_FILE)
    except OSError as err:
        raise ProtocolError(f"cannot read key {path}: {err.strerror}") from None
    if len(data) > MAX_KEY_FILE:
        raise ProtocolError(f"key file {path} is too large")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ProtocolError(f"key file {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ProtocolError(f"key file {path} is not an Ed25519 key")
    return key


def load_or_create(path: Path, name: str = "keepmesh") -> Identity:
    """Load the identity at `path`, creating it (0600) on first use."""
    if not path.exists():
        try:
            write_private_key(path, ed25519.Ed25519PrivateKey.generate())
        except FileExistsError:
            pass  # another process won the race; load theirs
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ProtocolError(f"key file {path} is accessible by others (mode {mode:o}); chmod 600")
    return Identity.from_private_key(read_private_key(path), name)


def public_key_bytes(cert: x509.Certificate) -> bytes:
    """The Ed25519 identity in a peer certificate; anything else is not a keepmesh peer."""
    key = cert.public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ProtocolError("peer certificate key is not Ed25519")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


