"""Secrets and data files for keeps: what is signed, what is sealed, and the checks.

Why this shape: the host operator may read the signed deployment record
(`deployment.bin`), so it carries only each input's *name* and a *salted*
digest. The values travel encrypted under the per-deployment key K, the key
that is only ever sealed to an agent whose fresh evidence satisfied the
deployment's policy; after decryption, inside the attested agent, every
value is checked against its signed digest, so nothing can be swapped on the
way, and the digest alone tells an operator nothing (the 16-byte random salt
is inside the ciphertext, so a weak password cannot be guessed offline).

Rotation (`SecretUpdate`) is a record signed by the owner and encrypted
under the same K. The owner's CLI does not store K: it derives it from its
own signing seed and the deployment's digest (`derive_deployment_key`), so it
can re-seal a new value later, through any agent, without attesting again.

Sans-IO: no files, environment or clock here (callers pass values, `now`
and a `random.Random`); encryption itself happens in agent/keeps/sealing.py.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .errors import ProtocolError, VerificationError
from .wire import Message, Spec, b, flag, message, rec, s, seq, u

if TYPE_CHECKING:
    from .deployment import Deployment

MAX_SECRETS = 64
MAX_SECRET = 64 * 1024
"""Largest secret value (bytes)."""
MAX_DATA_FILES = 64
MAX_DATA_TOTAL = 16 * 1024 * 1024
"""All data files of one deployment together (bytes)."""
SALT_LEN = 16
BOX_OVERHEAD = 24 + 16  # SecretBox nonce + MAC
_RECORD_SLACK = 256  # msgpack framing per value (name, salt, headers)
MAX_INPUTS_PLAINTEXT = (MAX_SECRETS * (MAX_SECRET + _RECORD_SLACK)
                        + MAX_DATA_TOTAL + MAX_DATA_FILES * _RECORD_SLACK + 64)
MAX_INPUTS_CIPHERTEXT = MAX_INPUTS_PLAINTEXT + BOX_OVERHEAD
MAX_UPDATE_CIPHERTEXT = MAX_SECRET + _RECORD_SLACK + BOX_OVERHEAD
MAX_SEALED_TOTAL = 19 * 1024 * 1024
"""Sealed module + sealed inputs together. A whole SealedPackage must fit one RPC
body (24 MiB, protocol/rpc.py) with room for 64 rotations (≈ 4 MiB) and the
signed record; raising the RPC limit instead would raise every connection's
buffer budget in agent/transport. A 16 MiB data set fits beside a 3 MiB module."""
KEY_DOMAIN = b"keepmesh-deployment-key-v1\x00"
DIGEST_DOMAIN = b"keepmesh-input-v1\x00"
UPDATE_DOMAIN = b"keepmesh-secret-update-v1\x00"

SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
"""Secret names are valid environment variable names (as_env uses them as such)."""
DATA_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")
_KEEP_ID_RE = re.compile(r"^[0-9a-f]{32}\Z")


# ------------------------------------------------------------------ records


@message
class InputRef(Message):
    """What the signed deployment says about one secret or data file: name and digest only."""

    TYPE: ClassVar[str] = ""
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "name": s(64),
        "digest": b(exact=32),
        "as_env": flag(optional=True),
    }
    name: str
    digest: bytes
    as_env: bool | None = None


@message
class InputValue(Message):
    """One value inside the sealed bundle; the salt makes its public digest unguessable."""

    TYPE: ClassVar[str] = ""
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "name": s(64),
        "salt": b(exact=SALT_LEN),
        "value": b(MAX_DATA_TOTAL),
    }
    name: str
    salt: bytes
    value: bytes


@message
class InputBundle(Message):
    """The plaintext that is encrypted under K: every secret and data file of a deployment."""

    TYPE: ClassVar[str] = "keeps.inputs"
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "secrets": seq(rec(InputValue), MAX_SECRETS),
        "data": seq(rec(InputValue), MAX_DATA_FILES),
    }
    secrets: tuple[InputValue, ...]
    data: tuple[InputValue, ...]

    def validate(self) -> None:
        _unique((v.name for v in self.secrets), "secret")
        _unique((v.name for v in self.data), "data file")
        for v in self.secrets:
            check_secret_name(v.name)
            if len(v.value) > MAX_SECRET:
                raise ProtocolError(f"secret {v.name!r}: {len(v.value)} bytes exceeds "
                                    f"{MAX_SECRET}")
        total = 0
        for v in self.data:
            check_data_name(v.name)
            total += len(v.value)
        if total > MAX_DATA_TOTAL:
            raise ProtocolError(f"data files total {total} bytes, more than {MAX_DATA_TOTAL}")


@message
class SecretUpdate(Message):
    """Owner-signed replacement of one secret of a running keep, encrypted under K.

    `ciphertext` = SecretBox(K)(msgpack InputValue); `digest` is the salted
    digest of the new value; `serial` must exceed every serial the keep has
    accepted, so an old update cannot be replayed to roll a secret back.
    """

    TYPE: ClassVar[str] = "keeps.secret_update"
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "keep": s(32),
        "name": s(64),
        "serial": u(63),
        "digest": b(exact=32),
        "ciphertext": b(MAX_UPDATE_CIPHERTEXT),
        "signature": b(exact=64),
    }
    keep: str
    name: str
    serial: int
    digest: bytes
    ciphertext: bytes
    signature: bytes

    def validate(self) -> None:
        if not _KEEP_ID_RE.match(self.keep):
            raise ProtocolError(f"secret update: bad keep id {self.keep[:40]!r}")
        check_secret_name(self.name)
        if self.serial == 0:
            raise ProtocolError("secret update: serial must be at least 1")


@message
class SecretSetRequest(Message):
    """Body of the `keeps.secret_set` RPC."""

    TYPE: ClassVar[str] = "keeps.secret_set_request"
    SCHEMA: ClassVar[dict[str, Spec]] = {"update": rec(SecretUpdate)}
    update: SecretUpdate


# ------------------------------------------------------------------ names, refs


def _unique(names: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ProtocolError(f"{what} {name[:64]!r} appears twice")
        seen.add(name)


def check_secret_name(name: str) -> None:
    if not SECRET_NAME_RE.match(name):
        raise ProtocolError(f"secret name {name[:64]!r} must match [A-Za-z_][A-Za-z0-9_]{{0,63}}")


def check_data_name(name: str) -> None:
    if not DATA_NAME_RE.match(name):
        raise ProtocolError(f"data name {name[:64]!r} must match "
                            "[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def check_env_value(name: str, value: bytes) -> None:
    """A secret exposed as an environment variable must be UTF-8 text without NUL."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"secret {name!r}: as_env needs UTF-8 text") from None
    if b"\x00" in value:
        raise ProtocolError(f"secret {name!r}: as_env value contains a NUL byte")


