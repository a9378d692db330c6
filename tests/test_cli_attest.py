"""`keepmesh attest verify` and `keepmesh platform info`: JSON shape and exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from keepmesh.agent.cli import main

VEC = Path("/work/shared/vectors")
pytestmark = pytest.mark.skipif(not VEC.is_dir(), reason="vectors not present")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_tdx_with_collateral_json(capsys: pytest.CaptureFixture[str]) -> None:
    d = VEC / "tdx/phala-dcapqvl-v4"
    code, out, err = run(capsys, "attest", "verify", str(d / "quote.dat"), "--collateral", str(d),
                         "--at", "2025-06-25T00:00:00Z", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["format"] == "tdx" and doc["verified"] is True
    assert doc["tcb_status"] == "UpToDate"
    assert doc["measurement"].startswith("91eb2b44d141d4ec")
    assert len(doc["rtmrs"]) == 4 and doc["signer"][-1] == "Intel SGX Root CA"
    assert doc["debug"] is False and isinstance(doc["tcb"], dict)


def test_sgx_json_and_human(capsys: pytest.CaptureFixture[str]) -> None:
    q = str(VEC / "sgx-dcap/trustee-occlum-v3/quote.dat")
    code, out, _ = run(capsys, "attest", "verify", q, "--at", "2025-01-01", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["format"] == "sgx-dcap" and doc["debug"] is True
    assert doc["mrsigner"].startswith("83d719e7") and doc["tcb_status"] == "unknown"
    code, out, _ = run(capsys, "attest", "verify", q, "--at", "2025-01-01")
    assert code == 0 and "verified:     yes (sgx-dcap" in out


def test_negative_and_expired(capsys: pytest.CaptureFixture[str]) -> None:
    bad = str(VEC / "tdx/negative/gotdxguest-spr-header_byte_changed_0x1e.dat")
    code, out, err = run(capsys, "attest", "verify", bad, "--at", "2023-07-01", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["verified"] is False and "signature invalid" in doc["reason"]
    assert err.count("\n") == 1 and "signature invalid" in err
    good = str(VEC / "tdx/gotdxguest-v4-spr/quote.dat")
    code, out, err = run(capsys, "attest", "verify", good, "--at", "2053-07-01")
    assert code == 1 and "expired" in err and out == ""


def test_snp_vector_with_certs_dir(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(VEC / "sev-snp/trustee-milan-v2/vcek.der", certs / "a")
    shutil.copy(VEC / "sev-snp/amd-certs/milan/cert_chain_ask_ark.pem", certs / "b")
    (certs / "junk.txt").write_text("not a cert")
    rep = str(VEC / "sev-snp/trustee-milan-v2/report.bin")
    code, out, err = run(capsys, "attest", "verify", rep, "--certs", str(certs),
                         "--at", "2024-01-01T00:00:00", "--json")
    doc = json.loads(out)
    assert doc["format"] == "sev-snp"
    assert code == (0 if doc["verified"] else 1), err
    code, out, err = run(capsys, "attest", "verify", rep, "--json")  # no VCEK: must fail
    assert code == 1 and json.loads(out)["verified"] is False


def test_policy_mismatch_names_field(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pol = tmp_path / "p.toml"
    # No collateral here: tcb_status is "unknown", which TDX policies must opt into.
    opt_in = 'accepted_tcb_status = ["UpToDate", "unknown"]\n'
    pol.write_text(opt_in + 'allowed_tee = ["tdx"]\n[tdx]\nmrtd = ["' + "00" * 48 + '"]\n')
    q = str(VEC / "tdx/trustee-v5/quote.dat")
    code, out, err = run(capsys, "attest", "verify", q, "--at", "2025-06-25", "--policy",
                         str(pol), "--json")
    doc = json.loads(out)
    assert code == 1 and doc["verified"] is False and "mrtd" in doc["reason"]
    assert "mrtd" in err
    pol.write_text(opt_in + 'allowed_tee = ["tdx"]\n[tdx]\nmrtd = ["dfba221b48a22af8511542ee7'
                   '96603f37382800840dcd978703909bf8e64d4c8a1e9de86e7c9638bfcba422f3886400a"]\n')
    code, out, err = run(capsys, "attest", "verify", q, "--at", "2025-06-25", "--policy",
                         str(pol), "--json")
    assert code == 0, err
    assert json.loads(out)["policy"] == "accepted"


def test_bad_inputs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "attest", "verify", str(tmp_path / "missing"))
    assert code == 1 and "cannot read evidence" in err
    q = str(VEC / "tdx/trustee-v5/quote.dat")
    code, _, err = run(capsys, "attest", "verify", q, "--at", "yesterday")
    assert code == 1 and "ISO 8601" in err
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00" * 100)
    code, out, err = run(capsys, "attest", "verify", str(junk), "--json")
    assert code == 1 and json.loads(out)["verified"] is False
    with pytest.raises(SystemExit):
        main(["attest", "verify"])


def test_evidence_record_and_hex_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from keepmesh.protocol.attestation.evidence import Evidence
    from keepmesh.protocol.wire import encode_payload

    quote = (VEC / "tdx/trustee-v5/quote.dat").read_bytes()
    rec = tmp_path / "ev.bin"
    rec.write_bytes(encode_payload(Evidence(format="tdx", report=quote, certs=())))
    code, out, err = run(capsys, "attest", "verify", str(rec), "--at", "2025-06-25", "--json")
    assert code == 0 and json.loads(out)["format"] == "tdx", err
    hexf = tmp_path / "q.hex"
    hexf.write_text(quote.hex())
    code, out, _ = run(capsys, "attest", "verify", str(hexf), "--at", "2025-06-25", "--json")
    assert code == 0 and json.loads(out)["mrservicetd"].startswith("383c87d3")


def test_platform_info(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "platform", "info", "--json", "--root", str(tmp_path))
    doc = json.loads(out)
    assert code == 0 and doc["usable"] == [] and doc["tee"] is None
    assert all(i["reason"] for i in doc["interfaces"])
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/sev-guest").write_bytes(b"")
    code, out, _ = run(capsys, "platform", "info", "--root", str(tmp_path))
    assert "[yes] sev-guest" in out


def test_endless_special_files_are_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    """/dev/zero has st_size 0: it was read whole (MemoryError, "internal error") as the
    evidence, --root or --policy; now the read stops past the limit, in one line."""
    q = str(VEC / "tdx/trustee-v5/quote.dat")
    for argv in (["/dev/zero"], [q, "--root", "/dev/zero"], [q, "--policy", "/dev/zero"]):
        code, _, err = run(capsys, "attest", "verify", *argv, "--at", "2025-06-25")
        assert code == 1 and "more than" in err and len(err.splitlines()) == 1, err
