"""Secrets and data files: manifest checks, sealing, digests, host API, rotation, hand-on.

Every check is tested both ways: the good input passes, the bad one fails
with a one-line reason naming the input (and never its value).
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import time
from pathlib import Path

import msgpack
import nacl.signing
import pytest
from keepmesh.agent.keeps.manager import KeepManager
from keepmesh.agent.keeps.package import PackageError, load_workload, module_binary
from keepmesh.agent.keeps.sealing import open_inputs, seal_package, seal_value
from keepmesh.agent.keeps.service import KeepService
from keepmesh.protocol.deployment import (
    Deployment,
    SealedPackage,
    make_deployment,
    manifest_for,
    verify_deployment,
)
from keepmesh.protocol.errors import ProtocolError, VerificationError
from keepmesh.protocol.secrets import (
    MAX_DATA_TOTAL,
    MAX_SECRET,
    InputBundle,
    InputValue,
    SecretUpdate,
    check_data_name,
    check_secret_name,
    deployment_key_for,
    derive_deployment_key,
    input_digest,
    make_bundle,
    make_secret_update,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "secret-digest"
OWNER = bytes([7] * 32)
STRANGER = bytes([8] * 32)
IDENTITY = bytes([9] * 32)
OTHER_AGENT = bytes([10] * 32)
DB = b"correct horse battery staple"
TOKEN = b"demo-token-0123456789"


def pub(seed: bytes) -> bytes:
    return bytes(nacl.signing.SigningKey(seed).verify_key.encode())


def fnv(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for x in data:
        h = ((h ^ x) * 0x100000001B3) % 2**64
    return f"{h:016x}"


def expected_reply(db: bytes = DB, token: bytes = TOKEN) -> bytes:
    words = (EXAMPLE / "data" / "words.txt").read_bytes()
    return f"db_password={fnv(db)} words={fnv(words)} API_TOKEN={fnv(token)}".encode()


def example_deployment(bundle_override: InputBundle | None = None, seed: bytes = OWNER,
                       identity: bytes = IDENTITY) -> tuple[Deployment, SealedPackage]:
    w = load_workload(EXAMPLE, rng=random.Random(1))
    d = make_deployment(w.manifest, w.module, None, seed, time.time(), random.Random(),
                        secrets=w.secret_refs, data=w.data_refs)
    sealed, _ = seal_package(w.module, pub(identity), key=deployment_key_for(seed, d),
                             inputs=bundle_override or w.inputs)
    return d, sealed


def rotation(d: Deployment, name: str, value: bytes, serial: int, seed: bytes = OWNER,
             key: bytes | None = None, keep: str | None = None) -> SecretUpdate:
    from keepmesh.protocol.deployment import deployment_id

    key = key or deployment_key_for(OWNER, d)
    record = InputValue(name=name, salt=bytes(16), value=value)
    return make_secret_update(keep or deployment_id(d), name, serial,
                              input_digest("secret", name, record.salt, value),
                              seal_value(key, record), seed)


def all_bytes(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in root.rglob("*") if p.is_file()]


# ------------------------------------------------------------------ keepmesh.toml


def test_example_manifest_reads_secrets_and_data() -> None:
    w = load_workload(EXAMPLE)
    assert w.inputs is not None
    assert {v.name: v.value for v in w.inputs.secrets} == {"db_password": DB, "API_TOKEN": TOKEN}
    assert [v.name for v in w.inputs.data] == ["words"]
    assert [(r.name, r.as_env) for r in w.secret_refs] == [("db_password", None),
                                                            ("API_TOKEN", True)]


def _workload(tmp_path: Path, secrets: str = "", data: str = "", env: str = "",
              files: dict[str, bytes] | None = None) -> Path:
    shutil.copy(EXAMPLE / "secret-digest.wat", tmp_path / "m.wat")
    for rel, content in (files or {}).items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(content)
    (tmp_path / "keepmesh.toml").write_text(
        f'name = "t"\nmodule = "m.wat"\n{env}\n[secrets]\n{secrets}\n[data]\n{data}\n')
    return tmp_path


def test_secret_from_environment_both_ways(tmp_path: Path) -> None:
    path = _workload(tmp_path, secrets='tok = { env = "KM_TEST_TOKEN" }')
    w = load_workload(path, environ={b"KM_TEST_TOKEN": b"s3cr3t"})
    assert w.inputs is not None and w.inputs.secrets[0].value == b"s3cr3t"
    with pytest.raises(PackageError) as err:
        load_workload(path, environ={})
    assert "secret 'tok'" in err.value.reason and "KM_TEST_TOKEN is not set" in err.value.reason


BIG = b"x" * (MAX_SECRET + 1)


@pytest.mark.parametrize("secrets,data,env,files,needle", [
    ('db = { file = "s/db.txt" }', "", "", {}, "secret 'db': file s/db.txt: no such file"),
    ('db = { file = "s/db.txt" }', "", "", {"s/db.txt": BIG}, "secret 'db': file s/db.txt: is"),
    ('db = { env = "KM_BIG" }', "", "", {}, "environment variable KM_BIG is 65537 bytes"),
    ('"bad-name" = { file = "a" }', "", "", {"a": b"1"}, "secret name 'bad-name'"),
    # A trailing newline must not slip through a name pattern ('$' matches before one).
    ('"db\\n" = { file = "a" }', "", "", {"a": b"1"}, "secret name 'db\\n'"),
    ('db = { env = "KM_X\\n" }', "", "", {}, "field 'env': expected an environment variable"),
    ("", '"w\\n" = "a"', "", {"a": b"1"}, "data name 'w\\n'"),
    ('db = { file = "a", env = "X" }', "", "", {"a": b"1"}, "exactly one of 'file' or 'env'"),
    ("db = { }", "", "", {}, "exactly one of 'file' or 'env'"),
    ('db = { file = "a", mode = 1 }', "", "", {"a": b"1"}, "secret 'db': unknown key 'mode'"),
    ('db = { file = "a", as_env = "yes" }', "", "", {"a": b"1"}, "field 'as_env': expected bool"),
    ('db = "a"', "", "", {"a": b"1"}, "secret 'db': expected { file"),
    ('db = { file = "/etc/passwd" }', "", "", {}, "must be a relative path"),
    ('db = { file = "../x" }', "", "", {}, "must be a relative path"),
    ('DB = { file = "a", as_env = true }', "", '[env]\nDB = "1"', {"a": b"1"},
     "as_env collides with [env] variable 'DB'"),
    ('DB = { file = "a", as_env = true }', "", "", {"a": b"\xff\xfe"}, "as_env needs UTF-8"),
    ('DB = { file = "a", as_env = true }', "", "", {"a": b"a\x00b"}, "NUL byte"),
    ("", 'words = "d/w.txt"', "", {}, "data 'words': file d/w.txt: no such file"),
    ("", '"bad name" = "a"', "", {"a": b"1"}, "data name 'bad name'"),
    ("", "words = 3", "", {}, "data 'words': expected a file path"),
    ("", 'a = "a"\nb = "b"', "", {"a": b"x" * (MAX_DATA_TOTAL // 2 + 1),
                                  "b": b"y" * (MAX_DATA_TOTAL // 2)},
     "data 'b': file b: brings the data files over"),
])
def test_manifest_input_errors_name_the_input(tmp_path: Path, secrets: str, data: str, env: str,
                                              files: dict[str, bytes], needle: str) -> None:
    path = _workload(tmp_path, secrets, data, env, files)
    with pytest.raises(PackageError) as err:
        load_workload(path, environ={b"KM_BIG": BIG})
    reason = err.value.reason
    assert needle in reason and "\n" not in reason
    assert "keepmesh.toml" in reason


def test_names_with_a_trailing_newline_are_refused_on_the_wire() -> None:
    # Not only in keepmesh.toml: an agent checks the names of a record it receives.
    for check, name in ((check_secret_name, "db_password\n"), (check_data_name, "words\n")):
        with pytest.raises(ProtocolError, match="must match"):
            check(name)
    value = InputValue(name="db\n", salt=bytes(16), value=b"v")
    with pytest.raises(ProtocolError, match="secret name"):
        InputBundle(secrets=(value,), data=()).validate()


def test_input_files_are_regular_and_stay_inside_the_workload(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    from keepmesh.agent.cli import main

    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"OUTSIDE-THE-WORKLOAD")
    w = tmp_path / "w"

    def load(secrets: str, data: str, make: dict[str, object]) -> str:
        shutil.rmtree(w, ignore_errors=True)
        w.mkdir()
        _workload(w, secrets, data)
        for rel, target in make.items():
            if target == "fifo":
                os.mkfifo(w / rel)
            elif target == "dir":
                (w / rel).mkdir()
            else:
                (w / rel).symlink_to(str(target))
        try:
            got = load_workload(w)
        except PackageError as err:
            assert "\n" not in err.reason and "OUTSIDE" not in err.reason
            return err.reason
        assert got.inputs is not None
        return ",".join(v.value.decode() for v in (*got.inputs.secrets, *got.inputs.data))

    # A link out of the directory is '..' by another name: refused, secret and data alike,
    # whether the file or a directory on its path is the link.
    assert "secret 'a': file a: a symbolic link leads outside the workload directory" in load(
        'a = { file = "a" }', "", {"a": outside})
    assert "data 'w': file l/outside.txt: a symbolic link leads outside" in load(
        "", 'w = "l/outside.txt"', {"l": tmp_path})
    assert "leads outside" in load("", 'w = "l"', {"l": "/etc/hostname"})
    # A link that stays inside is followed.
    assert load('a = { file = "a" }', "", {"a": "m.wat"}).startswith(";; A keepmesh service")
    # Not a regular file: said so (a FIFO is not opened for a blocking read).
    assert "secret 'a': file a: is a directory, not a file" in load(
        'a = { file = "a" }', "", {"a": "dir"})
    assert "data 'w': file f: not a regular file" in load("", 'w = "f"', {"f": "fifo"})
    assert "path contains a NUL character" in load("", 'w = "a\\u0000b"', {})
    # `secrets set --file` says the same, before reading a key or connecting.
    capsys.readouterr()
    os.mkfifo(w / "f")
    for bad, needle in ((w, "is a directory"), (w / "f", "not a regular file"),
                        (w / "nope", "no such file")):
        assert main(["secrets", "set", "0" * 32, "db", "--file", str(bad), "--agent",
                     "127.0.0.1:9", "--key", str(tmp_path / "no.key")]) == 1
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1


def test_manifest_inputs_within_limits_pass(tmp_path: Path) -> None:
    # At every edge at once: 64 secrets, one of exactly 64 KiB, data of exactly 16 MiB.
    secrets = "\n".join(f's{i} = {{ file = "{"a" if i == 0 else "s"}" }}' for i in range(64))
    path = _workload(tmp_path, secrets, 'a = "a"\nb = "b"', "",
                     {"a": b"x" * MAX_SECRET, "s": b"1",
                      "b": b"y" * (MAX_DATA_TOTAL - MAX_SECRET)})
    w = load_workload(path)
    assert w.inputs is not None and len(w.inputs.secrets) == 64
    assert sum(len(v.value) for v in w.inputs.data) == MAX_DATA_TOTAL
    too_many = secrets + '\ns64 = { file = "a" }'
    with pytest.raises(PackageError, match="65 secrets, at most 64"):
        load_workload(_workload(tmp_path, too_many, "", "", {}))


def test_sealed_total_must_fit_one_rpc(tmp_path: Path) -> None:
    secrets = "\n".join(f's{i} = {{ file = "a" }}' for i in range(64))
    path = _workload(tmp_path, secrets, 'b = "b"', "",
                     {"a": b"x" * MAX_SECRET, "b": b"y" * MAX_DATA_TOTAL})
    with pytest.raises(PackageError, match="module, secrets and data together"):
        load_workload(path)


# ------------------------------------------------------------------ record and sealing


def test_deployment_record_has_names_and_salted_digests_only() -> None:
    d, sealed = example_deployment()
    record = msgpack.packb(d.to_fields(), use_bin_type=True)
    words = (EXAMPLE / "data" / "words.txt").read_bytes()
    for plain in (DB, TOKEN, words, b"horse", b"charlie"):
        assert plain not in record
        assert plain not in msgpack.packb(sealed.to_fields(), use_bin_type=True)
    assert b"db_password" in record and b"words" in record
    import hashlib

    digests = {r.name: r.digest for r in d.secrets or ()}
    assert digests["db_password"] != hashlib.sha256(DB).digest()  # salted: no dictionary attack
    verify_deployment(d, [pub(OWNER)])
    changed = dataclasses.replace(d, secrets=(dataclasses.replace(d.secrets[0], digest=bytes(32)),
                                              *d.secrets[1:]))  # type: ignore[index]
    with pytest.raises(VerificationError, match="signature"):
        verify_deployment(changed, [pub(OWNER)])


def test_salt_makes_equal_values_unlinkable() -> None:
    _, a, _ = make_bundle([("x", b"same")], [], random.Random(1))
    _, b, _ = make_bundle([("x", b"same")], [], random.Random(2))
    assert a[0].digest != b[0].digest


def test_only_the_attested_identity_opens_inputs() -> None:
    from keepmesh.agent.keeps.sealing import open_sealed_key

    d, sealed = example_deployment()
    key = open_sealed_key(sealed, IDENTITY)
    assert key == deployment_key_for(OWNER, d)
    bundle = open_inputs(sealed, key)
    assert bundle is not None and bundle.secrets[0].value == DB
    with pytest.raises(VerificationError):
        open_sealed_key(sealed, OTHER_AGENT)
    with pytest.raises(VerificationError, match="sealed inputs failed authentication"):
        open_inputs(sealed, derive_deployment_key(STRANGER, bytes(32)))
    assert sealed.inputs is not None
    flipped = sealed.inputs[:-1] + bytes([sealed.inputs[-1] ^ 1])
    with pytest.raises(VerificationError, match="failed authentication"):
        open_inputs(dataclasses.replace(sealed, inputs=flipped), key)


def test_deployment_key_is_per_owner_and_per_deployment() -> None:
    d1, _ = example_deployment()
    d2, _ = example_deployment()
    assert deployment_key_for(OWNER, d1) == deployment_key_for(OWNER, d1)
    assert deployment_key_for(OWNER, d1) != deployment_key_for(OWNER, d2)
    assert deployment_key_for(OWNER, d1) != deployment_key_for(STRANGER, d1)


# ------------------------------------------------------------------ keep side


def manager(path: Path, identity: bytes = IDENTITY) -> KeepManager:
    return KeepManager(path, [pub(OWNER)], identity)


async def test_keep_reads_secret_data_and_env_and_prints_digest(tmp_path: Path) -> None:
    m = manager(tmp_path)
    d, sealed = example_deployment()
    keep = await m.deploy(d, sealed)
    reply = await m.call(keep.keep_id, b"?")
    assert reply == expected_reply()
    assert DB not in reply and TOKEN not in reply
    assert m.logs(keep.keep_id) == [("stdout", reply.decode())]
    summary = keep.summary()
    assert summary["secrets"] == 2 and summary["data"] == 1
    assert DB.decode() not in repr(summary) and DB.decode() not in repr(keep.ctx.inputs)
    await m.aclose()


@pytest.mark.parametrize("kind", ["secret", "data"])
async def test_digest_mismatch_fails_the_deploy(tmp_path: Path, kind: str) -> None:
    w = load_workload(EXAMPLE, rng=random.Random(1))
    assert w.inputs is not None
    if kind == "secret":
        swapped = dataclasses.replace(w.inputs.secrets[0], value=b"another password")
        bundle = dataclasses.replace(w.inputs, secrets=(swapped, *w.inputs.secrets[1:]))
        needle = "secret 'db_password': digest does not match the signed deployment"
    else:
        swapped = dataclasses.replace(w.inputs.data[0], value=b"other words\n")
        bundle = dataclasses.replace(w.inputs, data=(swapped,))
        needle = "data 'words': digest does not match the signed deployment"
    m = manager(tmp_path)
    d, sealed = example_deployment(bundle)
    with pytest.raises(VerificationError) as err:
        m.admit(d, sealed)
    assert err.value.reason == needle
    assert not m.keeps
    assert not list((tmp_path / "keeps").glob("*/deployment.bin"))
    good, sealed_ok = example_deployment()
    assert m.admit(good, sealed_ok).keep_id  # the honest bundle passes


async def test_missing_or_extra_inputs_refused(tmp_path: Path) -> None:
    m = manager(tmp_path)
    d, sealed = example_deployment()
    with pytest.raises(VerificationError, match="declares secrets or data but the package"):
        m.admit(d, dataclasses.replace(sealed, inputs=None))
    w = load_workload(EXAMPLE, rng=random.Random(1))
    assert w.inputs is not None
    fewer = dataclasses.replace(w.inputs, secrets=w.inputs.secrets[:1])
    d2, sealed2 = example_deployment()
    key = deployment_key_for(OWNER, d2)
    sealed2 = seal_package(w.module, pub(IDENTITY), key=key, inputs=fewer)[0]
    with pytest.raises(VerificationError, match="secret 'API_TOKEN' is missing"):
        m.admit(d2, sealed2)
    # A plain deployment that smuggles inputs it never signed is refused too.
    module = module_binary(b'(module (memory (export "memory") 1) (func (export "_start")))', "t")
    plain = make_deployment(manifest_for("t"), module, None, OWNER, time.time(), random.Random())
    smuggle = seal_package(module, pub(IDENTITY), key=deployment_key_for(OWNER, plain),
                           inputs=w.inputs)[0]
    with pytest.raises(VerificationError, match="not in the signed deployment"):
        m.admit(plain, smuggle)


async def test_no_plaintext_in_data_dir_record_or_listing(tmp_path: Path) -> None:
    svc = KeepService(tmp_path, [pub(OWNER)], IDENTITY)
    await svc.start()
    d, sealed = example_deployment()
    owner = _Ctx(pub(OWNER))
    methods = svc.methods()
    resp = await methods["keeps.deploy"](owner, {"deployment": d.to_fields(),
                                                 "package": sealed.to_fields()})
    keep = resp["keep"]
    assert (await methods["keeps.call"](owner, {"keep": keep, "message": b"x"}))["reply"] \
        == expected_reply()
    new = b"rotated password 42"
    await methods["keeps.secret_set"](owner, {"update": rotation(d, "db_password", new,
                                                                 5).to_fields()})
    listing = msgpack.packb(await methods["keeps.list"](owner, {}), use_bin_type=True)
    logs = msgpack.packb(await methods["keeps.logs"](owner, {"keep": keep}), use_bin_type=True)
    await svc.aclose()
    words = (EXAMPLE / "data" / "words.txt").read_bytes()
    files = all_bytes(tmp_path)
    assert any(p.name == "inputs.enc" for p, _ in files)
    for plain in (DB, TOKEN, new, words, b"horse", b"charlie", b"demo-token"):
        for path, blob in files:
            assert plain not in blob, f"{plain!r} in {path}"
        assert plain not in listing and plain not in logs


async def test_rotation_seen_on_next_call_and_after_restart(tmp_path: Path) -> None:
    m = manager(tmp_path)
    d, sealed = example_deployment()
    keep = await m.deploy(d, sealed)
    assert await m.call(keep.keep_id, b"x") == expected_reply()
    assert m.set_secret(rotation(d, "db_password", b"new-db", 10)) == 10
    assert await m.call(keep.keep_id, b"x") == expected_reply(db=b"new-db")
    m.set_secret(rotation(d, "API_TOKEN", b"new-token", 11))  # as_env: WASI env refreshed
    assert await m.call(keep.keep_id, b"x") == expected_reply(db=b"new-db", token=b"new-token")
    assert keep.summary()["secrets_serial"] == 11
    await m.aclose()
    m2 = manager(tmp_path)
    await m2.restore_and_start()
    assert await m2.call(keep.keep_id, b"x") == expected_reply(db=b"new-db", token=b"new-token")
    # A stopped keep has no next invocation: a rotation is refused, not reported as done,
    # and nothing is stored (the value it held is still the one on disk).
    await m2.stop(keep.keep_id)
    with pytest.raises(ProtocolError, match=f"keep {keep.keep_id} is stopped: .*not replaced"):
        m2.set_secret(rotation(d, "db_password", b"too-late", 12))
    assert m2.keeps[keep.keep_id].summary()["secrets_serial"] == 11
    await m2.aclose()


async def test_bad_rotations_refused_and_old_value_kept(tmp_path: Path) -> None:
    m = manager(tmp_path)
    d, sealed = example_deployment()
    keep = await m.deploy(d, sealed)
    good = rotation(d, "db_password", b"v2", 7)
    m.set_secret(good)
    other_key = derive_deployment_key(OWNER, bytes(32))
    forged = rotation(d, "db_password", b"evil", 9)
    bad: list[tuple[SecretUpdate, str]] = [
        (good, "not newer than 7 (replay?)"),
        (rotation(d, "db_password", b"old", 6), "serial 6 is not newer than 7"),
        (rotation(d, "db_password", b"evil", 8, seed=STRANGER), "signature does not verify"),
        (rotation(d, "unknown", b"evil", 8), "secret 'unknown' is not declared"),
        (rotation(d, "db_password", b"evil", 8, key=other_key), "failed authentication"),
        (dataclasses.replace(forged, digest=bytes(32)), "signature does not verify"),
        (rotation(d, "db_password", b"evil", 8, keep="0" * 32), "no keep"),
        (rotation(d, "API_TOKEN", b"\xff", 8), "as_env needs UTF-8"),
    ]
    for update, needle in bad:
        with pytest.raises(ProtocolError) as err:
            m.set_secret(update)
        assert needle in err.value.reason and "evil" not in err.value.reason
    # A correctly signed update whose value does not match its signed digest.
    key = deployment_key_for(OWNER, d)
    value = InputValue(name="db_password", salt=bytes(16), value=b"evil")
    mismatched = make_secret_update(keep.keep_id, "db_password", 8,
                                    input_digest("secret", "db_password", bytes(16), b"other"),
                                    seal_value(key, value), OWNER)
    with pytest.raises(VerificationError, match="digest does not match the signed update"):
        m.set_secret(mismatched)
    assert await m.call(keep.keep_id, b"x") == expected_reply(db=b"v2")
    await m.aclose()


def test_update_record_bounds() -> None:
    d, _ = example_deployment()
    fields = rotation(d, "db_password", b"plain-rotated-value", 1).to_fields()
    SecretUpdate.from_fields(fields)
    # What a relaying agent (or a network observer inside the channel) sees: no value.
    assert b"plain-rotated-value" not in msgpack.packb(fields, use_bin_type=True)
    for change, needle in [({"keep": "XYZ"}, "bad keep id"), ({"serial": 0}, "serial"),
                           ({"name": "a-b"}, "secret name"),
                           ({"ciphertext": b"x" * (MAX_SECRET + 1024)}, "exceeds")]:
        with pytest.raises(ProtocolError, match=needle):
            SecretUpdate.from_fields({**fields, **change})


async def test_secret_set_rpc_access(tmp_path: Path) -> None:
    svc = KeepService(tmp_path, [pub(OWNER)], IDENTITY)
    await svc.start()
    d, sealed = example_deployment()
    methods = svc.methods()
    owner, stranger = _Ctx(pub(OWNER)), _Ctx(pub(STRANGER))
    await methods["keeps.deploy"](owner, {"deployment": d.to_fields(),
                                          "package": sealed.to_fields()})
    body = {"update": rotation(d, "db_password", b"v2", 3).to_fields()}
    with pytest.raises(ProtocolError, match="no keep"):
        await methods["keeps.secret_set"](stranger, body)
    with pytest.raises(ProtocolError, match="unknown field"):
        await methods["keeps.secret_set"](owner, {**body, "x": 1})
    resp = await methods["keeps.secret_set"](owner, body)
    assert resp["serial"] == 3 and resp["name"] == "db_password"
    relay = _Ctx(pub(OTHER_AGENT), role="agent")  # a peer agent forwarding the update
    resp = await methods["keeps.secret_set"](relay, {
        "update": rotation(d, "db_password", b"v3", 4).to_fields()})
    assert resp["serial"] == 4
    await svc.aclose()


# ------------------------------------------------------------------ moving with the keep


async def test_secrets_move_with_the_keep(tmp_path: Path) -> None:
    a = manager(tmp_path / "a")
    d, sealed = example_deployment()
    keep = await a.deploy(d, sealed)
    a.set_secret(rotation(d, "db_password", b"rotated-before-move", 20))
    handed = a.sealed_for(keep.keep_id, pub(OTHER_AGENT))
    assert handed.inputs == sealed.inputs and handed.updates is not None
    b = manager(tmp_path / "b", OTHER_AGENT)
    moved = await b.deploy(d, handed)
    assert await b.call(moved.keep_id, b"x") == expected_reply(db=b"rotated-before-move")
    c = manager(tmp_path / "c", STRANGER)  # not the agent it was sealed to
    with pytest.raises(VerificationError, match="not sealed to this agent"):
        c.admit(d, handed)
    # A tampered carried rotation is caught by the receiver itself.
    upd = handed.updates[0]
    tampered = dataclasses.replace(handed, updates=(dataclasses.replace(upd, serial=99),))
    with pytest.raises(VerificationError, match="signature does not verify"):
        manager(tmp_path / "d", OTHER_AGENT).admit(d, tampered)
    await a.aclose()
    await b.aclose()


async def test_rotation_after_replication_travels_in_the_checkpoint(tmp_path: Path) -> None:
    """A standby got the package before the owner rotated a secret: the next checkpoint
    carries the signed rotation, and the restored keep sees the new value."""
    import trio
    from keepmesh.agent.keeps.checkpoint import (
        CheckpointError,
        CheckpointInfo,
        restore_keep,
        seal_checkpoint,
        take_checkpoint,
    )
    from keepmesh.agent.keeps.store import KVState

    a = manager(tmp_path / "a")
    d, sealed = example_deployment()
    keep = await a.deploy(d, sealed)
    stale = a.sealed_for(keep.keep_id, pub(OTHER_AGENT))  # replicated before the rotation
    a.set_secret(rotation(d, "db_password", b"after-replication", 30))
    blob = await trio.to_thread.run_sync(take_checkpoint, keep, 1, 1, 5.0)
    b = manager(tmp_path / "b", OTHER_AGENT)
    restored, info = restore_keep(b, d, stale, blob)
    assert info is not None and [u.serial for u in info.updates] == [30]
    await b.start(restored)
    assert await b.call(restored.keep_id, b"x") == expected_reply(db=b"after-replication")
    # Without the rotation in the checkpoint the standby would run the old value.
    c = manager(tmp_path / "c", OTHER_AGENT)
    old_blob = seal_checkpoint(CheckpointInfo(keep.keep_id, 1, 1, 5.0), KVState().to_bytes(),
                               keep.deployment_key)
    old, _ = restore_keep(c, d, stale, old_blob)
    await c.start(old)
    assert await c.call(old.keep_id, b"x") == expected_reply()
    # A forged rotation inside a (K-authenticated) checkpoint is still refused, and the
    # restored keep is stopped rather than run with a value the owner never signed.
    forged = rotation(d, "db_password", b"evil", 31, seed=STRANGER)
    bad_blob = seal_checkpoint(CheckpointInfo(keep.keep_id, 2, 1, 6.0, (forged,)),
                               KVState().to_bytes(), keep.deployment_key)
    e = manager(tmp_path / "e", OTHER_AGENT)
    with pytest.raises(CheckpointError, match="signature does not verify"):
        restore_keep(e, d, stale, bad_blob)
    assert e.get(keep.keep_id).status == "stopped"
    for m in (a, b, c, e):
        await m.aclose()


# ------------------------------------------------------------------ host API edges

EDGE = b"""(module
  (import "keepmesh" "secret_get" (func $s (param i32 i32 i32 i32) (result i32)))
  (import "keepmesh" "data_read" (func $d (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "dbzzwords")
  (func (export "alloc") (param i32) (result i32) (i32.const 4096))
  (func (export "handle") (param i32 i32) (result i64)
    (i32.store (i32.const 2000) (call $s (i32.const 0) (i32.const 2)
                                         (i32.const 1000) (i32.const 0)))
    (i32.store (i32.const 2004) (call $s (i32.const 2) (i32.const 2)
                                         (i32.const 1000) (i32.const 99)))
    (i32.store (i32.const 2008) (call $d (i32.const 4) (i32.const 5) (i32.const 999)
                                         (i32.const 1000) (i32.const 99)))
    (i32.store (i32.const 2012) (call $d (i32.const 4) (i32.const 5) (i32.const -1)
                                         (i32.const 1000) (i32.const 99)))
    (i32.store (i32.const 2016) (call $d (i32.const 4) (i32.const 5) (i32.const 2)
                                         (i32.const 1000) (i32.const 3)))
    (i32.store (i32.const 2020) (call $s (i32.const 0) (i32.const 2)
                                         (i32.const 1003) (i32.const 6)))
    (i64.const 0x000007d00000001e)))"""


async def test_host_api_bounds(tmp_path: Path) -> None:
    module = module_binary(EDGE, "edge")
    bundle, srefs, drefs = make_bundle([("db", b"pw1234")], [("words", b"abcdefgh")],
                                       random.Random(3))
    d = make_deployment(manifest_for("edge"), module, None, OWNER, time.time(),
                        random.Random(), secrets=srefs, data=drefs)
    sealed = seal_package(module, pub(IDENTITY), key=deployment_key_for(OWNER, d),
                          inputs=bundle)[0]
    m = manager(tmp_path)
    keep = await m.deploy(d, sealed)
    reply = await m.call(keep.keep_id, b"")
    ints = [int.from_bytes(reply[i:i + 4], "little", signed=True) for i in range(0, 24, 4)]
    # secret with cap 0: length, nothing copied; unknown secret -1; data offset past the end:
    # size, nothing copied; negative offset -1; a 3-byte window at offset 2; full secret.
    assert ints == [6, -1, 8, -1, 8, 6]
    # The refusal leaves no trace of the value: bytes 1000..1002 came from data, then secret.
    region = keep.runtime._instance.exports(keep.runtime._store)["memory"].read(  # type: ignore
        keep.runtime._store, 1000, 1009)  # type: ignore[union-attr]
    assert bytes(region) == b"cdepw1234"
    await m.aclose()


@dataclasses.dataclass
class _Ctx:
    peer_key: bytes
    role: str = "client"

    def __hash__(self) -> int:
        return hash(self.peer_key)



def test_secrets_set_resolves_the_keep_id_with_one_line_reasons() -> None:
    from keepmesh.agent.cli import CommandError
    from keepmesh.agent.cli.secrets import _find_keep

    keeps = [{"keep": "ab" * 16}, {"keep": "abab0000" + "0" * 24}]
    assert _find_keep(keeps, "ab" * 16)["keep"] == "ab" * 16
    for wanted, reason in (("abababab", None), ("ababa", "shorter than 8 characters"),
                           ("abab", "shorter than 8 characters"), ("abab000", "shorter than 8"),
                           ("ffffffff", "no keep 'ffffffff' of this owner")):
        if reason is None:
            assert _find_keep(keeps, wanted)["keep"] == "ab" * 16
            continue
        with pytest.raises(CommandError, match=reason):
            _find_keep(keeps, wanted)
    with pytest.raises(CommandError, match="is ambiguous"):
        _find_keep(keeps + [{"keep": "ab" * 15 + "cd"}], "abababab")


def test_secrets_set_reaches_every_copy_and_says_which_it_missed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A replicated keep runs on several hosts; each gets the same signed update, and a
    copy that cannot be reached fails the command in one line naming it (the others
    already have the value, so running it again is safe: the serial only grows)."""
    import json

    import trio
    from keepmesh.agent import client as client_mod
    from keepmesh.agent.cli import CommandError, main
    from keepmesh.agent.cli import secrets as secrets_cli

    keep = "ab" * 16

    class Fake:
        def __init__(self, ident: bytes, address: str, serial: int) -> None:
            self.peer_key, self.address, self.serial = ident, address, serial
            self.updates: list[dict[str, object]] = []

        async def call(self, method: str, body: dict[str, object]) -> dict[str, object]:
            if method == "migrate.where":
                raise CommandError("agent has no migration")
            if method == "keeps.list":
                other = b"\x02" * 32 if self.peer_key == b"\x01" * 32 else b"\x01" * 32
                return {"keeps": [
                    {"keep": keep, "state": "running", "host": self.address,
                     "host_id": self.peer_key.hex(), "deployment": "cd" * 32,
                     "secrets_serial": self.serial},
                    {"keep": keep, "state": "running", "remote": True,
                     "host": "h2" if self.address == "h1" else "h1", "host_id": other.hex()}]}
            assert method == "keeps.secret_set"
            self.updates.append(body["update"])  # type: ignore[arg-type]
            return {"keep": keep, "name": "db", "serial": body["update"]["serial"]}  # type: ignore[index]

        async def aclose(self) -> None:
            pass

    entry, second = Fake(b"\x01" * 32, "h1", 5), Fake(b"\x02" * 32, "h2", 9 * 10**13)
    reachable = {"yes": True}

    async def fake_open(address: str, **_: object) -> Fake:
        if not reachable["yes"]:
            raise CommandError(f"no attested answer from {address} within 5s")
        return second

    monkeypatch.setattr(client_mod, "open_client", fake_open)
    monkeypatch.setattr(secrets_cli, "run_call", lambda args, fn: trio.run(fn, entry))
    key = tmp_path / "owner.key"
    assert main(["keygen", str(key)]) == 0
    value = tmp_path / "v.txt"
    value.write_bytes(b"new")
    argv = ["secrets", "set", keep[:10], "db", "--file", str(value), "--agent", "h1",
            "--key", str(key), "--json"]
    capsys.readouterr()
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["hosts"] == ["h1", "h2"]
    assert entry.updates == second.updates and len(entry.updates) == 1
    assert entry.updates[0]["serial"] == 9 * 10**13 + 1  # newer than every copy's serial
    reachable["yes"] = False
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert (f"secret db replaced on 1 of 2 copies of keep {keep}; not on h2: no attested "
            "answer from h2") in err and len(err.strip().splitlines()) == 1
    assert len(entry.updates) == 2 and len(second.updates) == 1