def check_refs(secrets: Iterable[InputRef], data: Iterable[InputRef],
               env: Mapping[str, str]) -> None:
    """Cross-field checks of a deployment's input references (Deployment.validate)."""
    secrets, data = list(secrets), list(data)
    _unique((r.name for r in secrets), "secret")
    _unique((r.name for r in data), "data file")
    for r in secrets:
        check_secret_name(r.name)
        if r.as_env and r.name in env:
            raise ProtocolError(f"secret {r.name!r}: as_env collides with manifest env "
                                f"variable {r.name!r}")
    for r in data:
        check_data_name(r.name)
        if r.as_env:
            raise ProtocolError(f"data file {r.name!r}: as_env applies to secrets only")


def input_digest(kind: str, name: str, salt: bytes, value: bytes) -> bytes:
    """SHA-256 over domain, kind ("secret"/"data"), name, salt and value."""
    h = hashlib.sha256(DIGEST_DOMAIN)
    h.update(kind.encode() + b"\x00" + name.encode() + b"\x00")
    h.update(salt)
    h.update(value)
    return h.digest()


# ------------------------------------------------------------------ building (owner side)


def make_bundle(secrets: Iterable[tuple[str, bytes]], data: Iterable[tuple[str, bytes]],
                rng: random.Random, as_env: Iterable[str] = ()
                ) -> tuple[InputBundle, tuple[InputRef, ...], tuple[InputRef, ...]]:
    """Salt every value and return (bundle to seal, secret refs, data refs to sign)."""
    env_names = set(as_env)
    svals = [InputValue(name=n, salt=rng.randbytes(SALT_LEN), value=bytes(v))
             for n, v in secrets]
    dvals = [InputValue(name=n, salt=rng.randbytes(SALT_LEN), value=bytes(v))
             for n, v in data]
    if len(svals) > MAX_SECRETS:
        raise ProtocolError(f"{len(svals)} secrets, at most {MAX_SECRETS}")
    if len(dvals) > MAX_DATA_FILES:
        raise ProtocolError(f"{len(dvals)} data files, at most {MAX_DATA_FILES}")
    bundle = InputBundle(secrets=tuple(svals), data=tuple(dvals))
    bundle.validate()
    for v in svals:
        if v.name in env_names:
            check_env_value(v.name, v.value)
    srefs = tuple(InputRef(name=v.name, digest=input_digest("secret", v.name, v.salt, v.value),
                           as_env=True if v.name in env_names else None) for v in svals)
    drefs = tuple(InputRef(name=v.name, digest=input_digest("data", v.name, v.salt, v.value))
                  for v in dvals)
    return bundle, srefs, drefs


