"""Appraisal policy: strict loading, and each rule failing with its field named."""

from __future__ import annotations

import dataclasses

import pytest
from keepmesh.protocol.attestation.evidence import VerifiedEvidence
from keepmesh.protocol.attestation.policy import (
    Policy,
    PolicyError,
    SgxPolicy,
    SnpPolicy,
    TdxPolicy,
    appraise,
    load_policy,
    policy_from_dict,
)
from keepmesh.protocol.errors import ProtocolError

M1 = bytes(range(48))
M2 = bytes(48)
SIM_FP = b"\x5a" * 32


def snp_ev(**over: object) -> VerifiedEvidence:
    base = VerifiedEvidence(
        format="sev-snp", tee="snp", measurement=M1, report_data=b"\0" * 64, debug=False,
        signer=("SEV-VCEK", "SEV-Milan", "ARK-Milan"), root_fingerprint=b"\1" * 32,
        vendor_root=True, tcb={"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
        claims={"guest_svn": 4, "vmpl": 0})
    return dataclasses.replace(base, **over)  # type: ignore[arg-type]


def sim_ev() -> VerifiedEvidence:
    return snp_ev(tee="sim", vendor_root=False, root_fingerprint=SIM_FP)


TOML = f"""
allowed_tee = ["snp", "tdx", "sim"]
allow_sim = true
sim_roots = ["{SIM_FP.hex()}"]
allow_debug = false
accepted_tcb_status = ["UpToDate", "unknown"]
max_evidence_age_s = 600

[snp]
measurements = ["{M1.hex()}"]
min_tcb = {{ bootloader = 3, snp = 8, microcode = 100 }}
min_guest_svn = 2
max_vmpl = 1

[tdx]
mrtd = ["{M2.hex()}"]
"""


def test_load_and_pass() -> None:
    policy = load_policy(TOML, "deploy.toml")
    assert policy.snp.measurements == (M1,) and policy.allow_sim
    assert policy.max_evidence_age_s == 600.0 and policy.snp.max_vmpl == 1
    appraise(policy, snp_ev())
    appraise(policy, sim_ev())
    appraise(policy, snp_ev(), evidence_issued_at=1000.0, now=1500.0)
    assert policy_from_dict(policy.to_dict()) == policy
    assert load_policy(TOML.encode(), "bytes.toml") == policy


@pytest.mark.parametrize("text, key", [
    ("allowed_te = ['snp']", "allowed_te"),
    ("allow_sim = 'yes'", "allow_sim"),
    ("allowed_tee = ['snp', 'amd']", "allowed_tee[1]"),
    ("[snp]\nmeasurements = ['zz']", "snp.measurements[0]"),
    ("[snp]\nmeasurements = ['00']", "snp.measurements[0]"),
    ("[snp]\nmin_tcb = { snp = 'x' }", "snp.min_tcb.snp"),
    ("[snp]\nmrenclave = []", "snp.mrenclave"),
    ("[sgx]\nisvprodid = [70000]", "sgx.isvprodid[0]"),
    ("max_evidence_age_s = -1", "max_evidence_age_s"),
    ("snp = 3", "snp"),
])
def test_load_errors_name_file_and_key(text: str, key: str) -> None:
    with pytest.raises(ProtocolError) as err:
        load_policy(text, "bad.toml")
    assert "bad.toml" in str(err.value) and repr(key) in str(err.value)


def test_invalid_toml() -> None:
    with pytest.raises(ProtocolError, match="bad.toml: invalid TOML"):
        load_policy("allow_sim = ", "bad.toml")


def test_defaults_reject_sim_and_debug() -> None:
    policy = Policy()
    appraise(policy, snp_ev())
    with pytest.raises(PolicyError, match="allow_sim"):
        appraise(policy, sim_ev())
    with pytest.raises(PolicyError, match="allow_debug: expected a non-debug TEE, got debug"):
        appraise(policy, snp_ev(debug=True))
    # A non-vendor root counts as sim whatever tee says.
    with pytest.raises(PolicyError, match="allow_sim"):
        appraise(policy, snp_ev(vendor_root=False))


def test_sim_roots_must_list_fingerprint() -> None:
    policy = Policy(allow_sim=True, sim_roots=(b"\x01" * 32,))
    with pytest.raises(PolicyError, match="sim_roots: expected one of"):
        appraise(policy, sim_ev())
    appraise(Policy(allow_sim=True), sim_ev())


@pytest.mark.parametrize("policy, ev, field, actual", [
    (Policy(allowed_tee=("tdx",)), snp_ev(), "allowed_tee", "'snp'"),
    (Policy(snp=SnpPolicy(measurements=(M2,))), snp_ev(), "snp.measurements", M1.hex()),
    (Policy(snp=SnpPolicy(min_tcb={"microcode": 116})), snp_ev(), "snp.min_tcb.microcode",
     "115"),
    (Policy(snp=SnpPolicy(min_tcb={"fmc": 1})), snp_ev(), "snp.min_tcb.fmc", "no such"),
    (Policy(snp=SnpPolicy(min_guest_svn=5)), snp_ev(), "snp.min_guest_svn", "4"),
    (Policy(), snp_ev(tcb_status="OutOfDate"), "accepted_tcb_status", "'OutOfDate'"),
])
def test_named_field_failures(policy: Policy, ev: VerifiedEvidence, field: str,
                              actual: str) -> None:
    with pytest.raises(PolicyError) as err:
        appraise(policy, ev)
    msg = str(err.value)
    assert msg.startswith(f"policy: {field}: expected ") and actual in msg


def test_sgx_and_tdx_claims() -> None:
    sgx = VerifiedEvidence(format="sgx-dcap", tee="sgx", measurement=b"\3" * 32,
                           report_data=b"", debug=False, signer=("PCK",),
                           root_fingerprint=b"\2" * 32, vendor_root=True, tcb={"pcesvn": 11},
                           tcb_status="UpToDate",
                           claims={"mrenclave": "03" * 32, "mrsigner": b"\4" * 32,
                                   "isvprodid": 1, "isvsvn": 2})
    ok = Policy(sgx=SgxPolicy(mrenclave=(b"\3" * 32,), mrsigner=(b"\4" * 32,), isvprodid=(1,),
                              min_isvsvn=2, min_tcb={"pcesvn": 10}))
    appraise(ok, sgx)
    for bad, field in [(SgxPolicy(mrsigner=(b"\5" * 32,)), "sgx.mrsigner"),
                       (SgxPolicy(isvprodid=(9,)), "sgx.isvprodid"),
                       (SgxPolicy(min_isvsvn=3), "sgx.min_isvsvn"),
                       (SgxPolicy(min_tcb={"pcesvn": 12}), "sgx.min_tcb.pcesvn")]:
        with pytest.raises(PolicyError, match=f"policy: {field}:"):
            appraise(Policy(sgx=bad), sgx)
    tdx = dataclasses.replace(sgx, format="tdx", tee="tdx", measurement=M2,
                              claims={"mrtd": M2, "rtmrs": [M1.hex(), M2, M2, M2]})
    appraise(Policy(tdx=TdxPolicy(mrtd=(M2,), rtmr0=(M1,), rtmr3=(M2,))), tdx)
    with pytest.raises(PolicyError, match="policy: tdx.rtmr1:"):
        appraise(Policy(tdx=TdxPolicy(rtmr1=(M1,))), tdx)
    with pytest.raises(PolicyError, match="policy: tdx.mrtd:"):
        appraise(Policy(tdx=TdxPolicy(mrtd=(M1,))), tdx)


def test_evidence_age() -> None:
    policy = Policy(max_evidence_age_s=60)
    appraise(policy, snp_ev(), evidence_issued_at=100.0, now=150.0)
    with pytest.raises(PolicyError, match="max_evidence_age_s: expected age <= 60 s, got 100 s"):
        appraise(policy, snp_ev(), evidence_issued_at=100.0, now=200.0)
    with pytest.raises(PolicyError, match="future"):
        appraise(policy, snp_ev(), evidence_issued_at=10_000.0, now=200.0)
    with pytest.raises(PolicyError, match="no current time"):
        appraise(policy, snp_ev(), evidence_issued_at=100.0)


def test_swapped_arguments_accepted() -> None:
    with pytest.raises(PolicyError, match="allow_sim"):
        appraise(sim_ev(), Policy())  # type: ignore[arg-type]


# ------------------------------------------------------- fail-closed defaults


def dcap_ev(tee: str, status: str) -> VerifiedEvidence:
    return VerifiedEvidence(format="sgx-dcap" if tee == "sgx" else "tdx", tee=tee,
                            measurement=M2, report_data=b"", debug=False, signer=("PCK",),
                            root_fingerprint=b"\2" * 32, vendor_root=True, tcb={},
                            tcb_status=status, claims={"mrtd": M2})


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_default_rejects_unknown_intel_tcb_status(tee: str) -> None:
    """No collateral applied = status unknown = rejected for Intel kinds by default."""
    with pytest.raises(PolicyError, match="accepted_tcb_status: expected one of .'UpToDate'.,"
                                          " got 'unknown'"):
        appraise(Policy(), dcap_ev(tee, "unknown"))
    appraise(Policy(), dcap_ev(tee, "UpToDate"))
    for status in ("OutOfDate", "SWHardeningNeeded", "ConfigurationNeeded"):
        with pytest.raises(PolicyError, match="accepted_tcb_status"):
            appraise(Policy(), dcap_ev(tee, status))
    # The policy may opt in, from a dict or a file.
    opt_in = load_policy('accepted_tcb_status = ["UpToDate", "unknown"]\n', "p.toml")
    appraise(opt_in, dcap_ev(tee, "unknown"))
    assert opt_in.tcb_statuses(tee) == ("UpToDate", "unknown")


def test_snp_unknown_status_accepted_by_default_and_can_be_refused() -> None:
    """AMD publishes no TCB status: SNP's default gate is min_tcb, VMPL and debug."""
    appraise(Policy(), snp_ev(tcb_status="unknown"))
    with pytest.raises(PolicyError, match="accepted_tcb_status"):
        appraise(Policy(accepted_tcb_status=("UpToDate",)), snp_ev(tcb_status="unknown"))


def test_vmpl_checked() -> None:
    with pytest.raises(PolicyError, match="snp.max_vmpl: expected <= 0, got 1"):
        appraise(Policy(), snp_ev(claims={"guest_svn": 4, "vmpl": 1}))
    with pytest.raises(PolicyError, match="snp.max_vmpl: expected <= 0, got None"):
        appraise(Policy(), snp_ev(claims={"guest_svn": 4}))
    relaxed = load_policy("[snp]\nmax_vmpl = 1\n", "p.toml")
    appraise(relaxed, snp_ev(claims={"guest_svn": 4, "vmpl": 1}))
    with pytest.raises(PolicyError, match="snp.max_vmpl"):
        appraise(relaxed, snp_ev(claims={"guest_svn": 4, "vmpl": 2}))
    # Sim evidence is SNP-format: the VMPL rule applies to it too.
    with pytest.raises(PolicyError, match="snp.max_vmpl"):
        appraise(Policy(allow_sim=True), dataclasses.replace(sim_ev(), claims={"vmpl": 3}))
    for bad in ("4", "-1", "true", "'0'"):
        with pytest.raises(ProtocolError, match="snp.max_vmpl"):
            load_policy(f"[snp]\nmax_vmpl = {bad}\n", "p.toml")


def test_sim_obeys_allowed_tee() -> None:
    with pytest.raises(PolicyError, match="allowed_tee: expected one of .'snp'., got 'sim'"):
        appraise(Policy(allow_sim=True, allowed_tee=("snp",)), sim_ev())
    with pytest.raises(PolicyError, match="allowed_tee"):
        appraise(load_policy('allow_sim = true\nallowed_tee = ["tdx"]\n', "p.toml"), sim_ev())
    appraise(Policy(allow_sim=True, allowed_tee=("sim",)), sim_ev())
    appraise(Policy(allow_sim=True), sim_ev())  # unset allowed_tee lists sim when allowed
    # Listing sim is not enough: allow_sim is still required.
    with pytest.raises(PolicyError, match="allow_sim"):
        appraise(Policy(allowed_tee=("sim",)), sim_ev())
    # A hardware kind not listed is refused even though sim is.
    with pytest.raises(PolicyError, match="allowed_tee"):
        appraise(Policy(allow_sim=True, allowed_tee=("sim",)), snp_ev())


def test_unset_defaults_round_trip() -> None:
    policy = Policy(allow_sim=True)
    doc = policy.to_dict()
    assert "allowed_tee" not in doc and "accepted_tcb_status" not in doc
    assert doc["snp"]["max_vmpl"] == 0
    assert policy_from_dict(doc) == policy
    assert policy.tees() == ("snp", "sgx", "tdx", "sim") and Policy().tees() == (
        "snp", "sgx", "tdx")
