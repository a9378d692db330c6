"""Encrypted delivery: a package is readable only by the attested keep's identity key.

Why: the deployer verifies the agent's fresh evidence, whose report_data
commits to the agent's Ed25519 identity key, and then seals a random
per-deployment key to the Curve25519 form of exactly that key. An agent that
failed policy never gets the key, and anyone who copies the traffic or the
sealed record without the identity seed cannot open it.
"""

from __future__ import annotations

import nacl.exceptions
import nacl.public
import nacl.secret
import nacl.signing
import nacl.utils
from keepmesh.protocol.deployment import SealedPackage
from keepmesh.protocol.errors import VerificationError
from keepmesh.protocol.secrets import (
    InputBundle,
    InputValue,
    SecretUpdate,
    decode_bundle,
    decode_value,
    encode_bundle,
    encode_value,
)


def new_deployment_key() -> bytes:
    return bytes(nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE))


def _curve_public(identity_public_key: bytes) -> nacl.public.PublicKey:
    if len(identity_public_key) != 32:
        raise VerificationError("identity key must be 32 bytes")
    try:
        return nacl.signing.VerifyKey(identity_public_key).to_curve25519_public_key()
    except (nacl.exceptions.CryptoError, ValueError):
        raise VerificationError("identity key is not a valid Ed25519 point") from None


def _curve_private(identity_seed: bytes) -> nacl.public.PrivateKey:
    return nacl.signing.SigningKey(identity_seed).to_curve25519_private_key()


def seal_package(package: bytes, identity_public_key: bytes,
                 key: bytes | None = None, *, inputs: InputBundle | bytes | None = None,
                 updates: tuple[SecretUpdate, ...] = ()) -> tuple[SealedPackage, bytes]:
    """Encrypt `package` (and its secrets and data) for the holder of `identity_public_key`.

    `inputs` is the plaintext bundle (encrypted here under the key) or, when a
    keep is handed on, the bytes already encrypted under it, copied verbatim
    with the owner's `updates` so the receiver can check every digest and
    signature itself. Returns the sealed record and the per-deployment key.
    """
    key = key or new_deployment_key()
    ciphertext = bytes(nacl.secret.SecretBox(key).encrypt(package))
    sealed_key = bytes(nacl.public.SealedBox(_curve_public(identity_public_key)).encrypt(key))
    fields: dict[str, object] = {"sealed_key": sealed_key, "ciphertext": ciphertext}
    if isinstance(inputs, InputBundle):
        fields["inputs"] = secretbox_encrypt(key, encode_bundle(inputs))
    elif inputs is not None:
        fields["inputs"] = inputs
    if updates:
        fields["updates"] = [u.to_fields() for u in updates]
    return SealedPackage.from_fields(fields), key


def open_sealed_key(sealed: SealedPackage, identity_seed: bytes) -> bytes:
    try:
        key = nacl.public.SealedBox(_curve_private(identity_seed)).decrypt(sealed.sealed_key)
    except nacl.exceptions.CryptoError:
        raise VerificationError("sealed key was not sealed to this agent's identity") from None
    if len(key) != nacl.secret.SecretBox.KEY_SIZE:
        raise VerificationError("sealed key has the wrong length")
    return bytes(key)


def open_package(sealed: SealedPackage, identity_seed: bytes) -> tuple[bytes, bytes]:
    """Return (package bytes, per-deployment key); VerificationError if not ours/tampered."""
    key = open_sealed_key(sealed, identity_seed)
    try:
        package = nacl.secret.SecretBox(key).decrypt(sealed.ciphertext)
    except nacl.exceptions.CryptoError:
        raise VerificationError("package ciphertext failed authentication") from None
    return bytes(package), key


def secretbox_encrypt(key: bytes, data: bytes) -> bytes:
    return bytes(nacl.secret.SecretBox(key).encrypt(data))


def secretbox_decrypt(key: bytes, data: bytes, what: str) -> bytes:
    try:
        return bytes(nacl.secret.SecretBox(key).decrypt(data))
    except nacl.exceptions.CryptoError:
        raise VerificationError(f"{what} failed authentication (tampered or wrong key)") from None


def open_inputs(sealed: SealedPackage, key: bytes) -> InputBundle | None:
    """The secrets and data of a sealed package (None if it carries none)."""
    if sealed.inputs is None:
        return None
    return decode_bundle(secretbox_decrypt(key, sealed.inputs, "sealed inputs"))


def seal_value(key: bytes, value: InputValue) -> bytes:
    """Encrypt one secret value (a rotation) under the per-deployment key."""
    return secretbox_encrypt(key, encode_value(value))


def open_update(key: bytes, update: SecretUpdate) -> InputValue:
    return decode_value(secretbox_decrypt(key, update.ciphertext,
                                          f"secret update for {update.name!r}"))
