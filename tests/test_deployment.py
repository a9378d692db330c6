"""Signed deployments and keepmesh.toml: pass cases and each way they must fail."""

from __future__ import annotations

import random

import nacl.signing
import pytest
from keepmesh.protocol.deployment import (
    Deployment,
    DeployRequest,
    check_package,
    deployment_id,
    make_deployment,
    manifest_for,
    parse_manifest_toml,
    verify_deployment,
)
from keepmesh.protocol.errors import ProtocolError, VerificationError

OWNER = bytes(range(32))
OTHER = bytes(range(1, 33))
PKG = b"\x00asm\x01\x00\x00\x00"


def pub(seed: bytes) -> bytes:
    return bytes(nacl.signing.SigningKey(seed).verify_key.encode())


def deployment(**kw: object) -> Deployment:
    return make_deployment(manifest_for("demo", **kw), PKG, "allow_sim = true\n", OWNER,
                           1_700_000_000.0, random.Random(1))


def test_sign_verify_roundtrip() -> None:
    d = deployment()
    verify_deployment(d, [pub(OWNER)])
    again = Deployment.from_fields(d.to_fields())
    verify_deployment(again, [pub(OWNER)])
    assert deployment_id(again) == deployment_id(d)
    check_package(d, PKG)


def test_owner_not_admitted() -> None:
    with pytest.raises(VerificationError, match="not admitted"):
        verify_deployment(deployment(), [pub(OTHER)])


@pytest.mark.parametrize("field", ["package_digest", "policy", "manifest", "nonce",
                                   "signature", "created_at"])
def test_any_tampered_field_fails(field: str) -> None:
    fields = deployment().to_fields()
    if field == "manifest":
        fields["manifest"]["fuel"] += 1
    elif field == "policy":
        fields["policy"] = "allow_sim = false\n"
    elif field == "created_at":
        fields["created_at"] += 1.0
    else:
        raw = bytearray(fields[field])
        raw[0] ^= 1
        fields[field] = bytes(raw)
    with pytest.raises(VerificationError, match="signature"):
        verify_deployment(Deployment.from_fields(fields), [pub(OWNER)])


def test_owner_key_swapped_fails() -> None:
    fields = deployment().to_fields()
    fields["owner_key"] = pub(OTHER)
    with pytest.raises(VerificationError, match="signature"):
        verify_deployment(Deployment.from_fields(fields), [pub(OWNER), pub(OTHER)])


def test_package_mismatch() -> None:
    d = deployment()
    with pytest.raises(VerificationError, match="size"):
        check_package(d, PKG + b"\x00")
    with pytest.raises(VerificationError, match="digest"):
        check_package(d, b"\x00asm\x01\x00\x00\x01")


def test_nonce_makes_ids_distinct() -> None:
    a = make_deployment(manifest_for("x"), PKG, None, OWNER, 1.0, random.Random(1))
    b = make_deployment(manifest_for("x"), PKG, None, OWNER, 1.0, random.Random(2))
    assert deployment_id(a) != deployment_id(b)


def test_wire_validation_bounds() -> None:
    fields = deployment().to_fields()
    with pytest.raises(ProtocolError, match="unknown field"):
        Deployment.from_fields({**fields, "extra": 1})
    with pytest.raises(ProtocolError, match="signature"):
        Deployment.from_fields({**fields, "signature": b"x"})
    with pytest.raises(ProtocolError, match="memory_limit"):
        Deployment.from_fields({**fields, "manifest": {**fields["manifest"],
                                                       "memory_limit": 10}})
    with pytest.raises(ProtocolError, match="sealed_key"):
        DeployRequest.from_fields({"deployment": fields,
                                   "package": {"sealed_key": b"", "ciphertext": b""}})


def test_manifest_toml_ok() -> None:
    m, module, policy = parse_manifest_toml(
        'name = "svc"\nmodule = "svc.wat"\npolicy = "p.toml"\nargs = ["-v"]\n'
        '[env]\nMODE = "fast"\n[resources]\nmemory = "2MiB"\nfuel = 5000\n'
        'timeout_ms = 100\nstateful = true\n')
    assert (m.name, m.args, m.env, m.memory_limit, m.fuel, m.timeout_ms, m.stateful) == (
        "svc", ("-v",), {"MODE": "fast"}, 2 * 1024 * 1024, 5000, 100, True)
    assert (module, policy) == ("svc.wat", "p.toml")


@pytest.mark.parametrize("text,needle", [
    ('module = "x.wat"\n', "'name'"),
    ('name = "Bad Name"\n', "'name'"),
    ('name = "a"\nargs = "x"\n', "'args'"),
    ('name = "a"\n[resources]\nmemory = "lots"\n', "resources.memory"),
    ('name = "a"\n[resources]\nfuel = "x"\n', "resources.fuel"),
    ('name = "a"\n[resources]\nstateful = 1\n', "resources.stateful"),
    ('name = "a"\n[resources]\ncpu = 1\n', "resources.cpu"),
    ('name = "a"\nbogus = 1\n', "'bogus'"),
    ('name = "a"\n[env]\n"1X" = "v"\n', "'env'"),
    # A trailing newline must not slip through a name pattern ('$' matches before one).
    ('name = "a\\n"\n', "'name'"),
    ('name = "a"\n[env]\n"X\\n" = "v"\n', "'env'"),
    ('name = \n', "invalid TOML"),
    ('name = "a"\n[resources]\nmemory = 1024\n', "memory_limit"),
])
def test_manifest_toml_errors_name_the_field(text: str, needle: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_manifest_toml(text, "keepmesh.toml")
    assert needle in str(err.value)
    assert "\n" not in str(err.value)
