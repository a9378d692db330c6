"""`--collateral FILE|DIR` on client verbs: the CLI applies collateral to the agent's
evidence in the channel, exactly as an agent applies its `collateral` config key, and
fails closed (an unreadable or invalid file stops the command; without collateral an
SGX/TDX agent's TCB status is "unknown", which the default policy refuses)."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_thread import AgentThread
from keepmesh.agent.cli import CommandError, main
from keepmesh.agent.cli._client_args import client_options
from keepmesh.agent.client import client_channel_config
from keepmesh.agent.config import AgentConfig
from keepmesh.agent.startup import build_agent
from keepmesh.protocol.attestation.evidence import verify_evidence
from keepmesh.protocol.attestation.policy import Policy, PolicyError, appraise
from keepmesh.protocol.errors import VerificationError

VEC = Path("/work/shared/vectors")
AT = dt.datetime(2025, 6, 25, tzinfo=dt.UTC)  # inside the vectors' collateral validity
needs_vectors = pytest.mark.skipif(not VEC.is_dir(), reason="vectors not present")


def options(path: Path | None) -> dict[str, object]:
    return client_options(argparse.Namespace(root=[], key=None, collateral=path))


def appraise_as_client(rel: str, collateral: Path | None, policy: Policy | None = None,
                       at: dt.datetime = AT) -> str:
    """What a client's channel does with an agent's evidence (verify with the
    configured collateral, then appraise), on a real quote; returns its TCB status.
    (The report_data binding in between is the channel's own, tested elsewhere: a
    real quote cannot commit to a test key.)"""
    config = client_channel_config([], policy=policy,
                                   collateral=options(collateral)["collateral"])
    verified = verify_evidence((VEC / rel / "quote.dat").read_bytes(), [], config.trust, at,
                               collateral=config.collateral)
    appraise(config.policy, verified)
    return verified.tcb_status


@needs_vectors
def test_real_tdx_needs_collateral_and_the_default_policy_fails_closed() -> None:
    """The client's default policy on a genuine TDX quote: "unknown" without
    collateral is refused; with the platform's collateral it is UpToDate and
    accepted; collateral past its validity fails the verification, it is not
    silently dropped."""
    tdx = "tdx/phala-dcapqvl-v4"
    with pytest.raises(PolicyError, match="accepted_tcb_status"):
        appraise_as_client(tdx, None)
    assert appraise_as_client(tdx, VEC / tdx / "collateral.json") == "UpToDate"
    with pytest.raises(VerificationError):
        appraise_as_client(tdx, VEC / tdx / "collateral.json",
                           at=dt.datetime(2031, 1, 1, tzinfo=dt.UTC))


@needs_vectors
def test_real_sgx_status_from_collateral_is_refused_by_default() -> None:
    sgx = "sgx-dcap/phala-dcapqvl-v3"
    with pytest.raises(PolicyError, match="ConfigurationAndSWHardeningNeeded"):
        appraise_as_client(sgx, VEC / sgx / "collateral.json", Policy(allow_debug=True))
    accepting = Policy(allow_debug=True, accepted_tcb_status=(
        "UpToDate", "SWHardeningNeeded", "ConfigurationAndSWHardeningNeeded"))
    assert appraise_as_client(sgx, VEC / sgx / "collateral.json",
                              accepting) == "ConfigurationAndSWHardeningNeeded"


def test_bad_collateral_stops_the_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"tcb_info": 5}')
    for path, reason in [(tmp_path / "missing", "--collateral: collateral"),
                         (bad, "--collateral: "), (tmp_path / "big", "larger than")]:
        if path.name == "big":
            path.write_bytes(b"{" + b" " * (600 * 1024) + b"}")
        with pytest.raises(CommandError, match=reason):
            options(path)
    assert options(None)["collateral"] is None


def test_collateral_with_nothing_usable_stops_the_command(tmp_path: Path,
                                                           sim_root: Path) -> None:
    """An empty file, random bytes or an empty directory used to be accepted as "no
    collateral": the agent's evidence was then judged as if --collateral had not been
    given, and the command succeeded."""
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "random").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "nothing").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README").write_text("collateral goes here\n")
    for name in ("empty", "random", "nothing", "notes"):
        with pytest.raises(CommandError, match="nothing usable"):
            options(tmp_path / name)
    (tmp_path / "notes" / "ask.pem").write_bytes((sim_root / "ask.pem").read_bytes())
    loaded = options(tmp_path / "notes")["collateral"]  # a note beside usable files is fine
    assert len(loaded.certs) == 1 and loaded.ignored == ("README",)


def crl_dir(tmp: Path, root: Path, name: str, serials: list[int]) -> Path:
    """A directory with a CRL signed by the sim ASK (as AMD's KDS CRL is) and the ASK."""
    from cryptography.hazmat.primitives import serialization

    from tests.sim_crl import sim_ask_crl
    out = tmp / name
    out.mkdir()
    (out / "ask.pem").write_bytes((root / "ask.pem").read_bytes())
    (out / "kds.crl").write_bytes(
        sim_ask_crl(root, serials).public_bytes(serialization.Encoding.PEM))
    return out


@pytest.fixture
def agent(tmp_path: Path, sim_root: Path) -> Iterator[AgentThread]:
    a = AgentThread(build_agent(AgentConfig(listen="127.0.0.1:0", tee="sim", sim_root=sim_root,
                                            data_dir=tmp_path / "a")))
    yield a
    a.stop()


def test_client_verbs_apply_collateral_in_the_channel(agent: AgentThread, tmp_path: Path,
                                                      sim_root: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Through the command line against a real agent: a CRL that revokes the agent's
    VCEK refuses it (one line); one that does not, passes; a broken --collateral
    stops the command before it connects."""
    serial = agent.agent.backend._vcek.serial_number  # type: ignore[attr-defined]
    common = ["--agent", agent.address, "--key", str(tmp_path / "op.key"),
              "--root", str(sim_root / "ark.pem"), "--json"]
    capsys.readouterr()
    ok = crl_dir(tmp_path, sim_root, "ok", [serial + 1])
    for verb in ("peers", "status"):
        assert main([verb, *common, "--collateral", str(ok)]) == 0, capsys.readouterr().err
    revoking = crl_dir(tmp_path, sim_root, "revoking", [serial])
    capsys.readouterr()
    for verb in ("peers", "status", "members"):
        assert main([verb, *common, "--collateral", str(revoking)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "revoked" in err, err
    assert main(["peers", *common, "--collateral", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("keepmesh peers: --collateral:") and len(err.splitlines()) == 1
