"""Fuzz targets: every decoder and verifier fed mutated valid inputs.

Shared by the hypothesis tests (tests/test_fuzz.py, modest counts in CI) and
`bench/fuzz.py` (large counts, figures). Each target names its seeds (valid
inputs: public vectors, sim evidence, example files), a mutator that damages
one seed the way an attacker would (byte flips and splices, and for
certificates a flip *inside* the DER, re-encoded so the enclosing structure
still parses), and the call under test. Anything raised that is not one of
the target's declared error types is a crash: a bug in keepmesh.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import random
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keepmesh.protocol.errors import ProtocolError

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"
if not VECTORS.is_dir():
    VECTORS = Path("/work/shared/vectors")
REPO = Path(__file__).resolve().parents[1]

INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0x81, 0x82, 0xFF, 0x30, 0x02, 0x03, 0x04, 0x05, 0x06)


@dataclass(frozen=True)
class Target:
    name: str
    seeds: Callable[[], Sequence[Any]]
    mutate: Callable[[random.Random, Any], Any]
    run: Callable[[Any], object]
    declared: tuple[type[BaseException], ...] = (ProtocolError,)
    needs_vectors: bool = False

    def case(self, rng: random.Random) -> Any:
        seeds = self.seeds()
        return self.mutate(rng, seeds[rng.randrange(len(seeds))])

    def check(self, case: Any) -> tuple[str, BaseException | None]:
        """Run one case: ("accepted", None), ("rejected", None) or (crash kind, exception).

        A declared error that is a fault boundary's UnexpectedError (a library
        error the narrow checks missed) counts as a crash too: the agent
        survives it, but it is a bug.
        """
        from keepmesh.protocol.attestation.boundary import UnexpectedError
        try:
            self.run(case)
        except self.declared as err:
            if isinstance(err, UnexpectedError) and err.__cause__ is not None:
                return "guarded:" + crash_kind(err.__cause__), err.__cause__
            return "rejected", None
        except Exception as err:  # anything undeclared is the bug being hunted
            return crash_kind(err), err
        return "accepted", None


def crash_kind(err: BaseException) -> str:
    """Exception type plus the innermost frame inside keepmesh (where it escaped from)."""
    import traceback
    where = "?"
    for frame in traceback.extract_tb(err.__traceback__):
        if any(part in frame.filename for part in ("/protocol/", "/agent/", "/simulations/")):
            where = f"{Path(frame.filename).name}:{frame.lineno}"
    return f"{type(err).__name__}@{where}"


# ---------------------------------------------------------------- mutators


def mutate_bytes(rng: random.Random, data: bytes, pool: Sequence[bytes] = ()) -> bytes:
    """1-4 byte-level damages: flip, set, insert, delete, duplicate, truncate, splice."""
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 4))):
        op = rng.randrange(8)
        n = len(out)
        if n == 0:
            out += bytes([rng.randrange(256)])
            continue
        pos = rng.randrange(n)
        if op == 0:
            out[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[pos] = rng.choice(INTERESTING) if rng.random() < 0.5 else rng.randrange(256)
        elif op == 2:
            out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3:
            del out[pos:pos + rng.randint(1, 16)]
        elif op == 4:
            end = min(n, pos + rng.randint(1, 32))
            out[pos:pos] = out[pos:end]
        elif op == 5 and rng.random() < 0.3:
            del out[pos:]
        elif op == 6 and pool:
            other = pool[rng.randrange(len(pool))]
            if other:
                a = rng.randrange(len(other))
                out[pos:pos + rng.randint(0, 16)] = other[a:a + rng.randint(1, 64)]
        else:
            out[pos] = (out[pos] + rng.choice((1, -1, 0x80))) % 256
    return bytes(out)


def mutate_der_in_place(rng: random.Random, der: bytes) -> bytes:
    """Damage a certificate without changing its length (so containers still parse)."""
    out = bytearray(der)
    for _ in range(rng.choice((1, 1, 2, 3))):
        pos = rng.randrange(len(out))
        if rng.random() < 0.5:
            out[pos] ^= 1 << rng.randrange(8)
        else:
            out[pos] = rng.choice(INTERESTING) if rng.random() < 0.5 else rng.randrange(256)
    return bytes(out)


def mutate_der(rng: random.Random, der: bytes) -> bytes:
    """Damage a standalone certificate: mostly same-length flips, sometimes resizing."""
    if rng.random() < 0.8:
        return mutate_der_in_place(rng, der)
    return mutate_bytes(rng, der)


_PEM_RE = re.compile(rb"(-----BEGIN CERTIFICATE-----)(.*?)(-----END CERTIFICATE-----)", re.S)


def mutate_embedded_pem(rng: random.Random, blob: bytes) -> bytes:
    """Flip bytes inside one DER certificate of a PEM bundle embedded in `blob`.

    The base64 is re-wrapped at the original line breaks, so the bundle (and a
    DCAP quote holding it) keeps its exact length and every length field stays
    right: only the certificate itself is damaged.
    """
    matches = list(_PEM_RE.finditer(blob))
    if not matches:
        return mutate_bytes(rng, blob)
    m = matches[rng.randrange(len(matches))]
    body = m.group(2)
    b64 = re.sub(rb"[^A-Za-z0-9+/=]", b"", body)
    try:
        der = base64.b64decode(b64)
    except ValueError:
        return mutate_bytes(rng, blob)
    new64 = base64.b64encode(mutate_der_in_place(rng, der))
    if len(new64) != len(b64):
        return mutate_bytes(rng, blob)
    # Put the new characters back where the old ones were, keeping line breaks.
    out = bytearray(body)
    j = 0
    for i, ch in enumerate(body):
        if bytes([ch]) in (b"\r", b"\n", b" ", b"\t"):
            continue
        out[i] = new64[j]
        j += 1
    return blob[:m.start(2)] + bytes(out) + blob[m.end(2):]


def mutate_text(rng: random.Random, text: str, tokens: Sequence[str]) -> str:
    """Token-aware damage for TOML-ish text, falling back to byte damage."""
    if rng.random() < 0.4:
        raw = mutate_bytes(rng, text.encode())
        return raw.decode("utf-8", "replace")
    lines = text.splitlines()
    op = rng.randrange(5)
    if op == 0 and lines:
        del lines[rng.randrange(len(lines))]
    elif op == 1:
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(tokens))
    elif op == 2 and lines:
        i = rng.randrange(len(lines))
        lines[i] = lines[i] + rng.choice(tokens)
    elif op == 3 and lines:
        i = rng.randrange(len(lines))
        lines[i], lines[-1] = lines[-1], lines[i]
    else:
        i = rng.randrange(len(lines) + 1)
        lines[i:i] = lines[max(0, i - 2):i]
    return "\n".join(lines) + "\n"


_VALUES = ('1', '-1', '0', '"x"', '""', 'true', '[]', '{}', '1e400', 'nan', 'inf', '-0',
           '9223372036854775807', '18446744073709551616', '"' + "ab" * 48 + '"', '["snp"]',
           '"\\u0000"', '[1, "a"]', '{ a = 1 }', '"64MiB"', '"99999999999G"', '1979-05-27')


def _toml_tokens(keys: Sequence[str]) -> list[str]:
    out = [f"{k} = {v}" for k in keys for v in _VALUES[:8]]
    out += [f"{k} = {v}" for k in keys[:6] for v in _VALUES[8:]]
    out += ["[snp]", "[sgx]", "[tdx]", "[mesh]", "[[group]]", "[[event]]", "[network]",
            "[resources]", "[env]", "[labels]", "[[link]]", "[graph]", "= =", "[", "]]",
            "\x00", "\ufeff"]
    return out


# ------------------------------------------------------------------- seeds


@functools.lru_cache(maxsize=1)
def sim_setup() -> dict[str, Any]:
    """A throwaway sim root, one agent TEE and its evidence (built once per process)."""
    from keepmesh.agent.identity import Identity
    from keepmesh.agent.tee.sim import SimTee, init_sim_root
    from keepmesh.protocol.attestation.certs import TrustStore, fingerprint
    from keepmesh.protocol.channel import evidence_report_data

    tmp = Path(tempfile.mkdtemp(prefix="keepmesh-fuzz-"))
    ark = init_sim_root(tmp / "root", key_bits=2048)
    tee = SimTee(tmp / "root", tmp / "agent")
    ident = Identity.generate()
    issued = int(dt.datetime.now(dt.UTC).timestamp())
    evidence = tee.collect(evidence_report_data(ident.public_bytes, issued))
    return {"tmp": tmp, "ark": ark, "tee": tee, "identity": ident, "issued": issued,
            "evidence": evidence, "trust": TrustStore([ark]),
            "fp": fingerprint(ark), "at": dt.datetime.now(dt.UTC)}


SNP_VECTORS = (
    ("gosevguest-milan-v2/report.bin", "gosevguest-milan-v2/vcek.der", "milan"),
    ("trustee-milan-v2/report.bin", "trustee-milan-v2/vcek.der", "milan"),
    ("trustee-milan-vlek-v3/report.bin", "trustee-milan-vlek-v3/vlek.der", "milan"),
    ("trustee-azure-genoa-v3/report.bin", "trustee-azure-genoa-v3/vcek-genoa.pem", "genoa"),
)
SNP_AT = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
DCAP_VECTORS = (
    ("sgx-dcap/trustee-occlum-v3/quote.dat", dt.datetime(2025, 6, 25, tzinfo=dt.UTC)),
    ("sgx-dcap/phala-dcapqvl-v3/quote.dat", dt.datetime(2025, 6, 25, tzinfo=dt.UTC)),
    ("tdx/gotdxguest-v4-spr/quote.dat", dt.datetime(2023, 7, 1, tzinfo=dt.UTC)),
    ("tdx/gotdxguest-v5/quote.dat", dt.datetime(2026, 2, 3, tzinfo=dt.UTC)),
    ("tdx/trustee-v4/quote.dat", dt.datetime(2025, 6, 25, tzinfo=dt.UTC)),
    ("tdx/trustee-v5/quote.dat", dt.datetime(2025, 6, 25, tzinfo=dt.UTC)),
)


@functools.lru_cache(maxsize=1)
def _vendor_trust() -> Any:
    from keepmesh.protocol.attestation.certs import TrustStore
    return TrustStore()


def _snp_seeds() -> list[tuple[bytes, tuple[bytes, ...], Any, dt.datetime]]:
    from keepmesh.protocol.attestation.certs import cert_der, load_certificates
    s = sim_setup()
    ev = s["evidence"]
    out = [(ev.report, tuple(ev.certs), s["trust"], s["at"])]
    if VECTORS.is_dir():
        base = VECTORS / "sev-snp"
        for report, leaf, product in SNP_VECTORS:
            chain = [cert_der(c) for c in load_certificates(
                (base / f"amd-certs/{product}/ask_ark_asvk.pem").read_bytes())]
            leaf_der = cert_der(load_certificates((base / leaf).read_bytes())[0])
            out.append(((base / report).read_bytes(), (leaf_der, *chain), _vendor_trust(),
                        SNP_AT))
    return out


_snp_cached = functools.lru_cache(maxsize=1)(_snp_seeds)


def _snp_mutate(rng: random.Random, seed: tuple[bytes, tuple[bytes, ...], Any, dt.datetime]
                ) -> tuple[bytes, tuple[bytes, ...], Any, dt.datetime]:
    report, certs, trust, at = seed
    if rng.random() < 0.8 and certs:
        i = rng.randrange(len(certs))
        certs = certs[:i] + (mutate_der(rng, certs[i]),) + certs[i + 1:]
    else:
        report = mutate_bytes(rng, report)
    return report, certs, trust, at


def _snp_run(case: tuple[bytes, tuple[bytes, ...], Any, dt.datetime]) -> object:
    from keepmesh.protocol.attestation.evidence import verify_evidence
    report, certs, trust, at = case
    return verify_evidence(report, certs, trust, at)


@functools.lru_cache(maxsize=1)
def _dcap_seeds() -> list[tuple[bytes, dt.datetime]]:
    return [((VECTORS / rel).read_bytes(), at) for rel, at in DCAP_VECTORS
            if (VECTORS / rel).is_file()]


def _dcap_mutate(rng: random.Random, seed: tuple[bytes, dt.datetime]) -> tuple[bytes, dt.datetime]:
    quote, at = seed
    if rng.random() < 0.8:
        return mutate_embedded_pem(rng, quote), at
    return mutate_bytes(rng, quote), at


def _dcap_run(case: tuple[bytes, dt.datetime]) -> object:
    from keepmesh.protocol.attestation.evidence import verify_evidence
    quote, at = case
    return verify_evidence(quote, (), _vendor_trust(), at)


# collateral: the published collateral for one SGX and one TDX quote


COLLATERAL_VECTORS = (
    ("sgx-dcap/phala-dcapqvl-v3", dt.datetime(2025, 6, 25, tzinfo=dt.UTC)),
    ("tdx/phala-dcapqvl-v4", dt.datetime(2025, 6, 25, tzinfo=dt.UTC)),
)


@functools.lru_cache(maxsize=1)
def _collateral_seeds() -> list[tuple[Any, bytes, dt.datetime]]:
    from keepmesh.protocol.attestation.dcap import verify_quote
    out = []
    for rel, at in COLLATERAL_VECTORS:
        folder = VECTORS / rel
        if not (folder / "collateral.json").is_file():
            continue
        verified = verify_quote((folder / "quote.dat").read_bytes(), (), _vendor_trust(), at)
        out.append((verified, (folder / "collateral.json").read_bytes(), at))
    return out


def _collateral_mutate(rng: random.Random, seed: tuple[Any, bytes, dt.datetime]
                       ) -> tuple[Any, bytes, dt.datetime]:
    verified, blob, at = seed
    r = rng.random()
    if r < 0.35:
        blob = _mutate_json_text(rng, blob)
    elif r < 0.55:
        blob = mutate_embedded_pem(rng, blob.replace(b"\\n", b"\n")).replace(b"\n", b"\\n")
    else:
        blob = mutate_bytes(rng, blob)
    return verified, blob, at


_JSON_VALUES = (b'0', b'-1', b'""', b'null', b'true', b'[]', b'{}', b'1e999', b'"Revoked"',
                b'"UpToDate"', b'[{}]', b'"zz"', b'99999999999999999999', b'[1,2]',
                b'"2099-01-01T00:00:00Z"', b'"not a date"')


def _mutate_json_text(rng: random.Random, blob: bytes) -> bytes:
    """Replace one JSON scalar (possibly inside the signed text) with another value."""
    spans = [m.span() for m in re.finditer(rb'-?\d+(?:\.\d+)?|"(?:[^"\\]|\\.){0,80}"|true|false'
                                           rb'|null', blob[:200000])]
    if not spans:
        return mutate_bytes(rng, blob)
    a, b = spans[rng.randrange(len(spans))]
    value = rng.choice(_JSON_VALUES)
    if blob[a:a + 1] == b'"' and rng.random() < 0.5:
        value = value.replace(b'"', b'\\"')  # inside a JSON string holding JSON text
    return blob[:a] + value + blob[b:]


def _collateral_run(case: tuple[Any, bytes, dt.datetime]) -> object:
    from keepmesh.protocol.attestation.collateral import apply_collateral
    verified, blob, at = case
    return apply_collateral(verified, {"collateral.json": blob}, _vendor_trust(), at)


# -------------------------------------------------------------- wire & co


CHANNEL_EXPORTER = b"\x05" * 32
CHANNEL_RNG_SEED = 1


def _channel_nonce() -> bytes:
    """The nonce the fuzzed channel will pick (same derivation as AttestedChannel)."""
    from keepmesh.protocol.channel import NONCE_LEN
    rng = random.Random(CHANNEL_RNG_SEED)
    return rng.getrandbits(NONCE_LEN * 8).to_bytes(NONCE_LEN, "big")


@functools.lru_cache(maxsize=1)
def _wire_seeds() -> list[bytes]:
    from keepmesh.protocol.channel import (
        ChannelAccept,
        ChannelHello,
        ChannelProof,
        ChannelReject,
        proof_payload,
    )
    from keepmesh.protocol.wire import encode_frame
    s = sim_setup()
    # A proof the fuzzed initiator accepts: signed by the peer over (responder, the
    # session exporter, our nonce), so mutations reach evidence verification.
    signature = s["identity"].sign(proof_payload(False, CHANNEL_EXPORTER, _channel_nonce()))
    msgs = [ChannelHello(role="agent", nonce=b"\x01" * 32, want="any"),
            ChannelProof(signature=signature, evidence=s["evidence"], issued_at=s["issued"]),
            ChannelProof(signature=b"\x02" * 64), ChannelAccept(cached=1),
            ChannelReject(reason="no")]
    out = [encode_frame(m) for m in msgs]
    out += [encode_frame(_record()), b""]
    return out


def _wire_mutate(rng: random.Random, seed: bytes) -> bytes:
    return mutate_bytes(rng, seed, _wire_seeds())


def _wire_run(data: bytes) -> object:
    from keepmesh.protocol.wire import FrameDecoder
    dec = FrameDecoder(max_size=256 * 1024)
    out = []
    # Feed in two chunks: reassembly is part of what is under test.
    cut = len(data) // 2
    for chunk in (data[:cut], data[cut:]):
        out.extend(dec.feed(chunk))
    return out


@functools.lru_cache(maxsize=1)
def _signer() -> Any:
    from keepmesh.protocol.membership.signing import Ed25519Signer
    return Ed25519Signer(b"\x07" * 32)


def _record() -> Any:
    from keepmesh.protocol.membership.records import make_record
    return make_record(_signer(), "127.0.0.1:7400", 3, labels={"zone": "a", "rack": "r1"})


@functools.lru_cache(maxsize=1)
def _record_seeds() -> list[bytes]:
    from keepmesh.protocol.membership.records import make_record
    return [_record().encoded,
            make_record(_signer(), "node-1.example:7400", 0).encoded]


def _record_mutate(rng: random.Random, seed: bytes) -> bytes:
    return mutate_bytes(rng, seed, _record_seeds())


def _record_run(data: bytes) -> object:
    from keepmesh.protocol.membership.records import decode_record
    from keepmesh.protocol.membership.signing import Ed25519Verifier
    record = decode_record(data)
    record.verify(Ed25519Verifier())
    return record


# channel: a responder fed mutated control-stream payloads


def _channel_payloads() -> list[bytes]:
    return [f[4:] for f in _wire_seeds()[:5]]


@functools.lru_cache(maxsize=1)
def _channel_seeds() -> list[list[bytes]]:
    """Valid control-stream conversations: a hello then a proof/accept/reject."""
    hello, proof, bare, accept, reject = _channel_payloads()
    return [[hello, proof], [hello, proof, accept], [hello, bare], [hello, reject], [proof]]


def _channel_mutate(rng: random.Random, seed: list[bytes]) -> list[bytes]:
    seq = list(seed)
    i = rng.randrange(len(seq))
    seq[i] = mutate_bytes(rng, seq[i], _channel_payloads())
    return seq


class ChannelCrash(Exception):
    """The channel state machine raised instead of failing the session."""


def _channel_run(payloads: list[bytes]) -> object:
    from keepmesh.protocol.attestation.policy import Policy
    from keepmesh.protocol.channel import (
        CHANNEL_MESSAGES,
        AttestedChannel,
        ChannelConfig,
        EvidenceCache,
        Failed,
    )
    from keepmesh.protocol.wire import decode_payload
    s = sim_setup()
    ident = s["identity"]
    config = ChannelConfig(role="agent", trust=s["trust"],
                           policy=Policy(allow_sim=True, sim_roots=(s["fp"],)))
    ch = AttestedChannel(initiator=True, local_identity=b"\x09" * 32, sign=lambda d: b"\0" * 64,
                         peer_identity=ident.public_bytes, exporter=CHANNEL_EXPORTER,
                         config=config, cache=EvidenceCache(),
                         rng=random.Random(CHANNEL_RNG_SEED))
    now = float(s["issued"])
    ch.start(now)
    for p in payloads:
        try:
            msg = decode_payload(p, expect=CHANNEL_MESSAGES)
        except ProtocolError:
            continue  # the glue fails the connection; decoding is the wire target
        ch.receive(msg, now)  # must never raise: failures become chan.reject
        if ch.internal_error is not None:
            raise ch.internal_error  # the channel survived it, but it is a bug
        ch.messages_to_send()
        while (event := ch.next_event()) is not None:
            if isinstance(event, Failed):
                raise ProtocolError(event.reason)  # the session failed cleanly: rejected
    return ch.state


# ------------------------------------------------------------ text formats

POLICY_SEED = """\
allowed_tee = ["snp", "tdx", "sim"]
allow_sim = true
sim_roots = ["{fp}"]
allow_debug = false
accepted_tcb_status = ["UpToDate", "unknown"]
max_evidence_age_s = 600