def derive_deployment_key(owner_seed: bytes, deployment_digest: bytes) -> bytes:
    """K for a deployment: HMAC-SHA256(HMAC-SHA256(seed, domain), SHA-256(signing bytes)).

    Deterministic so the owner can re-seal a rotated secret later from its key
    alone; a PRF output, so K reveals nothing about the seed and one
    deployment's K nothing about another's.
    """
    if len(owner_seed) != 32 or len(deployment_digest) != 32:
        raise ProtocolError("deployment key derivation needs a 32-byte seed and digest")
    root = hmac.new(owner_seed, KEY_DOMAIN, hashlib.sha256).digest()
    return hmac.new(root, deployment_digest, hashlib.sha256).digest()


def deployment_key_for(owner_seed: bytes, deployment: Deployment) -> bytes:
    """K of a signed deployment (its digest is the summary's `deployment` field)."""
    from .deployment import deployment_signing_bytes

    digest = hashlib.sha256(deployment_signing_bytes(deployment)).digest()
    return derive_deployment_key(owner_seed, digest)


def encode_bundle(bundle: InputBundle) -> bytes:
    out: bytes = msgpack.packb(bundle.to_fields(), use_bin_type=True)
    return out


def decode_bundle(data: bytes) -> InputBundle:
    if len(data) > MAX_INPUTS_PLAINTEXT:
        raise VerificationError("sealed inputs too large")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True,
                              max_bin_len=MAX_DATA_TOTAL, max_str_len=1024,
                              max_array_len=MAX_SECRETS + MAX_DATA_FILES, max_map_len=16)
    except Exception as err:  # msgpack raises many types on garbage
        raise VerificationError(f"sealed inputs are malformed: {type(err).__name__}") from None
    if isinstance(obj, dict):  # an absent list is an empty one
        obj.setdefault("secrets", [])
        obj.setdefault("data", [])
    try:
        return InputBundle.from_fields(obj, where="sealed inputs")
    except ProtocolError as err:
        raise VerificationError(err.reason) from None


def encode_value(value: InputValue) -> bytes:
    out: bytes = msgpack.packb(value.to_fields(), use_bin_type=True)
    return out


def decode_value(data: bytes) -> InputValue:
    if len(data) > MAX_SECRET + _RECORD_SLACK:
        raise VerificationError("secret update value too large")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, max_map_len=8)
        return InputValue.from_fields(obj, where="secret update value")
    except ProtocolError as err:
        raise VerificationError(err.reason) from None
    except Exception as err:
        raise VerificationError(f"secret update value is malformed: "
                                f"{type(err).__name__}") from None


def update_signing_bytes(update: SecretUpdate) -> bytes:
    fields = update.to_fields()
    fields.pop("signature", None)
    packed: bytes = msgpack.packb({k: fields[k] for k in sorted(fields)}, use_bin_type=True)
    return UPDATE_DOMAIN + packed


