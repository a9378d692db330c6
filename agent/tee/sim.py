"""INSECURE simulated TEE: genuine SEV-SNP-format evidence from local keys.

Why simulate this way: machines without TEE hardware (laptops, CI, the
simulator) must still exercise the *real* verification path, so the sim TEE
emits byte-exact SNP attestation reports signed by a locally generated
ARK -> ASK -> VCEK chain with AMD's algorithms (RSASSA-PSS/SHA-384 CA
signatures, ECDSA P-384 report signature) and AMD's VCEK extensions. The
verifier treats it like hardware except that the chain ends in a non-vendor
root, which makes it `tee="sim"` and rejected by any policy that does not
explicitly allow sim and that root.

Every certificate says "keepmesh INSECURE sim": whoever holds the root
directory can forge evidence for any measurement.

Root dir (`keepmesh sim init-root DIR`): ark.pem (the root to trust),
ark.key, ask.pem, ask.key (keys 0600). Agent data dir: sim-chip-id,
sim-vcek.key (0600), sim-vcek.pem, and optionally sim-tcb.json.

TCB knob (`keepmesh sim set-tcb DATA_DIR microcode=200`): sim-tcb.json holds
the platform's TCB components; the running agent re-reads it (one stat per
report) and from then on reports it in every evidence, signed by a VCEK
certified for that TCB, as a TCB rollback or update on real hardware would
(AMD derives a VCEK per TCB). Tests and demos use it to take trust away.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from keepmesh.protocol.attestation import snp
from keepmesh.protocol.attestation.certs import (
    cert_der,
    fingerprint,
    load_certificates,
    verify_issued_by,
)
from keepmesh.protocol.attestation.evidence import Evidence
from keepmesh.protocol.errors import VerificationError

from .measurement import code_measurement

INSECURE_LABEL = "keepmesh INSECURE sim"
PRODUCT = "Milan"
SIM_TCB = {"bootloader": 3, "tee": 0, "snp": 22, "microcode": 213}
SIM_CPUID = (0x19, 0x01, 0x01)  # family/model/stepping of a Milan part
SIM_FIRMWARE = (21, 55, 1)      # build, minor, major
SIM_POLICY = snp.POLICY_RESERVED_1 | snp.POLICY_SMT  # 0x30000: debug and migration off
SIM_PLATFORM_INFO = 0x1         # SMT enabled
DEFAULT_ROOT_BITS = 4096
TCB_FILE = "sim-tcb.json"
MAX_TCB_FILE = 4096


class SimRootError(Exception):
    """The sim root directory is missing, incomplete or would be overwritten."""


class SimTcbError(Exception):
    """A TCB setting is invalid or the data dir is not a sim agent's (one-line reason)."""


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, INSECURE_LABEL),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "keepmesh simulated TEE (NOT SECURE)"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret atomically with mode 0600 from the first byte."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _key_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


ROOT_FILES = ("ark.pem", "ark.key", "ask.pem", "ask.key")


def init_sim_root(directory: str | os.PathLike[str], *,
                  key_bits: int = DEFAULT_ROOT_BITS) -> x509.Certificate:
    """Create an INSECURE ARK -> ASK in `directory`; refuse to overwrite one.

    Returns the ARK certificate (the root verifiers must add as an extra root).
    """
    root = Path(directory)
    existing = [n for n in ROOT_FILES if (root / n).exists()]
    if existing:
        raise SimRootError(f"{root / existing[0]} already exists; refusing to overwrite")
    if root.exists() and not root.is_dir():
        raise SimRootError(f"{root} is not a directory")
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = _now()
    ark_key = rsa.generate_private_key(65537, key_bits)
    ask_key = rsa.generate_private_key(65537, key_bits)
    ark_name = _name(f"{INSECURE_LABEL} ARK-{PRODUCT}")
    ask_name = _name(f"{INSECURE_LABEL} SEV-{PRODUCT}")
    ca = x509.BasicConstraints(ca=True, path_length=None)
    usage = x509.KeyUsage(digital_signature=False, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=True, crl_sign=True, encipher_only=False,
                          decipher_only=False)
    ark = (x509.CertificateBuilder().subject_name(ark_name).issuer_name(ark_name)
           .public_key(ark_key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - dt.timedelta(days=1))
           .not_valid_after(now + dt.timedelta(days=25 * 365))
           .add_extension(ca, critical=True).add_extension(usage, critical=True)
           .sign(ark_key, hashes.SHA384(), rsa_padding=_pss()))
    ask = (x509.CertificateBuilder().subject_name(ask_name).issuer_name(ark_name)
           .public_key(ask_key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - dt.timedelta(days=1))
           .not_valid_after(now + dt.timedelta(days=25 * 365))
           .add_extension(ca, critical=True).add_extension(usage, critical=True)
           .sign(ark_key, hashes.SHA384(), rsa_padding=_pss()))
    _write_private(root / "ark.key", _key_pem(ark_key))
    _write_private(root / "ask.key", _key_pem(ask_key))
    _write_public(root / "ask.pem", ask.public_bytes(serialization.Encoding.PEM))
    # ark.pem last: its presence marks a complete root.
    _write_public(root / "ark.pem", ark.public_bytes(serialization.Encoding.PEM))
    return ark


