"""Evidence collection backends against fake device trees fed with real vector bytes."""

from __future__ import annotations

import ctypes
import os
import uuid
from pathlib import Path

import pytest
from keepmesh.agent.tee import detect
from keepmesh.agent.tee.base import TeeBackend, TeeUnavailable
from keepmesh.agent.tee.configfs_tsm import TSM_DIR, ConfigfsTsmBackend
from keepmesh.agent.tee.gramine import GramineBackend
from keepmesh.agent.tee.sev_guest import (
    SNP_GET_EXT_REPORT,
    SevGuestBackend,
    SnpExtReportReq,
    SnpGuestRequestIoctl,
)
from keepmesh.agent.tee.tdx_guest import TDX_CMD_GET_REPORT0, TdxGuestBackend

VEC = Path("/work/shared/vectors")
pytestmark = pytest.mark.skipif(not VEC.is_dir(), reason="vectors not present")
SNP_REPORT = (VEC / "sev-snp/trustee-milan-v2/report.bin").read_bytes() if VEC.is_dir() else b""
VCEK = (VEC / "sev-snp/trustee-milan-v2/vcek.der").read_bytes() if VEC.is_dir() else b""
TDX_QUOTE = (VEC / "tdx/trustee-v4/quote.dat").read_bytes() if VEC.is_dir() else b""
SGX_QUOTE = (VEC / "sgx-dcap/trustee-occlum-v3/quote.dat").read_bytes() if VEC.is_dir() else b""
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")


def cert_table(certs: list[tuple[uuid.UUID, bytes]]) -> bytes:
    header_len = 24 * (len(certs) + 1)
    head, body = b"", b""
    for guid, der in certs:
        head += guid.bytes_le + (header_len + len(body)).to_bytes(4, "little") + \
            len(der).to_bytes(4, "little")
        body += der
    return head + bytes(24) + body


def fake_tsm(tmp_path: Path, provider: str, outblob: bytes, auxblob: bytes = b"",
             bump: bool = False) -> tuple[ConfigfsTsmBackend, list[str]]:
    (tmp_path / TSM_DIR).mkdir(parents=True)
    removed: list[str] = []
    state = {"gen": 0}

    def mkdir(path: str) -> None:
        os.mkdir(path)
        p = Path(path)
        (p / "provider").write_text(provider + "\n")
        (p / "outblob").write_bytes(outblob)
        if auxblob:
            (p / "auxblob").write_bytes(auxblob)
        (p / "generation").write_text("0\n")

    def rmdir(path: str) -> None:
        for f in Path(path).iterdir():
            f.unlink()
        os.rmdir(path)
        removed.append(path)

    backend = ConfigfsTsmBackend(tmp_path, mkdir=mkdir, rmdir=rmdir)
    if bump:
        orig = backend._read

        def racy_read(path: Path) -> bytes:
            data = orig(path)
            if path.name == "outblob":
                state["gen"] += 1
                (path.parent / "generation").write_text(f"{state['gen']}\n")
            return data

        backend._read = racy_read  # type: ignore[method-assign]
    return backend, removed


def test_configfs_tsm_snp_with_cert_table(tmp_path: Path) -> None:
    backend, removed = fake_tsm(tmp_path, "sev_guest", SNP_REPORT, cert_table([(VCEK_GUID, VCEK)]))
    assert isinstance(backend, TeeBackend)
    ev = backend.collect(b"nonce")
    assert ev.format == "sev-snp" and ev.report == SNP_REPORT and ev.certs == (VCEK,)
    assert backend.kind == "snp"
    assert len(removed) == 1 and not Path(removed[0]).exists()


def test_configfs_tsm_writes_padded_inblob_and_tdx(tmp_path: Path) -> None:
    seen = {}
    backend, _ = fake_tsm(tmp_path, "tdx_guest", TDX_QUOTE)
    orig = backend._read

    def spy(path: Path) -> bytes:
        if path.name == "provider":
            seen["inblob"] = (path.parent / "inblob").read_bytes()
        return orig(path)

    backend._read = spy  # type: ignore[method-assign]
    ev = backend.collect(b"\x01" * 10)
    assert seen["inblob"] == b"\x01" * 10 + bytes(54)
    assert ev.format == "tdx" and ev.report == TDX_QUOTE and backend.kind == "tdx"


def test_configfs_tsm_generation_race_fails_after_retries(tmp_path: Path) -> None:
    backend, removed = fake_tsm(tmp_path, "sev_guest", SNP_REPORT, bump=True)
    with pytest.raises(TeeUnavailable, match="generation changed"):
        backend.collect(b"x")
    assert len(removed) == 3  # every attempt cleaned up