[snp]
measurements = ["{m}"]
min_tcb = {{ bootloader = 3, tee = 0, snp = 8, microcode = 115 }}
min_guest_svn = 0
max_vmpl = 0

[sgx]
mrenclave = ["{e}"]
isvprodid = [1]
min_isvsvn = 2

[tdx]
mrtd = ["{m}"]
rtmr0 = []
min_tcb = {{ }}
"""
POLICY_KEYS = ("allowed_tee", "allow_sim", "sim_roots", "allow_debug", "accepted_tcb_status",
               "max_evidence_age_s", "measurements", "min_tcb", "min_guest_svn", "max_vmpl",
               "mrenclave", "mrsigner", "isvprodid", "min_isvsvn", "mrtd", "rtmr0")


@functools.lru_cache(maxsize=1)
def _policy_seeds() -> list[str]:
    return [POLICY_SEED.format(fp="ab" * 32, m="cd" * 48, e="ef" * 32), "allow_sim = true\n",
            ""]


def _policy_mutate(rng: random.Random, seed: str) -> str:
    return mutate_text(rng, seed, _toml_tokens(POLICY_KEYS))


def _policy_run(text: str) -> object:
    from keepmesh.protocol.attestation.policy import appraise, load_policy
    s = sim_setup()
    policy = load_policy(text, "fuzz.toml")
    verified = sim_verified()
    appraise(policy, verified, evidence_issued_at=float(s["issued"]), now=float(s["issued"]))
    return policy


@functools.lru_cache(maxsize=1)
def sim_verified() -> Any:
    from keepmesh.protocol.attestation.evidence import verify_evidence_record
    s = sim_setup()
    return verify_evidence_record(s["evidence"], s["trust"], s["at"])


MANIFEST_SEED = """\
name = "demo"
module = "demo.wasm"
policy = "policy.toml"
args = ["--x", "1"]

