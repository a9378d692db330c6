"""Signed deployments: what an owner asks an agent to run, and the sealed package.

Why a signed record: agents trust no operator, only the workload owner's
Ed25519 key. The owner signs the package digest, the manifest (resources,
args, env) and the appraisal policy together, so an agent (or a peer it
migrates to) can check that nothing was swapped without the owner online.
The package itself travels encrypted (SealedPackage) and is bound to the
deployment by its SHA-256 digest.

Sans-IO: no clock (callers pass `now`), randomness from a `random.Random`.
"""

from __future__ import annotations

import hashlib
import random
import re
import tomllib
from collections.abc import Collection
from typing import Any, ClassVar

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .errors import ProtocolError, VerificationError
from .migration.settings import MigrationSpec, parse_migration, spec_of
from .placement.spec import PlacementSpec, parse_placement_table
from .secrets import (
    BOX_OVERHEAD,
    MAX_DATA_FILES,
    MAX_INPUTS_CIPHERTEXT,
    MAX_SEALED_TOTAL,
    MAX_SECRETS,
    InputRef,
    SecretUpdate,
    check_refs,
    relative_path,
)
from .wire import Message, Spec, b, f, flag, mapping, message, rec, s, seq, u

MAX_PACKAGE = 16 * 1024 * 1024
"""Largest Wasm module accepted (bytes, after WAT compilation)."""
MAX_POLICY_TEXT = 64 * 1024
MAX_MESSAGE = 1024 * 1024
"""Largest message to/from a workload via keeps.call."""
SEALED_KEY_LEN = 32 + 48  # SealedBox overhead (ephemeral pk 32 + MAC 16) + 32-byte key
MIN_MEMORY = 64 * 1024
MAX_MEMORY = 4 * 1024 * 1024 * 1024
DEFAULT_MEMORY = 64 * 1024 * 1024
DEFAULT_FUEL = 2_000_000_000
DEFAULT_TIMEOUT_MS = 10_000
SIGNING_DOMAIN = b"keepmesh-deployment-v1\x00"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")


@message
class Manifest(Message):
    """What to run and within which limits (the `keepmesh.toml` fields that travel)."""

    TYPE: ClassVar[str] = ""
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "name": s(64),
        "args": seq(s(1024), 64),
        "env": mapping(s(128), s(4096), 64),
        "memory_limit": u(64),
        "fuel": u(63),
        "timeout_ms": u(32),
        "stateful": flag(),
        # [placement] (protocol/placement/spec.py); absent means one replica anywhere,
        # so deployments without it sign the same bytes as before.
        "placement": rec(PlacementSpec, optional=True),
        # [migration] (protocol/migration/settings.py): standbys, checkpoint_s; absent
        # means the defaults (1 standby, 5 s), signing the same bytes as before.
        "migration": rec(MigrationSpec, optional=True),
    }
    name: str
    args: tuple[str, ...]
    env: dict[str, str]
    memory_limit: int
    fuel: int
    timeout_ms: int
    stateful: bool
    placement: PlacementSpec | None = None
    migration: MigrationSpec | None = None

    def validate(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ProtocolError(f"manifest field 'name': {self.name[:64]!r} must match "
                                "[a-z0-9][a-z0-9._-]{0,63}")
        for key in self.env:
            if not _ENV_RE.match(key):
                raise ProtocolError(f"manifest field 'env': bad variable name {key[:40]!r}")
        if not MIN_MEMORY <= self.memory_limit <= MAX_MEMORY:
            raise ProtocolError(f"manifest field 'memory_limit': {self.memory_limit} outside "
                                f"[{MIN_MEMORY}, {MAX_MEMORY}]")
        if self.fuel < 1000:
            raise ProtocolError(f"manifest field 'fuel': {self.fuel} below minimum 1000")
        if not 10 <= self.timeout_ms <= 3_600_000:
            raise ProtocolError(f"manifest field 'timeout_ms': {self.timeout_ms} outside "
                                "[10, 3600000]")


@message
class Deployment(Message):
    """A package digest + manifest + policy, signed by the owner's Ed25519 key."""

    TYPE: ClassVar[str] = "keeps.deployment"
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "package_digest": b(exact=32),
        "package_size": u(32),
        "manifest": rec(Manifest),
        "policy": s(MAX_POLICY_TEXT, optional=True),
        "owner_key": b(exact=32),
        "created_at": f(0.0, 1e12),
        "nonce": b(exact=16),
        "signature": b(exact=64),
        # Names and salted digests only; the values travel in SealedPackage.inputs
        # (protocol/secrets.py). Absent when the workload declares none, so older
        # deployments sign the same bytes as before.
        "secrets": seq(rec(InputRef), MAX_SECRETS, optional=True),
        "data": seq(rec(InputRef), MAX_DATA_FILES, optional=True),
    }
    package_digest: bytes
    package_size: int
    manifest: Manifest
    policy: str | None
    owner_key: bytes
    created_at: float
    nonce: bytes
    signature: bytes
    secrets: tuple[InputRef, ...] | None = None
    data: tuple[InputRef, ...] | None = None

    def validate(self) -> None:
        if self.package_size == 0 or self.package_size > MAX_PACKAGE:
            raise ProtocolError(f"deployment field 'package_size': {self.package_size} "
                                f"outside [1, {MAX_PACKAGE}]")
        if self.secrets or self.data:
            check_refs(self.secrets or (), self.data or (), self.manifest.env)