def read_sim_root(directory: str | os.PathLike[str]) -> x509.Certificate:
    """The ARK certificate of a sim root dir (to add to a TrustStore)."""
    path = Path(directory) / "ark.pem"
    try:
        certs = load_certificates(path.read_bytes())
    except OSError as err:
        raise SimRootError(f"cannot read sim root {path}: {err.strerror}") from None
    if len(certs) != 1:
        raise SimRootError(f"{path}: expected one certificate")
    return certs[0]


def _der_int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def _der_ia5(text: str) -> bytes:
    raw = text.encode("ascii")
    return bytes([0x16, len(raw)]) + raw


def _check_tcb(tcb: object, where: str) -> dict[str, int]:
    """A complete, in-range TCB (every SIM_TCB component, 0..255) or SimTcbError."""
    if not isinstance(tcb, dict):
        raise SimTcbError(f"{where}: expected a table of TCB components")
    unknown = sorted(str(k) for k in tcb if k not in SIM_TCB)
    if unknown:
        raise SimTcbError(f"{where}: unknown TCB component {unknown[0][:40]!r} "
                          f"(known: {', '.join(SIM_TCB)})")
    out = dict(SIM_TCB)
    for name, value in tcb.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
            raise SimTcbError(f"{where}: {name} must be an integer 0..255")
        out[name] = value
    return out


def read_sim_tcb(data_dir: str | os.PathLike[str]) -> dict[str, int]:
    """The TCB a sim agent with this data dir reports (SIM_TCB unless set-tcb changed it)."""
    path = Path(data_dir) / TCB_FILE
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_TCB_FILE + 1)
    except FileNotFoundError:
        return dict(SIM_TCB)
    except OSError as err:
        raise SimTcbError(f"cannot read {path}: {err.strerror}") from None
    if len(raw) > MAX_TCB_FILE:
        raise SimTcbError(f"{path}: larger than {MAX_TCB_FILE} bytes")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise SimTcbError(f"{path}: not valid JSON") from None
    return _check_tcb(doc, str(path))


def parse_tcb_assignments(items: list[str]) -> dict[str, int]:
    """`COMPONENT=N` strings to a dict; one-line SimTcbError on the first bad one."""
    if not items:
        raise SimTcbError("give at least one COMPONENT=N (e.g. microcode=200)")
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise SimTcbError(f"{item[:60]!r}: expected COMPONENT=N (e.g. microcode=200)")
        if name not in SIM_TCB:
            raise SimTcbError(f"unknown TCB component {name[:40]!r} "
                              f"(known: {', '.join(SIM_TCB)})")
        try:
            number = int(value.strip(), 10)
        except ValueError:
            raise SimTcbError(f"{name}: {value[:40]!r} is not an integer") from None
        if not 0 <= number <= 255:
            raise SimTcbError(f"{name}: {number} outside 0..255")
        out[name] = number
    return out


