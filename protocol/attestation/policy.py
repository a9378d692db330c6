"""Appraisal policy: is verified evidence *acceptable* for this deployment?

Why separate from verification: a verifier establishes facts (this report is
genuine and says X); a policy, signed by the workload owner, decides whether
X is good enough. Policies arrive as untrusted TOML (operator files) or as a
dict inside a signed deployment, so loading is strict: an unknown key or a
wrong type is an error naming the source and the key, never ignored.

Defaults fail closed (specs/attestation.md, "What an agent accepts by
default"): hardware TEEs only (snp, sgx, tdx), no debug, no sim, SNP guests
at VMPL 0 only, and a TCB status per kind: SGX/TDX need "UpToDate", which
only Intel's signed collateral can establish ("unknown" = no collateral was
applied = rejected); SEV-SNP accepts "UpToDate" or "unknown" because AMD
publishes no TCB-status verdict at all, so its gates are the `min_tcb`
floors, VMPL, debug and (with collateral) AMD's CRLs. Sim evidence must pass
`allow_sim`, `sim_roots` *and* `allowed_tee` (which lists "sim" implicitly
only when `allowed_tee` is left unset and `allow_sim` is true).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from typing import Any

from ..errors import ProtocolError, VerificationError
from .boundary import fault_boundary
from .evidence import TEE_KINDS, VerifiedEvidence

HARDWARE_TEES = ("snp", "sgx", "tdx")
DEFAULT_TCB_STATUSES: dict[str, tuple[str, ...]] = {
    "sgx": ("UpToDate",), "tdx": ("UpToDate",),
    "snp": ("UpToDate", "unknown"), "sim": ("UpToDate", "unknown"),
}
"""accepted_tcb_status when a policy sets none, by evidence kind (`tee`)."""
MAX_VMPL = 3
MAX_LIST = 256
CLOCK_SKEW_S = 300.0
"""Evidence stamped up to this far in the future (clock skew) is tolerated."""


class PolicyError(VerificationError):
    """Evidence is genuine but does not satisfy the policy; names the field."""


@dataclasses.dataclass(frozen=True)
class SnpPolicy:
    measurements: tuple[bytes, ...] = ()
    min_tcb: Mapping[str, int] = dataclasses.field(default_factory=dict)
    min_guest_svn: int = 0
    max_vmpl: int = 0
    """Highest VMPL the reporting guest may run at; 0 = the most privileged level only."""


@dataclasses.dataclass(frozen=True)
class SgxPolicy:
    mrenclave: tuple[bytes, ...] = ()
    mrsigner: tuple[bytes, ...] = ()
    isvprodid: tuple[int, ...] = ()
    min_isvsvn: int = 0
    min_tcb: Mapping[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TdxPolicy:
    mrtd: tuple[bytes, ...] = ()
    rtmr0: tuple[bytes, ...] = ()
    rtmr1: tuple[bytes, ...] = ()
    rtmr2: tuple[bytes, ...] = ()
    rtmr3: tuple[bytes, ...] = ()
    min_tcb: Mapping[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Policy:
    """An appraisal policy. Empty measurement lists mean "any".

    `allowed_tee` None: the hardware kinds, plus "sim" when `allow_sim`.
    `accepted_tcb_status` None: DEFAULT_TCB_STATUSES for the evidence's kind.
    """

    allowed_tee: tuple[str, ...] | None = None
    allow_sim: bool = False
    sim_roots: tuple[bytes, ...] = ()
    allow_debug: bool = False
    accepted_tcb_status: tuple[str, ...] | None = None
    max_evidence_age_s: float | None = None
    snp: SnpPolicy = dataclasses.field(default_factory=SnpPolicy)
    sgx: SgxPolicy = dataclasses.field(default_factory=SgxPolicy)
    tdx: TdxPolicy = dataclasses.field(default_factory=TdxPolicy)

    def tees(self) -> tuple[str, ...]:
        """The evidence kinds this policy admits (sim still needs allow_sim)."""
        if self.allowed_tee is not None:
            return self.allowed_tee
        return HARDWARE_TEES + (("sim",) if self.allow_sim else ())

    def tcb_statuses(self, tee: str) -> tuple[str, ...]:
        """TCB statuses accepted for evidence of kind `tee`."""
        if self.accepted_tcb_status is not None:
            return self.accepted_tcb_status
        return DEFAULT_TCB_STATUSES.get(tee, ("UpToDate",))

    def to_dict(self) -> dict[str, Any]:
        """JSON/msgpack/TOML-able form; `policy_from_dict` reads it back."""
        def conv(value: Any) -> Any:
            if isinstance(value, bytes):
                return value.hex()
            if isinstance(value, tuple):
                return [conv(v) for v in value]
            if isinstance(value, Mapping):
                return {k: conv(v) for k, v in value.items()}
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                return {f.name: conv(getattr(value, f.name)) for f in dataclasses.fields(value)}
            return value
        out: dict[str, Any] = conv(self)
        for key in ("max_evidence_age_s", "allowed_tee", "accepted_tcb_status"):
            if out[key] is None:
                del out[key]  # unset: the documented default applies when read back
        return out


# ------------------------------------------------------------------ loading

_SECTIONS: dict[str, type[Any]] = {"snp": SnpPolicy, "sgx": SgxPolicy, "tdx": TdxPolicy}
_HEX_LENGTHS = {"measurements": 48, "mrenclave": 32, "mrsigner": 32, "mrtd": 48, "rtmr0": 48,
                "rtmr1": 48, "rtmr2": 48, "rtmr3": 48, "sim_roots": 32}


def _bad(source: str, key: str, why: str) -> ProtocolError:
    return ProtocolError(f"{source}: key {key!r}: {why}")


def _int(source: str, key: str, value: Any, lo: int = 0, hi: int = 2**64 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(source, key, f"expects an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise _bad(source, key, f"{value} outside {lo}..{hi}")
    return value


def _bool(source: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(source, key, f"expects true/false, got {type(value).__name__}")
    return value


def _list(source: str, key: str, value: Any) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise _bad(source, key, f"expects a list, got {type(value).__name__}")
    if len(value) > MAX_LIST:
        raise _bad(source, key, f"more than {MAX_LIST} entries")
    return list(value)


def _hex_list(source: str, key: str, value: Any, size: int) -> tuple[bytes, ...]:
    out = []
    for i, item in enumerate(_list(source, key, value)):
        if not isinstance(item, str):
            raise _bad(source, f"{key}[{i}]", f"expects a hex string, got {type(item).__name__}")
        try:
            raw = bytes.fromhex(item)
        except ValueError:
            raise _bad(source, f"{key}[{i}]", "not hex") from None
        if len(raw) != size:
            raise _bad(source, f"{key}[{i}]", f"expects {size} bytes, got {len(raw)}")
        out.append(raw)
    return tuple(out)


def _str_list(source: str, key: str, value: Any,
              choices: tuple[str, ...] | None = None) -> tuple[str, ...]:
    out = []
    for i, item in enumerate(_list(source, key, value)):
        if not isinstance(item, str) or len(item) > 64:
            raise _bad(source, f"{key}[{i}]", "expects a short string")
        if choices is not None and item not in choices:
            raise _bad(source, f"{key}[{i}]", f"{item!r} not one of {list(choices)}")
        out.append(item)
    return tuple(out)


def _tcb(source: str, key: str, value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise _bad(source, key, f"expects a table, got {type(value).__name__}")
    if len(value) > 64:
        raise _bad(source, key, "too many entries")
    out = {}
    for name, floor in value.items():
        if not isinstance(name, str) or len(name) > 64:
            raise _bad(source, key, "component names must be short strings")
        out[name] = _int(source, f"{key}.{name}", floor)
    return out


def _section(source: str, name: str, value: Any) -> Any:
    cls = _SECTIONS[name]
    if not isinstance(value, Mapping):
        raise _bad(source, name, f"expects a table, got {type(value).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, item in value.items():
        full = f"{name}.{key}"
        if key not in known:
            raise _bad(source, full, "unknown key")
        if key in _HEX_LENGTHS:
            kwargs[key] = _hex_list(source, full, item, _HEX_LENGTHS[key])
        elif key == "min_tcb":
            kwargs[key] = _tcb(source, full, item)
        elif key == "isvprodid":
            kwargs[key] = tuple(_int(source, f"{full}[{i}]", v, 0, 0xFFFF)
                                for i, v in enumerate(_list(source, full, item)))
        elif key == "max_vmpl":
            kwargs[key] = _int(source, full, item, 0, MAX_VMPL)
        else:  # min_isvsvn, min_guest_svn
            kwargs[key] = _int(source, full, item, 0, 2**32 - 1)
    return cls(**kwargs)


@fault_boundary("policy")
def policy_from_dict(data: Mapping[str, Any], source: str = "policy") -> Policy:
    """Build a Policy from parsed TOML/JSON/msgpack; strict about keys and types."""
    if not isinstance(data, Mapping):
        raise ProtocolError(f"{source}: policy must be a table")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ProtocolError(f"{source}: non-string key")
        if key in _SECTIONS:
            kwargs[key] = _section(source, key, value)
        elif key == "allowed_tee":
            kwargs[key] = _str_list(source, key, value, TEE_KINDS)
        elif key in ("allow_sim", "allow_debug"):
            kwargs[key] = _bool(source, key, value)
        elif key == "sim_roots":
            kwargs[key] = _hex_list(source, key, value, 32)
        elif key == "accepted_tcb_status":
            kwargs[key] = _str_list(source, key, value)
        elif key == "max_evidence_age_s":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    0 < value <= 10 * 365 * 86400):
                raise _bad(source, key, "expects a positive number of seconds")
            kwargs[key] = float(value)
        else:
            raise _bad(source, key, "unknown key")
    return Policy(**kwargs)


MAX_POLICY_FILE = 256 * 1024  # characters of a policy file, and bytes read of one


@fault_boundary("policy")
def load_policy(text: str | bytes, source_name: str = "policy") -> Policy:
    """Parse a TOML policy file's text; errors name `source_name` and the key."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{source_name}: policy is not UTF-8") from None
    if len(text) > MAX_POLICY_FILE:
        raise ProtocolError(f"{source_name}: policy file too large")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProtocolError(f"{source_name}: invalid TOML ({err})") from None
    except RecursionError:
        raise ProtocolError(f"{source_name}: invalid TOML (nested too deeply)") from None
    return policy_from_dict(data, source_name)