@message
class SealedPackage(Message):
    """The package under a random per-deployment SecretBox key sealed to the keep."""

    TYPE: ClassVar[str] = "keeps.sealed_package"
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "sealed_key": b(exact=SEALED_KEY_LEN),
        "ciphertext": b(MAX_PACKAGE + BOX_OVERHEAD),
        # Secrets and data (SecretBox under the same key) and owner-signed rotations:
        # whoever reseals the key for a peer copies these verbatim, so they move with it.
        "inputs": b(MAX_INPUTS_CIPHERTEXT, optional=True),
        "updates": seq(rec(SecretUpdate), MAX_SECRETS, optional=True),
    }
    sealed_key: bytes
    ciphertext: bytes
    inputs: bytes | None = None
    updates: tuple[SecretUpdate, ...] | None = None

    def validate(self) -> None:
        total = len(self.ciphertext) + len(self.inputs or b"")
        if total > MAX_SEALED_TOTAL:
            raise ProtocolError(f"sealed module and inputs total {total} bytes, more than "
                                f"{MAX_SEALED_TOTAL}")
        if self.updates:
            names = [u.name for u in self.updates]
            if len(set(names)) != len(names):
                raise ProtocolError("sealed package carries two updates of one secret")


@message
class DeployRequest(Message):
    """Body of the `keeps.deploy` RPC."""

    TYPE: ClassVar[str] = "keeps.deploy_request"
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "deployment": rec(Deployment),
        "package": rec(SealedPackage),
        "wait_ms": u(32, optional=True),
        # the host's reservation from placement (protocol/placement), committed on arrival
        "lease": u(63, optional=True),
    }
    deployment: Deployment
    package: SealedPackage
    wait_ms: int | None = None
    lease: int | None = None


@message
class KeepRequest(Message):
    """Body of `keeps.logs` / `keeps.stop`: names one keep."""

    TYPE: ClassVar[str] = "keeps.keep_request"
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "keep": s(64),
        "tail": u(16, optional=True),
        "after": u(63, optional=True),  # keeps.logs: only lines with seq > after (logs -f)
    }
    keep: str
    tail: int | None = None
    after: int | None = None


@message
class CallRequest(Message):
    """Body of `keeps.call`: one message for a workload's `handle` export."""

    TYPE: ClassVar[str] = "keeps.call_request"
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "keep": s(64),
        "message": b(MAX_MESSAGE),
        # The keep's epoch as the sender knows it, and the signed migrate.location that
        # proves it (specs/migration.md §3): a copy at another epoch does not serve it.
        "epoch": u(63, optional=True),
        "location": b(4096, optional=True),
    }
    keep: str
    message: bytes
    epoch: int | None = None
    location: bytes | None = None


