"""`keepmesh sim set-tcb`: a running sim agent reports the new TCB, like a rollback would."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from agent_thread import AgentThread
from keepmesh.agent.cli import main
from keepmesh.agent.config import AgentConfig
from keepmesh.agent.startup import build_agent
from keepmesh.agent.tee.sim import SIM_TCB, TCB_FILE, SimTee, read_sim_root, read_sim_tcb
from keepmesh.protocol.attestation.certs import TrustStore
from keepmesh.protocol.attestation.evidence import verify_evidence_record
from keepmesh.protocol.attestation.policy import PolicyError, appraise, load_policy

NOW = dt.datetime.now(dt.UTC)
STRICT = load_policy('allow_sim = true\n[snp]\nmin_tcb = { microcode = 210 }\n')


def _verify(tee: SimTee, root: Path) -> dict[str, int]:
    verified = verify_evidence_record(tee.collect(b"x"), TrustStore([read_sim_root(root)]), NOW)
    return dict(verified.tcb)


def test_running_tee_reports_the_new_tcb_and_policy_follows(
        tmp_path: Path, sim_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tee = SimTee(sim_root, tmp_path / "agent")
    before = _verify(tee, sim_root)
    assert before["microcode"] == SIM_TCB["microcode"]
    ev = verify_evidence_record(tee.collect(b"x"), TrustStore([read_sim_root(sim_root)]), NOW)
    appraise(STRICT, ev)                                        # passes at 213
    assert main(["sim", "set-tcb", str(tmp_path / "agent"), "microcode=200", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["tcb"] == {**SIM_TCB, "microcode": 200}
    ev = verify_evidence_record(tee.collect(b"x"), TrustStore([read_sim_root(sim_root)]), NOW)
    assert ev.tcb["microcode"] == 200 and ev.tcb["snp"] == SIM_TCB["snp"]
    with pytest.raises(PolicyError, match="min_tcb.microcode"):
        appraise(STRICT, ev)                                    # fails below 210
    # several components at once; the others are kept
    assert main(["sim", "set-tcb", str(tmp_path / "agent"), "snp=7", "bootloader=2"]) == 0
    assert read_sim_tcb(tmp_path / "agent") == {**SIM_TCB, "microcode": 200, "snp": 7,
                                                "bootloader": 2}
    assert _verify(tee, sim_root)["snp"] == 7
    # back up: trusted again; a new launch of the agent keeps the setting
    assert main(["sim", "set-tcb", str(tmp_path / "agent"), "microcode=220"]) == 0
    ev = verify_evidence_record(tee.collect(b"x"), TrustStore([read_sim_root(sim_root)]), NOW)
    appraise(STRICT, ev)
    assert SimTee(sim_root, tmp_path / "agent").tcb["microcode"] == 220


@pytest.mark.parametrize("argv,reason", [
    (["flux=1"], "unknown TCB component 'flux'"),
    (["microcode=abc"], "microcode: 'abc' is not an integer"),
    (["microcode=256"], "microcode: 256 outside 0..255"),
    (["microcode=-1"], "microcode: -1 outside 0..255"),
    (["microcode"], "expected COMPONENT=N"),
])
def test_bad_assignments_fail_with_one_line(tmp_path: Path, sim_root: Path, argv: list[str],
                                             reason: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    SimTee(sim_root, tmp_path / "agent")
    assert main(["sim", "set-tcb", str(tmp_path / "agent"), *argv]) != 0
    err = capsys.readouterr().err.strip()
    assert reason in err and "\n" not in err
    assert not (tmp_path / "agent" / TCB_FILE).exists()


def test_not_a_sim_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "set-tcb", str(tmp_path / "missing"), "microcode=1"]) != 0
    assert "no such directory" in capsys.readouterr().err
    assert main(["sim", "set-tcb", str(tmp_path), "microcode=1"]) != 0
    assert "not a sim agent data dir" in capsys.readouterr().err


def test_hostile_tcb_file_is_ignored_and_the_last_good_tcb_kept(tmp_path: Path,
                                                                sim_root: Path) -> None:
    tee = SimTee(sim_root, tmp_path / "agent")
    main(["sim", "set-tcb", str(tmp_path / "agent"), "microcode=200"])
    assert _verify(tee, sim_root)["microcode"] == 200
    for junk in (b"{not json", b'{"microcode": 999}', b'{"evil": 1}', b"[1]", b"x" * 10000):
        (tmp_path / "agent" / TCB_FILE).write_bytes(junk)
        assert _verify(tee, sim_root)["microcode"] == 200
        assert tee.tcb_error
    (tmp_path / "agent" / TCB_FILE).unlink()           # removed: back to the default
    assert _verify(tee, sim_root)["microcode"] == SIM_TCB["microcode"]


@pytest.mark.slow
def test_running_agent_reports_new_tcb_within_5_s(tmp_path: Path, sim_root: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    a = AgentThread(build_agent(AgentConfig(listen="127.0.0.1:0", tee="sim", sim_root=sim_root,
                                            data_dir=tmp_path / "a")))
    try:
        flags = ["--agent", a.address, "--root", str(sim_root / "ark.pem"),
                 "--key", str(tmp_path / "op.key"), "--json"]

        def reported() -> int:
            capsys.readouterr()
            assert main(["status", *flags]) == 0, capsys.readouterr().err
            return int(json.loads(capsys.readouterr().out)["attested"]["tcb"]["microcode"])

        assert reported() == SIM_TCB["microcode"]
        assert main(["sim", "set-tcb", str(tmp_path / "a"), "microcode=200"]) == 0
        start = time.monotonic()
        while reported() != 200:
            assert time.monotonic() - start < 5.0, "new TCB not reported within 5 s"
            time.sleep(0.2)
        # the agent's own cached evidence (what it shows peers without a nonce) follows too
        ev, _ = a.agent.attester.evidence_now(None)
        verified = verify_evidence_record(ev, TrustStore([read_sim_root(sim_root)]), NOW)
        assert verified.tcb["microcode"] == 200
    finally:
        a.stop()