# ---------------------------------------------------------------- appraisal


def _fail(field: str, expected: str, actual: str) -> PolicyError:
    return PolicyError(f"policy: {field}: expected {expected}, got {actual}")


def _hexes(values: tuple[bytes, ...]) -> str:
    shown = ", ".join(v.hex() for v in values[:4])
    more = f", ... ({len(values)} total)" if len(values) > 4 else ""
    return f"one of [{shown}{more}]"


def _claim_bytes(verified: VerifiedEvidence, name: str) -> bytes | None:
    value = verified.claims.get(name)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError:
            return None
    return None


def _claim_int(verified: VerifiedEvidence, name: str) -> int | None:
    value = verified.claims.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_in(field: str, accepted: tuple[bytes, ...], actual: bytes | None) -> None:
    if not accepted:
        return
    if actual is None:
        raise _fail(field, _hexes(accepted), "no value in evidence")
    if actual not in accepted:
        raise _fail(field, _hexes(accepted), actual.hex())


def _check_min_tcb(section: str, floors: Mapping[str, int], tcb: Mapping[str, int]) -> None:
    for name, floor in floors.items():
        actual = tcb.get(name)
        if actual is None:
            raise _fail(f"{section}.min_tcb.{name}", f">= {floor}", "no such TCB component")
        if actual < floor:
            raise _fail(f"{section}.min_tcb.{name}", f">= {floor}", str(actual))