@message
class ListRequest(Message):
    """Body of `keeps.list` (no fields today; a record so extra keys are rejected)."""

    TYPE: ClassVar[str] = "keeps.list_request"
    SCHEMA: ClassVar[dict[str, Spec]] = {}


# ----------------------------------------------------------------- signing


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def deployment_signing_bytes(d: Deployment) -> bytes:
    """Domain-separated canonical msgpack of every field but the signature."""
    fields = d.to_fields()
    fields.pop("signature", None)
    packed: bytes = msgpack.packb(_canonical(fields), use_bin_type=True)
    return SIGNING_DOMAIN + packed


def deployment_id(d: Deployment) -> str:
    """Stable workload id: survives migration and restarts, differs per nonce."""
    return hashlib.sha256(deployment_signing_bytes(d)).hexdigest()[:32]


def package_digest(package: bytes) -> bytes:
    return hashlib.sha256(package).digest()


def make_deployment(manifest: Manifest, package: bytes, policy: str | None,
                    owner_seed: bytes, now: float, rng: random.Random, *,
                    secrets: tuple[InputRef, ...] = (),
                    data: tuple[InputRef, ...] = ()) -> Deployment:
    """Build and sign a deployment; `owner_seed` is the 32-byte Ed25519 seed.

    `secrets`/`data` are the refs from protocol.secrets.make_bundle (names and
    salted digests); the values themselves are never part of the record.
    """
    if len(package) == 0 or len(package) > MAX_PACKAGE:
        raise ProtocolError(f"package of {len(package)} bytes outside [1, {MAX_PACKAGE}]")
    if policy is not None and len(policy) > MAX_POLICY_TEXT:
        raise ProtocolError(f"policy text exceeds {MAX_POLICY_TEXT} characters")
    key = Ed25519PrivateKey.from_private_bytes(owner_seed)
    owner = key.public_key().public_bytes_raw()
    fields: dict[str, Any] = {
        "package_digest": package_digest(package), "package_size": len(package),
        "manifest": manifest.to_fields(), "policy": policy, "owner_key": owner,
        "created_at": float(now), "nonce": rng.randbytes(16), "signature": bytes(64)}
    if secrets:
        fields["secrets"] = [r.to_fields() for r in secrets]
    if data:
        fields["data"] = [r.to_fields() for r in data]
    unsigned = Deployment.from_fields(fields)
    fields["signature"] = key.sign(deployment_signing_bytes(unsigned))
    return Deployment.from_fields(fields)


def manifest_for(name: str, **overrides: Any) -> Manifest:
    """A Manifest with defaults, for a bare module deployed without keepmesh.toml."""
    fields: dict[str, Any] = {"name": name, "args": [], "env": {},
                              "memory_limit": DEFAULT_MEMORY, "fuel": DEFAULT_FUEL,
                              "timeout_ms": DEFAULT_TIMEOUT_MS, "stateful": False}
    fields.update(overrides)
    return Manifest.from_fields(fields, where="manifest")


def verify_deployment(d: Deployment, admitted_owners: Collection[bytes]) -> None:
    """Raise VerificationError unless `d` is signed by an admitted owner key."""
    if d.owner_key not in admitted_owners:
        raise VerificationError(f"owner key {d.owner_key.hex()[:16]}... is not admitted "
                                "by this agent")
    try:
        Ed25519PublicKey.from_public_bytes(d.owner_key).verify(
            d.signature, deployment_signing_bytes(d))
    except (InvalidSignature, ValueError):
        raise VerificationError("deployment signature does not verify") from None


def check_package(d: Deployment, package: bytes) -> None:
    """Raise VerificationError unless `package` is the one the owner signed."""
    if len(package) != d.package_size:
        raise VerificationError(f"package size {len(package)} != signed size {d.package_size}")
    if package_digest(package) != d.package_digest:
        raise VerificationError("package digest does not match the signed deployment")


# ------------------------------------------------------------ keepmesh.toml

