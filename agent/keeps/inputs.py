"""A keep's secrets and data inside the attested agent: opened, checked, rotated, carried.

Why one object: the same checks apply when a keep is admitted from the
owner, restored after a restart, or handed on to a replica or standby: the
sealed bytes are decrypted with the per-deployment key, every value must
match the digest the owner signed (protocol/secrets.py), and each rotation
must carry the owner's signature and a newer serial. The sealed form (the
original ciphertext and the owner's updates) is kept as it arrived, so
handing the keep on copies it verbatim and the receiver can check it all
again without trusting us.

Values live only in this process's memory. Nothing here logs a value, and
`repr` shows names only, so an exception or a debug print cannot leak one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import msgpack
from keepmesh.protocol.deployment import Deployment
from keepmesh.protocol.errors import ProtocolError, VerificationError
from keepmesh.protocol.secrets import (
    MAX_INPUTS_CIPHERTEXT,
    MAX_SECRETS,
    SecretUpdate,
    check_bundle,
    check_update_value,
    decode_bundle,
    verify_secret_update,
)

from .sealing import open_update, secretbox_decrypt

RECORD_VERSION = 1


class KeepInputs:
    """Secrets and data files of one keep; thread-safe (rotation vs. a running invocation)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.secrets: dict[str, bytes] = {}
        self.data: dict[str, bytes] = {}
        self.as_env: frozenset[str] = frozenset()
        self.serial = 0
        self.version = 0
        """Bumped on every rotation, so the runtime knows to refresh WASI env."""
        self.sealed: bytes | None = None
        self.updates: dict[str, SecretUpdate] = {}

    def __repr__(self) -> str:
        return (f"KeepInputs(secrets={sorted(self.secrets)}, data={sorted(self.data)}, "
                f"serial={self.serial})")

    # ------------------------------------------------------------ opening
    @classmethod
    def open(cls, deployment: Deployment, keep_id: str, key: bytes, sealed: bytes | None,
             updates: Iterable[SecretUpdate] = ()) -> KeepInputs:
        """Decrypt and check everything; VerificationError (one line, no value) if not."""
        inputs = cls()
        bundle = None
        if sealed is not None:
            bundle = decode_bundle(secretbox_decrypt(key, sealed, "sealed inputs"))
        check_bundle(deployment, bundle)
        inputs.sealed = sealed
        if bundle is not None:
            inputs.secrets = {v.name: v.value for v in bundle.secrets}
            inputs.data = {v.name: v.value for v in bundle.data}
        inputs.as_env = frozenset(r.name for r in deployment.secrets or () if r.as_env)
        for update in sorted(updates, key=lambda u: u.serial):
            inputs.rotate(update, deployment, keep_id, key)
        return inputs

    # ------------------------------------------------------------ rotation
    def check(self, update: SecretUpdate, deployment: Deployment, keep_id: str,
              key: bytes) -> bytes:
        """Verify a rotation without applying it; returns the new value."""
        verify_secret_update(update, deployment, keep_id, self.serial)
        value = open_update(key, update)
        check_update_value(update, value, deployment)
        plain: bytes = value.value
        return plain

    def apply(self, update: SecretUpdate, value: bytes) -> None:
        """Install a value `check` returned (the caller persisted the record first)."""
        with self._lock:
            if update.serial <= self.serial:
                raise VerificationError(f"secret update serial {update.serial} is not newer "
                                        f"than {self.serial} (replay?)")
            self.secrets[update.name] = value
            self.updates[update.name] = update
            self.serial = update.serial
            self.version += 1

    def rotate(self, update: SecretUpdate, deployment: Deployment, keep_id: str,
               key: bytes) -> None:
        self.apply(update, self.check(update, deployment, keep_id, key))

    # ------------------------------------------------------------ reading (host API)
    def secret(self, name: str) -> bytes | None:
        return self.secrets.get(name)

    def data_file(self, name: str) -> bytes | None:
        return self.data.get(name)

    def env_items(self) -> list[tuple[str, str]]:
        """(name, value) of the secrets marked as_env (values were checked to be UTF-8)."""
        with self._lock:
            return [(n, self.secrets[n].decode("utf-8")) for n in sorted(self.as_env)
                    if n in self.secrets]

    # ------------------------------------------------------------ carrying
    def update_list(self, extra: SecretUpdate | None = None) -> tuple[SecretUpdate, ...]:
        """The owner's current rotations (latest per name), oldest first."""
        with self._lock:
            latest = dict(self.updates)
        if extra is not None:
            latest[extra.name] = extra
        return tuple(sorted(latest.values(), key=lambda u: u.serial))

    def record(self, extra: SecretUpdate | None = None) -> bytes:
        """What the store keeps at rest: the sealed bytes and updates, never a value."""
        out: bytes = msgpack.packb({
            "v": RECORD_VERSION, "inputs": self.sealed,
            "updates": [u.to_fields() for u in self.update_list(extra)]}, use_bin_type=True)
        return out


def parse_record(blob: bytes) -> tuple[bytes | None, tuple[SecretUpdate, ...]]:
    """Inverse of KeepInputs.record (the blob was authenticated by the storage key)."""
    try:
        obj = msgpack.unpackb(blob, raw=False, strict_map_key=True,
                              max_bin_len=MAX_INPUTS_CIPHERTEXT, max_array_len=MAX_SECRETS)
    except Exception as err:
        raise ProtocolError(f"malformed inputs record: {type(err).__name__}") from None
    if not isinstance(obj, dict) or obj.get("v") != RECORD_VERSION:
        raise ProtocolError("inputs record: unsupported version")
    sealed = obj.get("inputs")
    updates = obj.get("updates")
    if (sealed is not None and not isinstance(sealed, bytes)) or not isinstance(updates, list):
        raise ProtocolError("inputs record: wrong field types")
    return sealed, tuple(SecretUpdate.from_fields(u, where="stored secret update")
                         for u in updates)
