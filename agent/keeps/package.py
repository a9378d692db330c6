"""Workload packages: a WASI preview-1 module plus keepmesh.toml, checked before sending.

Why validate on the deployer's side: a malformed manifest or module must be
refused with a one-line reason before a connection is even opened, and the
package digest the owner signs must be over the exact bytes the keep runs
(WAT text is compiled to a binary module here, so digests are of binaries).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import wasmtime
from keepmesh.protocol.deployment import (
    MAX_PACKAGE,
    MAX_POLICY_TEXT,
    Manifest,
    manifest_for,
    package_digest,
    parse_manifest_toml,
)
from keepmesh.protocol.errors import ProtocolError

MANIFEST_NAME = "keepmesh.toml"
_MAX_WAT = 4 * MAX_PACKAGE
_VALIDATION_ENGINE: wasmtime.Engine | None = None


class PackageError(ProtocolError):
    """The workload on disk is malformed (one-line reason naming the field or module error)."""


@dataclasses.dataclass(frozen=True)
class Workload:
    manifest: Manifest
    module: bytes
    policy_text: str | None
    source: Path

    @property
    def digest(self) -> bytes:
        return package_digest(self.module)


def _engine() -> wasmtime.Engine:
    global _VALIDATION_ENGINE
    if _VALIDATION_ENGINE is None:
        _VALIDATION_ENGINE = wasmtime.Engine()
    return _VALIDATION_ENGINE


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.lower().startswith("error:"):
            return line[:300]
    return text.splitlines()[0][:300] if text else type(err).__name__


def module_binary(data: bytes, source: str) -> bytes:
    """Return a validated binary module from binary or WAT text bytes."""
    if data[:4] != b"\x00asm":
        if len(data) > _MAX_WAT:
            raise PackageError(f"{source}: WAT text of {len(data)} bytes exceeds {_MAX_WAT}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise PackageError(f"{source}: neither a Wasm binary nor UTF-8 WAT text") from None
        try:
            data = bytes(wasmtime.wat2wasm(text))
        except Exception as err:  # wasmtime raises WasmtimeError with a multi-line message
            raise PackageError(f"{source}: invalid WAT: {_first_line(err)}") from None
    if len(data) > MAX_PACKAGE:
        raise PackageError(f"{source}: module of {len(data)} bytes exceeds {MAX_PACKAGE}")
    try:
        wasmtime.Module.validate(_engine(), data)
    except Exception as err:
        raise PackageError(f"{source}: invalid module: {_first_line(err)}") from None
    return data


def _read(path: Path, limit: int, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise PackageError(f"{path}: {what} of {size} bytes exceeds {limit}")
        return path.read_bytes()
    except OSError as err:
        raise PackageError(f"{path}: cannot read {what}: {err.strerror}") from None


def read_policy_text(path: Path) -> str:
    data = _read(path, MAX_POLICY_TEXT, "policy")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PackageError(f"{path}: policy is not UTF-8") from None


def _default_name(path: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in path.stem.lower())
    return (stem.lstrip("._-") or "workload")[:64]


def load_workload(path: Path, policy_path: Path | None = None) -> Workload:
    """Load a workload directory (with keepmesh.toml) or a single .wasm/.wat file."""
    if path.is_dir():
        manifest_path = path / MANIFEST_NAME
        raw = _read(manifest_path, 64 * 1024, "manifest")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PackageError(f"{manifest_path}: not UTF-8") from None
        try:
            manifest, module_name, policy_name = parse_manifest_toml(text, str(manifest_path))
        except PackageError:
            raise
        except ProtocolError as err:
            raise PackageError(err.reason) from None
        if module_name is None:
            candidates = sorted(p for p in path.iterdir()
                                if p.suffix in (".wasm", ".wat") and p.is_file())
            if len(candidates) != 1:
                raise PackageError(f"{manifest_path}: field 'module': missing, and the directory "
                                   f"has {len(candidates)} .wasm/.wat files")
            module_path = candidates[0]
        else:
            module_path = path / module_name
            if Path(module_name).is_absolute() or ".." in Path(module_name).parts:
                raise PackageError(f"{manifest_path}: field 'module': must be a relative path "
                                   "inside the workload directory")
        if policy_path is None and policy_name is not None:
            policy_path = path / policy_name
    elif path.is_file():
        module_path = path
        manifest = manifest_for(_default_name(path))
    else:
        raise PackageError(f"{path}: no such workload file or directory")
    module = module_binary(_read(module_path, _MAX_WAT, "module"), str(module_path))
    policy_text = read_policy_text(policy_path) if policy_path is not None else None
    return Workload(manifest=manifest, module=module, policy_text=policy_text, source=path)
