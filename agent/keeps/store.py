"""Keep storage at rest: packages, state and status encrypted under a local storage key.

Honest scope: without TEE sealing keys the storage key lives in the data
directory (0600). Encryption therefore protects against copies of the data
dir that do not include the key file (backups, a stolen disk image taken
without it, another tenant reading a shared volume), and authenticates every
file (tampering is detected), but not against a host that can read the key
file. A TEE backend with a sealing key should wrap `storage.key`.

Writes are atomic (tmp file, fsync, rename, fsync dir), so a crash leaves the
old or the new state, never a torn one.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
from keepmesh.protocol.deployment import Deployment
from keepmesh.protocol.errors import ProtocolError

from .sealing import secretbox_decrypt, secretbox_encrypt

MAX_KEY = 256
MAX_VALUE = 64 * 1024
MAX_KEYS = 10_000
MAX_STATE = 16 * 1024 * 1024
CHECKPOINT_VERSION = 1
_ID_RE = re.compile(r"^[0-9a-f]{32}\Z")


class StateError(ProtocolError):
    """A state operation exceeded its bounds or a blob was malformed."""


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class KVState:
    """A workload's durable key/value map, bounded so a workload cannot fill the disk."""

    def __init__(self, items: dict[bytes, bytes] | None = None) -> None:
        self._items: dict[bytes, bytes] = {}
        self._size = 0
        for k, v in (items or {}).items():
            self.put(k, v)
        self.dirty = False

    def get(self, key: bytes) -> bytes | None:
        return self._items.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        if len(key) == 0 or len(key) > MAX_KEY:
            raise StateError(f"state key length {len(key)} outside [1, {MAX_KEY}]")
        if len(value) > MAX_VALUE:
            raise StateError(f"state value of {len(value)} bytes exceeds {MAX_VALUE}")
        old = self._items.get(key)
        grow = len(key) + len(value) - (0 if old is None else len(key) + len(old))
        if old is None and len(self._items) >= MAX_KEYS:
            raise StateError(f"state holds the maximum {MAX_KEYS} keys")
        if self._size + grow > MAX_STATE:
            raise StateError(f"state would exceed {MAX_STATE} bytes")
        self._items[key] = bytes(value)
        self._size += grow
        self.dirty = True

    def delete(self, key: bytes) -> bool:
        old = self._items.pop(key, None)
        if old is None:
            return False
        self._size -= len(key) + len(old)
        self.dirty = True
        return True

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self._items.items())

    def to_bytes(self) -> bytes:
        out: bytes = msgpack.packb({"v": CHECKPOINT_VERSION, "kv": self._items},
                                   use_bin_type=True)
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> KVState:
        if len(data) > MAX_STATE + 1024 * 1024:
            raise StateError("state blob too large")
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=False,
                                  max_bin_len=MAX_STATE, max_map_len=MAX_KEYS + 1)
        except Exception as err:
            raise StateError(f"malformed state blob: {type(err).__name__}") from None
        if not isinstance(obj, dict) or obj.get("v") != CHECKPOINT_VERSION:
            raise StateError("state blob: unsupported version")
        kv = obj.get("kv")
        if not isinstance(kv, dict):
            raise StateError("state blob: 'kv' is not a map")
        for k, v in kv.items():
            if not isinstance(k, bytes) or not isinstance(v, bytes):
                raise StateError("state blob: keys and values must be bytes")
        state = cls(kv)
        state.dirty = False
        return state