def make_secret_update(keep: str, name: str, serial: int, digest: bytes, ciphertext: bytes,
                       owner_seed: bytes) -> SecretUpdate:
    fields: dict[str, Any] = {"keep": keep, "name": name, "serial": serial, "digest": digest,
                              "ciphertext": ciphertext, "signature": bytes(64)}
    unsigned = SecretUpdate.from_fields(fields)
    fields["signature"] = Ed25519PrivateKey.from_private_bytes(owner_seed).sign(
        update_signing_bytes(unsigned))
    return SecretUpdate.from_fields(fields)


# ------------------------------------------------------------------ checks (keep side)


def check_bundle(deployment: Deployment, bundle: InputBundle | None) -> None:
    """Raise VerificationError unless `bundle` holds exactly the signed inputs.

    Reasons name the input but never contain a value.
    """
    srefs = deployment.secrets or ()
    drefs = deployment.data or ()
    if bundle is None:
        if srefs or drefs:
            raise VerificationError("deployment declares secrets or data but the package "
                                    "carries none")
        return
    for kind, refs, values in (("secret", srefs, bundle.secrets), ("data", drefs, bundle.data)):
        got = {v.name: v for v in values}
        want = {r.name: r for r in refs}
        extra = sorted(set(got) - set(want))
        if extra:
            raise VerificationError(f"{kind} {extra[0]!r} is not in the signed deployment")
        missing = sorted(set(want) - set(got))
        if missing:
            raise VerificationError(f"{kind} {missing[0]!r} is missing from the sealed inputs")
        for name, ref in want.items():
            v = got[name]
            if not hmac.compare_digest(input_digest(kind, name, v.salt, v.value), ref.digest):
                raise VerificationError(f"{kind} {name!r}: digest does not match the signed "
                                        "deployment")
            if ref.as_env:
                try:
                    check_env_value(name, v.value)
                except ProtocolError as err:
                    raise VerificationError(err.reason) from None


def verify_secret_update(update: SecretUpdate, deployment: Deployment, keep_id: str,
                         current_serial: int) -> None:
    """Owner signature, target keep, declared name and a serial newer than any accepted."""
    if update.keep != keep_id:
        raise VerificationError(f"secret update is for keep {update.keep}, not {keep_id}")
    names = {r.name for r in deployment.secrets or ()}
    if update.name not in names:
        raise VerificationError(f"secret {update.name!r} is not declared by the deployment")
    if update.serial <= current_serial:
        raise VerificationError(f"secret update serial {update.serial} is not newer than "
                                f"{current_serial} (replay?)")
    try:
        Ed25519PublicKey.from_public_bytes(deployment.owner_key).verify(
            update.signature, update_signing_bytes(update))
    except (InvalidSignature, ValueError):
        raise VerificationError("secret update signature does not verify with the "
                                "deployment's owner key") from None


def check_update_value(update: SecretUpdate, value: InputValue, deployment: Deployment) -> None:
    """After decryption: the value is the one signed, for the name signed, within bounds."""
    if value.name != update.name:
        raise VerificationError(f"secret update for {update.name!r} carries a value for "
                                f"{value.name[:64]!r}")
    if len(value.value) > MAX_SECRET:
        raise VerificationError(f"secret {update.name!r}: more than {MAX_SECRET} bytes")
    if not hmac.compare_digest(input_digest("secret", value.name, value.salt, value.value),
                               update.digest):
        raise VerificationError(f"secret {update.name!r}: digest does not match the signed "
                                "update")
    as_env = {r.name for r in deployment.secrets or () if r.as_env}
    if update.name in as_env:
        try:
            check_env_value(update.name, value.value)
        except ProtocolError as err:
            raise VerificationError(err.reason) from None


# ------------------------------------------------------------------ keepmesh.toml


@dataclass(frozen=True)
class SecretSource:
    """Where the deployer's CLI takes a secret from (exactly one of file/env)."""

    name: str
    file: str | None
    env: str | None
    as_env: bool


@dataclass(frozen=True)
class InputSources:
    secrets: tuple[SecretSource, ...]
    data: tuple[tuple[str, str], ...]  # (name, relative file)


_SECRET_KEYS = {"file", "env", "as_env"}
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")