def set_sim_tcb(data_dir: str | os.PathLike[str], changes: dict[str, int]) -> dict[str, int]:
    """Write the new TCB for the sim agent using `data_dir`; return the full TCB.

    Refuses a directory that is not a sim agent's data dir (no sim-chip-id),
    so a typo cannot silently create a file nobody reads.
    """
    given = Path(data_dir)
    if not given.is_dir():
        raise SimTcbError(f"{given}: no such directory")
    # The agent keeps its sim TEE state in DATA_DIR/tee; accept that dir itself too.
    root = next((d for d in (given / "tee", given) if (d / "sim-chip-id").is_file()), None)
    if root is None:
        raise SimTcbError(f"{given}: not a sim agent data dir (no sim-chip-id; start an agent "
                          "with --tee sim --data-dir first)")
    _check_tcb(dict(changes), "set-tcb")
    tcb = read_sim_tcb(root)
    tcb.update(changes)
    _write_public(root / TCB_FILE, json.dumps(tcb, sort_keys=True).encode() + b"\n")
    return tcb


def _vcek_extensions(chip_id: bytes,
                     tcb: dict[str, int] | None = None) -> list[x509.UnrecognizedExtension]:
    def ext(oid: str, value: bytes) -> x509.UnrecognizedExtension:
        return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)
    tcb = SIM_TCB if tcb is None else tcb
    base = "1.3.6.1.4.1.3704.1"
    exts = [ext(snp.OID_STRUCT_VERSION, _der_int(0)),
            ext(snp.OID_PRODUCT_NAME, _der_ia5(f"{PRODUCT}-B0")),
            ext(snp.OID_BL_SPL, _der_int(tcb["bootloader"])),
            ext(snp.OID_TEE_SPL, _der_int(tcb["tee"]))]
    exts += [ext(f"{base}.3.{i}", _der_int(0)) for i in (4, 5, 6, 7)]
    exts += [ext(snp.OID_SNP_SPL, _der_int(tcb["snp"])),
             ext(snp.OID_UCODE_SPL, _der_int(tcb["microcode"])),
             ext(snp.OID_HWID, bytes([0x04, 0x40]) + chip_id)]
    return exts