# [secrets]/[data]: protocol.secrets.parse_inputs_toml; [placement]: protocol/placement/spec.py;
# [migration]: protocol/migration/settings.py
_TOML_KEYS = {"name", "module", "args", "env", "resources", "policy",
              "secrets", "data", "placement", "migration"}
_RESOURCE_KEYS = {"memory", "memory_limit", "fuel", "timeout_ms", "stateful"}
_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "ki": 1024, "m": 1024 ** 2, "mib": 1024 ** 2,
          "mi": 1024 ** 2, "g": 1024 ** 3, "gib": 1024 ** 3, "gi": 1024 ** 3}


def parse_size(value: object, field: str) -> int:
    """Accept 67108864 or "64MiB"/"64M"/"512KiB" (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d{1,12})\s*([A-Za-z]{0,3})\s*", value)
        if m and m.group(2).lower() in _UNITS:
            return int(m.group(1)) * _UNITS[m.group(2).lower()]
    raise ProtocolError(f"manifest field {field!r}: expected bytes as int or e.g. \"64MiB\"")


def parse_manifest_toml(text: str, source: str = "keepmesh.toml"
                        ) -> tuple[Manifest, str | None, str | None]:
    """Parse keepmesh.toml into (Manifest, module file name, policy file name).

    The module and policy names are local paths relative to the workload
    directory; they do not travel (the package digest and policy text do).
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProtocolError(f"{source}: invalid TOML: {err}") from None
    except RecursionError:  # tomllib recurses on nested arrays/tables
        raise ProtocolError(f"{source}: invalid TOML: nested too deeply") from None
    unknown = sorted(set(doc) - _TOML_KEYS)
    if unknown:
        raise ProtocolError(f"{source}: unknown key {unknown[0]!r}")

    def want(value: object, typ: type, field: str) -> Any:
        if not isinstance(value, typ) or isinstance(value, bool) != (typ is bool):
            raise ProtocolError(f"{source}: field {field!r}: expected {typ.__name__}")
        return value

    if "name" not in doc:
        raise ProtocolError(f"{source}: field 'name': missing")
    name = want(doc["name"], str, "name")
    module = want(doc["module"], str, "module") if "module" in doc else None
    policy = want(doc["policy"], str, "policy") if "policy" in doc else None
    if module is not None:
        relative_path(module, f"{source}: field 'module'")
    if policy is not None:
        relative_path(policy, f"{source}: field 'policy'")
    args = want(doc.get("args", []), list, "args")
    for i_, a in enumerate(args):
        want(a, str, f"args[{i_}]")
    env = want(doc.get("env", {}), dict, "env")
    for k, v in env.items():
        want(v, str, f"env.{k}")
    res = want(doc.get("resources", {}), dict, "resources")
    bad = sorted(set(res) - _RESOURCE_KEYS)
    if bad:
        raise ProtocolError(f"{source}: unknown key 'resources.{bad[0]}'")
    fields: dict[str, Any] = {"name": name, "args": args, "env": env}
    for key in ("memory", "memory_limit"):
        if key in res:
            fields["memory_limit"] = parse_size(res[key], f"resources.{key}")
    if "fuel" in res:
        fields["fuel"] = want(res["fuel"], int, "resources.fuel")
    if "timeout_ms" in res:
        fields["timeout_ms"] = want(res["timeout_ms"], int, "resources.timeout_ms")
    if "stateful" in res:
        fields["stateful"] = want(res["stateful"], bool, "resources.stateful")
    if "placement" in doc:
        fields["placement"] = parse_placement_table(doc["placement"], source).to_fields()
    if "migration" in doc:
        fields["migration"] = spec_of(parse_migration(doc["migration"], source)).to_fields()
    defaults = {"memory_limit": DEFAULT_MEMORY, "fuel": DEFAULT_FUEL,
                "timeout_ms": DEFAULT_TIMEOUT_MS, "stateful": False}
    for k, v in defaults.items():
        fields.setdefault(k, v)
    try:
        manifest = Manifest.from_fields(fields, where=source)
    except ProtocolError as err:
        raise ProtocolError(err.reason) from None
    return manifest, module, policy
