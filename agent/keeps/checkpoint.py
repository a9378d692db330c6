"""Keep checkpoints: a keep's durable key/value state, sealed to travel between hosts.

Why a format of its own: migration ships a keep's state to standbys that
store it unread and may restore it much later on another host. So a
checkpoint is encrypted and authenticated under the per-deployment key
(only a host that received that key sealed to its attested identity can
read it), and the header naming the keep, the checkpoint sequence number,
the epoch and the time it was taken is inside the ciphertext: a checkpoint
of one keep cannot be restored into another, and its seq/epoch cannot be
altered by a standby or the network. The state is taken between
invocations (the runtime's lock), so no call's writes are ever half in it.

Blob = SecretBox(deployment_key, msgpack {"v": 1, "keep", "seq", "epoch",
"taken_at", "state", "updates"?}) where "state" is `KVState.to_bytes()` and
"updates" the keep's owner-signed secret rotations (protocol/secrets.py), so a
secret rotated after the standby got the package still moves with the keep
(the receiver verifies each signature itself and applies only newer serials).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgpack
from keepmesh.protocol.errors import ProtocolError, VerificationError
from keepmesh.protocol.secrets import MAX_SECRETS, MAX_UPDATE_CIPHERTEXT, SecretUpdate

from .sealing import secretbox_decrypt, secretbox_encrypt
from .store import MAX_STATE, KVState

if TYPE_CHECKING:
    from keepmesh.protocol.deployment import Deployment, SealedPackage

    from .manager import Keep, KeepManager

FORMAT_VERSION = 1
MAX_CHECKPOINT = MAX_STATE + 2 * 1024 * 1024 + MAX_SECRETS * (MAX_UPDATE_CIPHERTEXT + 512)
"""Largest blob accepted (state bound plus framing and the MAC)."""


class CheckpointError(ProtocolError):
    """A checkpoint is malformed, for another keep, or cannot be taken/restored now."""


@dataclass(frozen=True)
class CheckpointInfo:
    keep: str
    seq: int
    epoch: int
    taken_at: float
    updates: tuple[SecretUpdate, ...] = ()


def seal_checkpoint(info: CheckpointInfo, state: bytes, deployment_key: bytes) -> bytes:
    """Encrypt `state` (KVState bytes) with its header under the deployment key."""
    if len(deployment_key) != 32:
        raise ValueError("deployment key must be 32 bytes")
    doc: dict[str, object] = {"v": FORMAT_VERSION, "keep": info.keep, "seq": info.seq,
                              "epoch": info.epoch, "taken_at": float(info.taken_at),
                              "state": state}
    if info.updates:
        doc["updates"] = [u.to_fields() for u in info.updates]
    payload: bytes = msgpack.packb(doc, use_bin_type=True)
    return secretbox_encrypt(deployment_key, payload)


def open_checkpoint(blob: bytes, deployment_key: bytes,
                    keep_id: str) -> tuple[CheckpointInfo, KVState]:
    """Decrypt, authenticate and check a checkpoint of `keep_id`; CheckpointError if not."""
    if len(blob) > MAX_CHECKPOINT:
        raise CheckpointError(f"checkpoint of {len(blob)} bytes exceeds {MAX_CHECKPOINT}")
    try:
        payload = secretbox_decrypt(deployment_key, blob, "checkpoint")
    except VerificationError as err:
        raise CheckpointError(err.reason) from None
    try:
        doc = msgpack.unpackb(payload, raw=False, strict_map_key=False,
                              max_bin_len=MAX_CHECKPOINT, max_map_len=16,
                              max_array_len=MAX_SECRETS)
    except Exception as err:  # msgpack raises many types on garbage
        raise CheckpointError(f"checkpoint: malformed ({type(err).__name__})") from None
    if not isinstance(doc, dict) or doc.get("v") != FORMAT_VERSION:
        raise CheckpointError("checkpoint: unsupported format")
    keep, seq, epoch = doc.get("keep"), doc.get("seq"), doc.get("epoch")
    taken_at, state = doc.get("taken_at"), doc.get("state")
    if not (isinstance(keep, str) and isinstance(seq, int) and isinstance(epoch, int)
            and isinstance(taken_at, float) and isinstance(state, bytes)
            and seq >= 0 and epoch >= 0):
        raise CheckpointError("checkpoint: malformed header")
    if keep != keep_id:
        raise CheckpointError(f"checkpoint is of keep {keep[:32]!r}, not {keep_id[:32]!r}")
    raw_updates = doc.get("updates", [])
    if not isinstance(raw_updates, list):
        raise CheckpointError("checkpoint: malformed secret updates")
    try:
        kv = KVState.from_bytes(state)
        updates = tuple(SecretUpdate.from_fields(u, where="checkpoint secret update")
                        for u in raw_updates)
    except ProtocolError as err:
        raise CheckpointError(f"checkpoint: {err.reason}") from None
    return CheckpointInfo(keep, seq, epoch, taken_at, updates), kv


def take_checkpoint(keep: Keep, seq: int, epoch: int, taken_at: float) -> bytes:
    """Checkpoint a keep's committed state. Blocking (waits for a running call): call it
    from a worker thread."""
    runtime = keep.runtime
    state = runtime.state_snapshot() if runtime is not None else keep.ctx.state.to_bytes()
    return seal_checkpoint(CheckpointInfo(keep.keep_id, seq, epoch, taken_at,
                                          keep.ctx.inputs.update_list()), state,
                           keep.deployment_key)


def restore_keep(manager: KeepManager, deployment: Deployment, sealed: SealedPackage,
                 blob: bytes | None) -> tuple[Keep, CheckpointInfo | None]:
    """Admit a deployment handed over by migration and load its checkpoint before it starts.

    Admission is the ordinary one (owner signature, sealed key, package digest,
    secrets), so a restore is never a back door. `blob` None starts with empty
    state (no checkpoint was taken yet). On a bad checkpoint the admitted keep
    is stopped before it ever runs (never silently started with empty state)
    and CheckpointError raised; it stays installed as stopped.
    """
    keep = manager.admit(deployment, sealed)
    if blob is None:
        return keep, None
    try:
        if keep.status != "created":
            raise CheckpointError("a checkpoint can only be restored before the keep starts")
        info, state = open_checkpoint(blob, keep.deployment_key, keep.keep_id)
        keep.ctx.state = state
        manager.store.save_state(keep.keep_id, state)
        for update in sorted(info.updates, key=lambda u: u.serial):
            if update.serial > keep.ctx.inputs.serial:  # older ones came with the package
                try:
                    manager.set_secret(update)
                except ProtocolError as err:
                    raise CheckpointError(f"checkpoint: {err.reason}") from None
    except (CheckpointError, OSError) as err:
        manager.run_stop(keep)
        if isinstance(err, OSError):
            raise CheckpointError(f"cannot store restored state: {err.strerror}") from None
        raise
    return keep, info
