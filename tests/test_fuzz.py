"""Property/fuzz tests: every decoder and verifier raises only its declared errors.

Two kinds of input per target: mutations of valid inputs (tests/fuzz_targets.py,
the same catalogue `bench/fuzz.py` runs at 100k cases), and arbitrary bytes,
text or TOML-shaped values straight from hypothesis. "Declared" means
ProtocolError/VerificationError (TopologyError for topologies); a fault
boundary's UnexpectedError counts as a failure here too, because it means a
narrow check missed a library error. Example counts are modest so the file
stays well under 40 s on a loaded 2-core machine.
"""

from __future__ import annotations

import random
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fuzz_targets import VECTORS, Target, sim_setup, sim_verified, targets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keepmesh.protocol.attestation.boundary import UnexpectedError
from keepmesh.protocol.errors import ProtocolError

TARGETS = targets()
# Mutated cases per target: verifiers cost milliseconds a case, decoders microseconds.
EXAMPLES = {"snp": 60, "dcap": 60, "collateral": 40, "channel": 80, "wire": 200,
            "records": 200, "policy": 150, "manifest": 150, "topology": 60, "config": 100}
SLOW = settings(deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _check(target: Target, case: Any) -> None:
    kind, err = target.check(case)
    if kind not in ("accepted", "rejected"):
        raise AssertionError(f"{target.name}: crash {kind}: {err!r}") from err


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_mutated_inputs_raise_only_declared_errors(name: str) -> None:
    target = TARGETS[name]
    if target.needs_vectors and not VECTORS.is_dir():
        pytest.skip("public vectors not present")
    for seed in target.seeds():  # the valid inputs themselves never crash
        _check(target, seed)

    @settings(SLOW, max_examples=EXAMPLES[name])
    @given(st.integers(min_value=0, max_value=2**64 - 1))
    def mutated(case_seed: int) -> None:
        _check(target, target.case(random.Random(case_seed)))

    mutated()


# --------------------------------------------------------- raw hypothesis input


def _declared(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except UnexpectedError as err:
        raise AssertionError(f"guarded crash: {err.reason}") from err
    except ProtocolError:
        pass


@settings(SLOW, max_examples=150)
@given(st.binary(max_size=3000))
def test_raw_bytes_to_binary_decoders(data: bytes) -> None:
    from keepmesh.protocol.attestation.certs import load_certificates
    from keepmesh.protocol.attestation.collateral import load_collateral
    from keepmesh.protocol.attestation.dcap_quote import parse_quote
    from keepmesh.protocol.attestation.evidence import verify_evidence
    from keepmesh.protocol.membership.records import decode_record
    from keepmesh.protocol.wire import FrameDecoder, decode_payload
    s = sim_setup()
    _declared(decode_payload, data)
    _declared(lambda d: list(FrameDecoder(max_size=4096).feed(d)), data)
    _declared(decode_record, data)
    _declared(load_certificates, data)
    _declared(parse_quote, data)
    _declared(load_collateral, {"x": data})
    _declared(verify_evidence, data, (), s["trust"], s["at"])
    _declared(verify_evidence, s["evidence"].report, (data,), s["trust"], s["at"])


@settings(SLOW, max_examples=60)
@given(st.binary(min_size=0, max_size=600))
def test_report_prefix_with_random_tail(tail: bytes) -> None:
    """Valid SNP/DCAP headers followed by garbage reach the deeper parsers."""
    from keepmesh.protocol.attestation.evidence import verify_evidence
    s = sim_setup()
    report = s["evidence"].report
    _declared(verify_evidence, report[:0x2A0] + tail, s["evidence"].certs, s["trust"], s["at"])
    quote = VECTORS / "tdx/gotdxguest-v5/quote.dat"
    if quote.is_file():
        head = quote.read_bytes()[:700]
        _declared(verify_evidence, head + tail, (), s["trust"],
                  datetime(2026, 2, 3, tzinfo=UTC))


_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                     st.floats(allow_nan=True), st.text(max_size=40),
                     st.sampled_from(["snp", "sgx", "tdx", "sim", "UpToDate", "unknown",
                                      "ab" * 32, "cd" * 48, "64MiB", "lan"]))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12)


def _doc(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.one_of(st.sampled_from(keys), st.text(max_size=8)), _values,
                           max_size=6)


POLICY_KEYS = ["allowed_tee", "allow_sim", "sim_roots", "allow_debug", "accepted_tcb_status",
               "max_evidence_age_s", "snp", "sgx", "tdx"]


@settings(SLOW, max_examples=100)
@given(_doc(POLICY_KEYS), st.dictionaries(
    st.sampled_from(["measurements", "min_tcb", "min_guest_svn", "max_vmpl", "mrenclave",
                     "mrsigner", "isvprodid", "min_isvsvn", "mrtd", "rtmr0"]),
    _values, max_size=4))
def test_policy_dicts(doc: dict[str, Any], section: dict[str, Any]) -> None:
    from keepmesh.protocol.attestation.policy import appraise, policy_from_dict
    doc = dict(doc)
    doc[random.Random(len(doc)).choice(["snp", "sgx", "tdx"])] = section
    try:
        policy = policy_from_dict(doc, "fuzz")
    except UnexpectedError as err:
        raise AssertionError(err.reason) from err
    except ProtocolError:
        return
    _declared(appraise, policy, sim_verified())


@settings(SLOW, max_examples=150)
@given(st.text(max_size=400))
def test_text_files(text: str) -> None:
    from keepmesh.protocol.attestation.policy import load_policy
    from keepmesh.protocol.deployment import parse_manifest_toml
    _declared(load_policy, text, "fuzz.toml")
    _declared(parse_manifest_toml, text, "fuzz.toml")
    for name in ("config", "topology"):
        kind, err = TARGETS[name].check(text)
        assert kind in ("accepted", "rejected"), (kind, err)


TOPOLOGY_KEYS = ["mesh", "network", "group", "link", "graph", "event"]


@settings(SLOW, max_examples=80)
@given(_doc(TOPOLOGY_KEYS), _doc(["agents", "duration_s", "profile", "seeds", "attestation",
                                  "bootstrap", "sample_interval_s"]))
def test_topology_documents(doc: dict[str, Any], mesh: dict[str, Any]) -> None:
    from keepmesh.simulations.topology import TopologyError, parse_topology
    doc = dict(doc)
    doc["mesh"] = mesh
    try:
        parse_topology(doc, "fuzz")
    except TopologyError:
        pass


@settings(SLOW, max_examples=80)
@given(_doc(["listen", "advertise", "join", "tee", "sim_root", "data_dir", "roots", "policy",
             "collateral", "owners", "profile", "labels"]))
def test_config_documents(doc: dict[str, Any]) -> None:
    from keepmesh.agent.config import config_from_dict
    _declared(config_from_dict, doc, "fuzz", Path("/nonexistent"))


def test_deep_nesting_in_every_toml_loader(tmp_path: Path) -> None:
    """tomllib recurses: deep nesting raised RecursionError out of every loader."""
    deep = "a = " + "[" * 3000 + "]" * 3000 + "\n"
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads("a = [")  # sanity: the module is what we think
    for name in ("policy", "manifest", "config", "topology"):
        kind, err = TARGETS[name].check(deep)
        assert kind == "rejected", (name, kind, err)
    from keepmesh.protocol.secrets import parse_inputs_toml
    with pytest.raises(ProtocolError, match="nested too deeply"):
        parse_inputs_toml(deep)