[env]
GREETING = "hi"

[resources]
memory = "64MiB"
fuel = 1000000
timeout_ms = 5000
stateful = true
"""
MANIFEST_KEYS = ("name", "module", "policy", "args", "memory", "memory_limit", "fuel",
                 "timeout_ms", "stateful")


def _manifest_mutate(rng: random.Random, seed: str) -> str:
    return mutate_text(rng, seed, _toml_tokens(MANIFEST_KEYS))


def _manifest_run(text: str) -> object:
    from keepmesh.protocol.deployment import parse_manifest_toml
    return parse_manifest_toml(text, "fuzz.toml")


@functools.lru_cache(maxsize=1)
def _topology_seeds() -> list[str]:
    folder = REPO / "simulations" / "topologies"
    return [p.read_text() for p in sorted(folder.glob("*.toml"))][:8] or ["[mesh]\nagents = 3\n"]


TOPOLOGY_KEYS = ("agents", "duration_s", "profile", "seeds", "attestation", "update_at_s",
                 "sample_interval_s", "bootstrap", "latency_ms", "jitter_ms", "loss",
                 "bandwidth_mbps", "distribution", "name", "count", "at_s", "kind", "group",
                 "from", "to", "fraction")


def _topology_mutate(rng: random.Random, seed: str) -> str:
    return mutate_text(rng, seed, _toml_tokens(TOPOLOGY_KEYS))


@functools.lru_cache(maxsize=1)
def _scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="keepmesh-fuzz-files-"))


def _topology_run(text: str) -> object:
    from keepmesh.simulations.topology import load_topology
    path = _scratch_dir() / "topology.toml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    return load_topology(path)


CONFIG_SEED = """\
listen = "0.0.0.0:7400"
advertise = "10.0.0.5:7400"
join = ["10.0.0.6:7400", "node-2:7400"]
tee = "sim"
sim_root = "sim-root"
data_dir = "data"
roots = ["extra-root.pem"]
policy = "policy.toml"
collateral = "collateral"
owners = ["{owner}"]
profile = "lan"