class KeepStore:
    """One directory per keep under `<data_dir>/keeps`; all but the signed record encrypted."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "keeps"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._key = self._load_or_create_key()

    def _load_or_create_key(self) -> bytes:
        path = self.root / "storage.key"
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            key = secrets.token_bytes(32)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                key = path.read_bytes()
            else:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(key)
                    fh.flush()
                    os.fsync(fh.fileno())
        if len(key) != 32:
            raise StateError(f"{path}: storage key must be 32 bytes")
        return key

    def _dir(self, keep_id: str) -> Path:
        if not _ID_RE.match(keep_id):
            raise StateError(f"bad keep id {keep_id[:40]!r}")
        return self.root / keep_id

    def exists(self, keep_id: str) -> bool:
        return (self._dir(keep_id) / "deployment.bin").exists()

    def remove(self, keep_id: str) -> None:
        """Delete a keep's files (migration moved it away; it may come back later)."""
        d = self._dir(keep_id)
        (d / "deployment.bin").unlink(missing_ok=True)  # first: no longer a complete install
        shutil.rmtree(d, ignore_errors=True)

    def keep_ids(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()
                      if _ID_RE.match(p.name) and (p / "deployment.bin").exists())

    def _put(self, keep_id: str, name: str, data: bytes) -> None:
        atomic_write(self._dir(keep_id) / name, secretbox_encrypt(self._key, data))

    def _get(self, keep_id: str, name: str) -> bytes | None:
        path = self._dir(keep_id) / name
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        return secretbox_decrypt(self._key, blob, f"{keep_id}/{name}")

    def install(self, keep_id: str, deployment: Deployment, module: bytes,
                deployment_key: bytes, inputs: bytes | None = None) -> None:
        d = self._dir(keep_id)
        d.mkdir(mode=0o700, exist_ok=True)
        self._put(keep_id, "module.enc", module)
        self._put(keep_id, "dkey.enc", deployment_key)
        if inputs is not None:
            self.save_inputs(keep_id, inputs)
        # Written last: its presence marks a complete install.
        atomic_write(d / "deployment.bin", msgpack.packb(deployment.to_fields(),
                                                         use_bin_type=True))

    def load(self, keep_id: str) -> tuple[Deployment, bytes, bytes]:
        d = self._dir(keep_id)
        raw = (d / "deployment.bin").read_bytes()
        if len(raw) > 2 * 1024 * 1024:
            raise StateError(f"keep {keep_id}: deployment record too large")
        try:
            fields = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        except Exception as err:
            raise StateError(f"keep {keep_id}: malformed deployment record: "
                             f"{type(err).__name__}") from None
        msg = Deployment.from_fields(fields)
        module = self._get(keep_id, "module.enc")
        dkey = self._get(keep_id, "dkey.enc")
        if module is None or dkey is None:
            raise StateError(f"keep {keep_id}: incomplete install")
        return msg, module, dkey

    def save_inputs(self, keep_id: str, record: bytes) -> None:
        """Secrets and data at rest: still under the deployment key inside (the record
        holds the sealed bytes as they arrived), and under the storage key outside."""
        self._put(keep_id, "inputs.enc", record)

    def load_inputs(self, keep_id: str) -> bytes | None:
        return self._get(keep_id, "inputs.enc")

    def save_state(self, keep_id: str, state: KVState) -> None:
        self._put(keep_id, "state.enc", state.to_bytes())
        state.dirty = False

    def load_state(self, keep_id: str) -> KVState:
        blob = self._get(keep_id, "state.enc")
        return KVState() if blob is None else KVState.from_bytes(blob)

    def save_meta(self, keep_id: str, meta: dict[str, Any]) -> None:
        self._put(keep_id, "meta.enc", msgpack.packb(meta, use_bin_type=True))

    def load_meta(self, keep_id: str) -> dict[str, Any]:
        blob = self._get(keep_id, "meta.enc")
        if blob is None:
            return {}
        try:
            meta = msgpack.unpackb(blob, raw=False)
        except Exception:
            raise StateError(f"keep {keep_id}: malformed meta") from None
        return meta if isinstance(meta, dict) else {}


def export_checkpoint(state: KVState, deployment_key: bytes) -> bytes:
    """Seal the state under the per-deployment key, so only a keep that was given
    that key (after attestation) can import it on migration."""
    return secretbox_encrypt(deployment_key, state.to_bytes())


def import_checkpoint(blob: bytes, deployment_key: bytes) -> KVState:
    return KVState.from_bytes(secretbox_decrypt(deployment_key, blob, "checkpoint"))