def test_configfs_tsm_bad_inputs(tmp_path: Path) -> None:
    assert "not present" in (ConfigfsTsmBackend(tmp_path).probe() or "")
    backend, _ = fake_tsm(tmp_path, "weird", SNP_REPORT)
    with pytest.raises(TeeUnavailable, match="unsupported provider"):
        backend.collect(b"")
    with pytest.raises(ValueError):
        backend.collect(b"x" * 65)
    bad_table = VCEK_GUID.bytes_le + (9999).to_bytes(4, "little") + (10).to_bytes(4, "little")
    backend, _ = fake_tsm(tmp_path / "b", "sev_guest", SNP_REPORT, bad_table + bytes(24))
    with pytest.raises(TeeUnavailable, match="out of bounds"):
        backend.collect(b"")


def test_sev_guest_ioctl_real_layout(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/sev-guest").write_bytes(b"")
    calls = []

    def fake_ioctl(fd: int, request: int, arg: SnpGuestRequestIoctl) -> int:
        assert request == SNP_GET_EXT_REPORT == 0xC0205302
        req = SnpExtReportReq.from_address(arg.req_data)
        calls.append(bytes(req.data.user_data))
        msg = (0).to_bytes(4, "little") + len(SNP_REPORT).to_bytes(4, "little") + bytes(24)
        ctypes.memmove(arg.resp_data, msg + SNP_REPORT, len(msg) + len(SNP_REPORT))
        table = cert_table([(VCEK_GUID, VCEK)])
        assert req.certs_len >= len(table)
        ctypes.memmove(req.certs_address, table, len(table))
        return 0

    ev = SevGuestBackend(tmp_path, ioctl=fake_ioctl).collect(b"abc")
    assert calls == [b"abc" + bytes(61)]
    assert ev.format == "sev-snp" and ev.report == SNP_REPORT and ev.certs == (VCEK,)

    def failing(fd: int, request: int, arg: SnpGuestRequestIoctl) -> int:
        arg.exitinfo2 = 0x1_00000000
        raise OSError(5, "Input/output error")

    with pytest.raises(TeeUnavailable, match="vmm_error 0x1"):
        SevGuestBackend(tmp_path, ioctl=failing).collect(b"")


def test_tdx_guest_tdreport_only(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/tdx_guest").write_bytes(b"")

    def fake_ioctl(fd: int, request: int, buf: bytearray, mutate: bool) -> int:
        assert request == TDX_CMD_GET_REPORT0 == 0xC4405401 and len(buf) == 1088
        buf[64:] = bytes(buf[:64]) * 16
        return 0

    backend = TdxGuestBackend(tmp_path, ioctl=fake_ioctl)
    assert backend.get_tdreport(b"\x07") == (b"\x07" + bytes(63)) * 16
    with pytest.raises(TeeUnavailable, match="QGS or configfs-tsm"):
        backend.collect(b"")


def test_gramine(tmp_path: Path) -> None:
    base = tmp_path / "dev/attestation"
    base.mkdir(parents=True)
    (base / "attestation_type").write_text("dcap")
    (base / "quote").write_bytes(SGX_QUOTE)
    ev = GramineBackend(tmp_path).collect(b"rd")
    assert (base / "user_report_data").read_bytes() == b"rd" + bytes(62)
    assert ev.format == "sgx-dcap" and ev.report == SGX_QUOTE
    (base / "attestation_type").write_text("epid")
    with pytest.raises(TeeUnavailable, match="need 'dcap'"):
        GramineBackend(tmp_path).collect(b"")


def test_probe_and_auto(tmp_path: Path) -> None:
    infos = detect.probe_platform(tmp_path)
    assert [i.name for i in infos] == ["configfs-tsm", "sev-guest", "tdx-guest", "gramine"]
    assert not any(i.available for i in infos)
    with pytest.raises(TeeUnavailable, match="no TEE hardware interface usable.*--sim-root"):
        detect.auto_backend(tmp_path)
    (tmp_path / "dev/attestation").mkdir(parents=True)
    chosen = detect.auto_backend(tmp_path)
    assert chosen.name == "gramine"
    (tmp_path / TSM_DIR).mkdir(parents=True)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("flags : fpu tdx_guest\n")
    chosen = detect.auto_backend(tmp_path)
    assert chosen.name == "configfs-tsm" and chosen.kind == "tdx"
    assert detect.probe_platform(tmp_path)[0].available
    with pytest.raises(TeeUnavailable, match="--tee snp"):
        detect.backend_for("snp", tmp_path / "nothing")