[labels]
zone = "edge-1"
"""
CONFIG_KEYS = ("listen", "advertise", "join", "tee", "sim_root", "data_dir", "roots", "policy",
               "collateral", "owners", "profile", "labels")


def _config_mutate(rng: random.Random, seed: str) -> str:
    return mutate_text(rng, seed, _toml_tokens(CONFIG_KEYS))


def _config_run(text: str) -> object:
    from keepmesh.agent.config import load_config
    path = _scratch_dir() / "agent.toml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    return load_config(path)


def _topology_declared() -> tuple[type[BaseException], ...]:
    from keepmesh.simulations.topology import TopologyError
    return (TopologyError,)


def targets() -> dict[str, Target]:
    return {t.name: t for t in (
        Target("wire", _wire_seeds, _wire_mutate, _wire_run),
        Target("records", _record_seeds, _record_mutate, _record_run),
        Target("channel", _channel_seeds, _channel_mutate, _channel_run),
        Target("snp", _snp_cached, _snp_mutate, _snp_run),
        Target("dcap", _dcap_seeds, _dcap_mutate, _dcap_run, needs_vectors=True),
        Target("collateral", _collateral_seeds, _collateral_mutate, _collateral_run,
               needs_vectors=True),
        Target("policy", _policy_seeds, _policy_mutate, _policy_run),
        Target("manifest", lambda: (MANIFEST_SEED,), _manifest_mutate, _manifest_run),
        Target("topology", _topology_seeds, _topology_mutate, _topology_run,
               declared=_topology_declared()),
        Target("config", lambda: (CONFIG_SEED.format(owner="ab" * 32),), _config_mutate,
               _config_run),
    )}