def _rtmr(verified: VerifiedEvidence, i: int) -> bytes | None:
    single = _claim_bytes(verified, f"rtmr{i}")
    if single is not None:
        return single
    rtmrs = verified.claims.get("rtmrs")
    if isinstance(rtmrs, (list, tuple)) and len(rtmrs) > i:
        item = rtmrs[i]
        if isinstance(item, (bytes, bytearray)):
            return bytes(item)
        if isinstance(item, str):
            try:
                return bytes.fromhex(item)
            except ValueError:
                return None
    return None


def appraise(policy: Policy, verified: VerifiedEvidence, *,
             evidence_issued_at: float | None = None, now: float | None = None) -> None:
    """Raise PolicyError naming the first unmet field; return None when acceptable.

    Sim evidence (tee "sim", or any chain ending in a non-vendor root) needs
    `allow_sim`, and when `sim_roots` is non-empty its root fingerprint must be
    listed there (it is already in the verifier's TrustStore, or it would not
    have verified). Evidence age is checked when `evidence_issued_at` is given.
    The two positional arguments are accepted in either order.
    """
    if isinstance(policy, VerifiedEvidence) and isinstance(verified, Policy):
        policy, verified = verified, policy
    if not isinstance(policy, Policy) or not isinstance(verified, VerifiedEvidence):
        raise TypeError("appraise(policy, verified)")
    is_sim = verified.tee == "sim" or not verified.vendor_root
    tee = "sim" if is_sim else verified.tee
    if is_sim:
        if not policy.allow_sim:
            raise _fail("allow_sim", "hardware evidence (simulated TEE not allowed)",
                        "sim evidence rooted in " + verified.root_fingerprint.hex())
        if policy.sim_roots and verified.root_fingerprint not in policy.sim_roots:
            raise _fail("sim_roots", _hexes(policy.sim_roots), verified.root_fingerprint.hex())
    if tee not in policy.tees():
        raise _fail("allowed_tee", f"one of {list(policy.tees())}", repr(tee))
    if verified.debug and not policy.allow_debug:
        raise _fail("allow_debug", "a non-debug TEE", "debug enabled")
    statuses = policy.tcb_statuses(tee)
    if verified.tcb_status not in statuses:
        raise _fail("accepted_tcb_status", f"one of {list(statuses)}",
                    repr(verified.tcb_status))
    if verified.format == "sev-snp":
        _check_in("snp.measurements", policy.snp.measurements, verified.measurement)
        vmpl = _claim_int(verified, "vmpl")
        if vmpl is None or vmpl > policy.snp.max_vmpl:
            raise _fail("snp.max_vmpl", f"<= {policy.snp.max_vmpl}", str(vmpl))
        svn = _claim_int(verified, "guest_svn")
        if policy.snp.min_guest_svn and (svn is None or svn < policy.snp.min_guest_svn):
            raise _fail("snp.min_guest_svn", f">= {policy.snp.min_guest_svn}", str(svn))
        _check_min_tcb("snp", policy.snp.min_tcb, verified.tcb)
    elif verified.format == "sgx-dcap":
        sgx = policy.sgx
        _check_in("sgx.mrenclave", sgx.mrenclave,
                  _claim_bytes(verified, "mrenclave") or verified.measurement)
        _check_in("sgx.mrsigner", sgx.mrsigner, _claim_bytes(verified, "mrsigner"))
        prodid = _claim_int(verified, "isvprodid")
        if sgx.isvprodid and prodid not in sgx.isvprodid:
            raise _fail("sgx.isvprodid", f"one of {list(sgx.isvprodid)}", str(prodid))
        isvsvn = _claim_int(verified, "isvsvn")
        if sgx.min_isvsvn and (isvsvn is None or isvsvn < sgx.min_isvsvn):
            raise _fail("sgx.min_isvsvn", f">= {sgx.min_isvsvn}", str(isvsvn))
        _check_min_tcb("sgx", sgx.min_tcb, verified.tcb)
    elif verified.format == "tdx":
        tdx = policy.tdx
        _check_in("tdx.mrtd", tdx.mrtd, _claim_bytes(verified, "mrtd") or verified.measurement)
        for i, accepted in enumerate((tdx.rtmr0, tdx.rtmr1, tdx.rtmr2, tdx.rtmr3)):
            _check_in(f"tdx.rtmr{i}", accepted, _rtmr(verified, i))
        _check_min_tcb("tdx", tdx.min_tcb, verified.tcb)
    else:
        raise _fail("format", "sev-snp, sgx-dcap or tdx", repr(verified.format))
    if policy.max_evidence_age_s is not None and evidence_issued_at is not None:
        if now is None:
            raise PolicyError("policy: max_evidence_age_s: no current time to judge age")
        age = now - evidence_issued_at
        if age > policy.max_evidence_age_s:
            raise _fail("max_evidence_age_s", f"age <= {policy.max_evidence_age_s:g} s",
                        f"{age:.0f} s")
        if age < -CLOCK_SKEW_S:
            raise _fail("max_evidence_age_s", "evidence issued in the past",
                        f"issued {-age:.0f} s in the future")
