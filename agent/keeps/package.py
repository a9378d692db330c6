"""Workload packages: a WASI preview-1 module plus keepmesh.toml, checked before sending.

Why validate on the deployer's side: a malformed manifest or module must be
refused with a one-line reason before a connection is even opened, and the
package digest the owner signs must be over the exact bytes the keep runs
(WAT text is compiled to a binary module here, so digests are of binaries).
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Mapping
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
from keepmesh.protocol.secrets import (
    BOX_OVERHEAD,
    MAX_DATA_TOTAL,
    MAX_SEALED_TOTAL,
    MAX_SECRET,
    InputBundle,
    InputRef,
    InputSources,
    encode_bundle,
    make_bundle,
    parse_inputs_toml,
)

from keepmesh.files import read_at_most

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
    inputs: InputBundle | None = None
    """Secrets and data values (plaintext, only in the deployer's memory until sealed)."""
    secret_refs: tuple[InputRef, ...] = ()
    data_refs: tuple[InputRef, ...] = ()

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
    """A file the user named (`deploy FILE`, `--policy FILE`, the manifest itself): bounded,
    and a FIFO nothing writes to is refused rather than waited on (keepmesh.files)."""
    try:
        data = read_at_most(path, limit)
    except (OSError, ValueError) as err:
        raise PackageError(f"{path}: cannot read {what}: "
                           f"{getattr(err, 'strerror', None) or err}") from None
    if len(data) > limit:
        raise PackageError(f"{path}: {what} is more than {limit} bytes")
    return data


def read_policy_text(path: Path) -> str:
    return _policy_text(_read(path, MAX_POLICY_TEXT, "policy"), path)


def _policy_text(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PackageError(f"{path}: policy is not UTF-8") from None


def _default_name(path: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in path.stem.lower())
    return (stem.lstrip("._-") or "workload")[:64]


def load_workload(path: Path, policy_path: Path | None = None, *,
                  rng: random.Random | None = None,
                  environ: Mapping[bytes, bytes] | None = None) -> Workload:
    """Load a workload directory (with keepmesh.toml) or a single .wasm/.wat file.

    `[secrets]` and `[data]` are read here too (files relative to the
    directory, variables from `environ`, default the process environment) and
    salted with `rng`, so every missing or oversized input fails before any
    connection is opened.
    """
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except OSError as err:  # a name too long for the filesystem, a loop, no permission...
        raise PackageError(f"{str(path)[:120]}: cannot read the workload: "
                           f"{err.strerror or type(err).__name__}") from None
    if is_dir:
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
            module = module_binary(_read(module_path, _MAX_WAT, "module"), str(module_path))
        else:  # named in the manifest: relative (checked in parsing) and no link out
            module_path = path / module_name
            module = module_binary(_read_input(path, module_name, _MAX_WAT,
                                               f"{manifest_path}: field 'module'"),
                                   str(module_path))
        if policy_path is None and policy_name is not None:
            policy_text: str | None = _policy_text(
                _read_input(path, policy_name, MAX_POLICY_TEXT,
                            f"{manifest_path}: field 'policy'"), path / policy_name)
        else:
            policy_text = read_policy_text(policy_path) if policy_path is not None else None
    elif is_file:
        manifest = manifest_for(_default_name(path))
        module = module_binary(_read(path, _MAX_WAT, "module"), str(path))
        policy_text = read_policy_text(policy_path) if policy_path is not None else None
    else:
        raise PackageError(f"{path}: no such workload file or directory")
    workload = Workload(manifest=manifest, module=module, policy_text=policy_text, source=path)
    if is_dir:
        try:
            sources = parse_inputs_toml(text, str(manifest_path))
        except ProtocolError as err:
            raise PackageError(err.reason) from None
        if sources.secrets or sources.data:
            bundle, srefs, drefs = read_inputs(path, sources, str(manifest_path),
                                               rng or random.SystemRandom(), environ)
            sealed = len(module) + len(encode_bundle(bundle)) + 2 * BOX_OVERHEAD
            if sealed > MAX_SEALED_TOTAL:
                raise PackageError(f"{manifest_path}: module, secrets and data together are "
                                   f"{sealed} bytes sealed, more than {MAX_SEALED_TOTAL}")
            workload = dataclasses.replace(workload, inputs=bundle, secret_refs=srefs,
                                           data_refs=drefs)
    return workload


def read_inputs(root: Path, sources: InputSources, source: str, rng: random.Random,
                environ: Mapping[bytes, bytes] | None = None
                ) -> tuple[InputBundle, tuple[InputRef, ...], tuple[InputRef, ...]]:
    """Read every [secrets] file or variable and [data] file; one line naming the first
    that is missing or too big (never its value)."""
    env = os.environb if environ is None else environ
    secrets: list[tuple[str, bytes]] = []
    for src in sources.secrets:
        where = f"{source}: secret {src.name!r}"
        if src.env is not None:
            value = env.get(src.env.encode())
            if value is None:
                raise PackageError(f"{where}: environment variable {src.env} is not set")
            if len(value) > MAX_SECRET:
                raise PackageError(f"{where}: environment variable {src.env} is "
                                   f"{len(value)} bytes, more than {MAX_SECRET}")
        else:
            assert src.file is not None
            value = _read_input(root, src.file, MAX_SECRET, f"{where}: file {src.file}")
        secrets.append((src.name, value))
    data: list[tuple[str, bytes]] = []
    total = 0
    for name, rel in sources.data:
        value = _read_input(root, rel, MAX_DATA_TOTAL - total, f"{source}: data {name!r}: "
                            f"file {rel}", total=True)
        total += len(value)
        data.append((name, value))
    try:
        made: tuple[InputBundle, tuple[InputRef, ...], tuple[InputRef, ...]] = make_bundle(
            secrets, data, rng, as_env=[s.name for s in sources.secrets if s.as_env])
    except ProtocolError as err:
        raise PackageError(f"{source}: {err.reason}") from None
    return made


def read_regular_file(path: Path, limit: int, too_big: str | None = None) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, or PackageError with what is
    wrong ("no such file", "not a regular file", the size, the OS reason), never content
    (keepmesh.files.read_at_most: a FIFO or device is refused, not waited on or read
    without end)."""
    try:
        data = read_at_most(path, limit, regular_only=True)
    except FileNotFoundError:
        raise PackageError("no such file") from None
    except (OSError, ValueError) as err:  # ValueError: a NUL in the path
        raise PackageError(f"{getattr(err, 'strerror', None) or err}") from None
    if len(data) > limit:
        raise PackageError(too_big or f"is more than {limit} bytes")
    return data


def _read_input(root: Path, rel: str, limit: int, where: str, total: bool = False) -> bytes:
    """A [secrets] or [data] file: a regular file that stays inside the workload directory
    once symbolic links are followed (a link may point within it, not out of it)."""
    base = os.path.realpath(root)
    real = os.path.realpath(root / rel)
    if os.path.commonpath([base, real]) != base:
        raise PackageError(f"{where}: a symbolic link leads outside the workload directory")
    try:
        return read_regular_file(Path(real), limit, f"brings the data files over "
                                 f"{MAX_DATA_TOTAL} bytes in all" if total else None)
    except PackageError as err:
        raise PackageError(f"{where}: {err.reason}") from None