def relative_path(value: str, where: str) -> str:
    """A file named in keepmesh.toml: relative, no `..`, bounded. Why here: every file a
    manifest names (module, policy, [secrets], [data]) follows this one rule; the reader
    (agent/keeps/package.py) also refuses symbolic links that lead out."""
    parts = value.replace("\\", "/").split("/")
    if not value or value.startswith("/") or ".." in parts or (len(value) > 1 and value[1] == ":"):
        raise ProtocolError(f"{where}: must be a relative path inside the workload directory")
    if len(value) > 1024:
        raise ProtocolError(f"{where}: path longer than 1024 characters")
    if "\x00" in value:
        raise ProtocolError(f"{where}: path contains a NUL character")
    return value


def parse_inputs_toml(text: str, source: str = "keepmesh.toml") -> InputSources:
    """The `[secrets]` and `[data]` tables of keepmesh.toml (values are read by the caller).

    ```
    [secrets]
    db_password = { file = "secrets/db.txt" }
    token = { env = "API_TOKEN", as_env = true }
    [data]
    words = "data/words.txt"          # or words = { file = "data/words.txt" }
    ```
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProtocolError(f"{source}: invalid TOML: {err}") from None
    except RecursionError:  # tomllib recurses on nested arrays/tables
        raise ProtocolError(f"{source}: invalid TOML: nested too deeply") from None
    sec = doc.get("secrets", {})
    dat = doc.get("data", {})
    if not isinstance(sec, dict):
        raise ProtocolError(f"{source}: field 'secrets': expected a table")
    if not isinstance(dat, dict):
        raise ProtocolError(f"{source}: field 'data': expected a table")
    if len(sec) > MAX_SECRETS:
        raise ProtocolError(f"{source}: {len(sec)} secrets, at most {MAX_SECRETS}")
    if len(dat) > MAX_DATA_FILES:
        raise ProtocolError(f"{source}: {len(dat)} data files, at most {MAX_DATA_FILES}")
    secrets: list[SecretSource] = []
    for name, spec in sec.items():
        where = f"{source}: secret {name[:64]!r}"
        try:
            check_secret_name(name)
        except ProtocolError as err:
            raise ProtocolError(f"{source}: {err.reason}") from None
        if not isinstance(spec, dict):
            raise ProtocolError(f"{where}: expected {{ file = \"...\" }} or {{ env = \"...\" }}")
        bad = sorted(set(spec) - _SECRET_KEYS)
        if bad:
            raise ProtocolError(f"{where}: unknown key {bad[0][:40]!r}")
        has_file, has_env = "file" in spec, "env" in spec
        if has_file == has_env:
            raise ProtocolError(f"{where}: needs exactly one of 'file' or 'env'")
        file_ = spec.get("file")
        env = spec.get("env")
        as_env = spec.get("as_env", False)
        if has_file and not isinstance(file_, str):
            raise ProtocolError(f"{where}: field 'file': expected str")
        if has_env and (not isinstance(env, str) or not _ENV_NAME_RE.match(env)):
            raise ProtocolError(f"{where}: field 'env': expected an environment variable name")
        if not isinstance(as_env, bool):
            raise ProtocolError(f"{where}: field 'as_env': expected bool")
        if isinstance(file_, str):
            relative_path(file_, f"{where}: field 'file'")
        secrets.append(SecretSource(name=name, file=file_ if has_file else None,
                                    env=env if has_env else None, as_env=as_env))
    data: list[tuple[str, str]] = []
    for name, spec in dat.items():
        where = f"{source}: data {name[:64]!r}"
        try:
            check_data_name(name)
        except ProtocolError as err:
            raise ProtocolError(f"{source}: {err.reason}") from None
        if isinstance(spec, dict):
            bad = sorted(set(spec) - {"file"})
            if bad:
                raise ProtocolError(f"{where}: unknown key {bad[0][:40]!r}")
            spec = spec.get("file")
        if not isinstance(spec, str):
            raise ProtocolError(f"{where}: expected a file path or {{ file = \"...\" }}")
        data.append((name, relative_path(spec, f"{where}: file")))
    env_vars = doc.get("env", {})
    if isinstance(env_vars, dict):
        for s_ in secrets:
            if s_.as_env and s_.name in env_vars:
                raise ProtocolError(f"{source}: secret {s_.name!r}: as_env collides with "
                                    f"[env] variable {s_.name!r}")
    return InputSources(secrets=tuple(secrets), data=tuple(data))