class SimTee:
    """TeeBackend for the simulated TEE (kind "sim"); see module docstring."""

    kind = "sim"
    name = "sim"

    def __init__(self, root_dir: str | os.PathLike[str],
                 data_dir: str | os.PathLike[str]) -> None:
        self.root_dir = Path(root_dir)
        self.data_dir = Path(data_dir)
        try:
            self._ark = read_sim_root(self.root_dir)
            ask_certs = load_certificates((self.root_dir / "ask.pem").read_bytes())
            ask_key = serialization.load_pem_private_key(
                (self.root_dir / "ask.key").read_bytes(), password=None)
        except (OSError, ValueError) as err:
            raise SimRootError(f"sim root {self.root_dir} unusable: {err}") from None
        if len(ask_certs) != 1 or not isinstance(ask_key, rsa.RSAPrivateKey):
            raise SimRootError(f"sim root {self.root_dir}: bad ask.pem/ask.key")
        self._ask = ask_certs[0]
        self._ask_key = ask_key
        self.root_fingerprint = fingerprint(self._ark)
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.chip_id = self._load_chip_id()
        self._lock = threading.Lock()  # collect() runs in worker threads
        self._tcb_stamp: tuple[int, int] | None = None
        self.tcb_error = ""  # why the last sim-tcb.json was ignored (kept the previous TCB)
        self.tcb = self._read_tcb_file() or dict(SIM_TCB)
        self._vcek_key, self._vcek = self._load_vcek()
        self._report_id = secrets.token_bytes(32)  # per launch, like a fresh guest

    def _read_tcb_file(self) -> dict[str, int] | None:
        """The TCB in sim-tcb.json if it changed since the last look (None: unchanged,
        missing or invalid; an invalid file is reported in `tcb_error` and ignored)."""
        path = self.data_dir / TCB_FILE
        try:
            st = path.stat()
        except OSError:
            stamp = None
        else:
            stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._tcb_stamp:
            return None
        self._tcb_stamp = stamp
        if stamp is None:
            return dict(SIM_TCB)
        try:
            tcb = read_sim_tcb(self.data_dir)
        except SimTcbError as err:
            self.tcb_error = str(err)
            return None
        self.tcb_error = ""
        return tcb

    def refresh_tcb(self) -> dict[str, int]:
        """Pick up `keepmesh sim set-tcb` (one stat when nothing changed); a new TCB
        gets a VCEK certified for it, as AMD issues one VCEK per TCB."""
        with self._lock:
            tcb = self._read_tcb_file()
            if tcb is not None and tcb != self.tcb:
                self.tcb = tcb
                self._vcek_key, self._vcek = self._load_vcek()
            return dict(self.tcb)

    def state_token(self) -> tuple[tuple[str, int], ...]:
        """Changes whenever evidence issued now would differ from cached evidence
        (LocalAttester drops its cached generic evidence when it does)."""
        return tuple(sorted(self.refresh_tcb().items()))

    def _load_chip_id(self) -> bytes:
        path = self.data_dir / "sim-chip-id"
        try:
            chip = bytes.fromhex(path.read_text().strip())
            if len(chip) == 64:
                return chip
        except (OSError, ValueError):
            pass
        chip = secrets.token_bytes(64)
        _write_public(path, chip.hex().encode() + b"\n")
        return chip

    def _load_vcek(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key_path, cert_path = self.data_dir / "sim-vcek.key", self.data_dir / "sim-vcek.pem"
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            certs = load_certificates(cert_path.read_bytes())
            if isinstance(key, ec.EllipticCurvePrivateKey) and len(certs) == 1:
                cert = certs[0]
                verify_issued_by(cert, self._ask)  # stale after a root re-init
                if (cert.not_valid_after_utc > _now() + dt.timedelta(days=1)
                        and cert.public_key() == key.public_key()
                        and snp.cert_hwid(cert) == self.chip_id
                        and snp.cert_tcb(cert) == {k: v for k, v in self.tcb.items()
                                                   if k in snp.cert_tcb(cert)}):
                    return key, cert
        except (OSError, ValueError, VerificationError):
            pass
        key = ec.generate_private_key(ec.SECP384R1())
        now = _now()
        builder = (x509.CertificateBuilder().subject_name(_name("SEV-VCEK"))
                   .issuer_name(self._ask.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(days=1))
                   .not_valid_after(now + dt.timedelta(days=7 * 365)))
        for ext in _vcek_extensions(self.chip_id, self.tcb):
            builder = builder.add_extension(ext, critical=False)
        cert = builder.sign(self._ask_key, hashes.SHA384(), rsa_padding=_pss())
        _write_private(key_path, _key_pem(key))
        _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return key, cert

    def report(self, report_data: bytes, *, measurement: bytes | None = None,
               policy: int = SIM_POLICY) -> bytes:
        """A signed SNP report; `measurement`/`policy` overrides exist for tests."""
        return self._report(report_data, measurement, policy)[0]

    def _report(self, report_data: bytes, measurement: bytes | None,
                policy: int) -> tuple[bytes, x509.Certificate]:
        """The report and the VCEK that signed it (one consistent TCB for both)."""
        if len(report_data) > 64:
            raise ValueError(f"report_data of {len(report_data)} bytes exceeds 64")
        self.refresh_tcb()
        with self._lock:
            current, key, vcek = dict(self.tcb), self._vcek_key, self._vcek
        tcb = snp.encode_tcb(current, PRODUCT)
        body = snp.build_report(
            version=3, guest_svn=0, policy=policy, vmpl=0, current_tcb=tcb,
            platform_info=SIM_PLATFORM_INFO, signing_key=snp.SIGNING_KEY_VCEK,
            report_data=report_data,
            measurement=code_measurement() if measurement is None else measurement,
            report_id=self._report_id, reported_tcb=tcb, cpuid=SIM_CPUID,
            chip_id=self.chip_id, current_version=SIM_FIRMWARE)
        r, s = decode_dss_signature(key.sign(body, ec.ECDSA(hashes.SHA384())))
        return snp.attach_signature(body, r, s), vcek

    def collect(self, report_data: bytes) -> Evidence:
        report, vcek = self._report(report_data, None, SIM_POLICY)
        return Evidence(format="sev-snp", report=report,
                        certs=(cert_der(vcek), cert_der(self._ask)))
