"""Which evidence interfaces this host offers, and which backend `--tee auto` uses.

Why explicit: silently falling back to the simulated TEE would let an agent
on a misconfigured host present sim evidence while its operator believes it
runs on hardware. So `auto` tries the hardware paths in order (configfs-tsm,
/dev/sev-guest, Gramine /dev/attestation) and fails with every reason when
none works; the sim is used only when a sim root was given explicitly
(`--sim-root DIR`). /dev/tdx_guest is reported but never chosen: it yields
only TDREPORTs, and TDX quotes come through configfs-tsm.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from keepmesh.agent.tee.base import TeeBackend, TeeUnavailable
from keepmesh.agent.tee.configfs_tsm import ConfigfsTsmBackend
from keepmesh.agent.tee.gramine import GramineBackend
from keepmesh.agent.tee.sev_guest import SevGuestBackend
from keepmesh.agent.tee.tdx_guest import TdxGuestBackend


@dataclasses.dataclass(frozen=True)
class PlatformInterface:
    name: str
    kind: str
    path: str
    available: bool
    reason: str

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def _configfs_kind(root: Path) -> str:
    """configfs-tsm serves SNP or TDX; the CPU flags in /proc/cpuinfo say which."""
    try:
        flags = (root / "proc/cpuinfo").read_text(errors="replace")[:65536]
    except OSError:
        return "snp|tdx"
    if "tdx_guest" in flags:
        return "tdx"
    if "sev_snp" in flags:
        return "snp"
    return "snp|tdx"


def hardware_backends(root: str | Path = "/") -> list[TeeBackend | TdxGuestBackend]:
    r = Path(root)
    return [ConfigfsTsmBackend(r), SevGuestBackend(r), TdxGuestBackend(r), GramineBackend(r)]


def probe_platform(root: str | Path = "/") -> list[PlatformInterface]:
    """Every interface with whether it is usable here and, if not, why."""
    r = Path(root)
    out: list[PlatformInterface] = []
    cfg = ConfigfsTsmBackend(r)
    why = cfg.probe()
    out.append(PlatformInterface("configfs-tsm", _configfs_kind(r), str(cfg.base),
                                 why is None, why or "usable"))
    sev = SevGuestBackend(r)
    why = sev.probe()
    out.append(PlatformInterface("sev-guest", "snp", str(sev.device), why is None,
                                 why or "usable"))
    tdx = TdxGuestBackend(r)
    why = tdx.probe()
    out.append(PlatformInterface(
        "tdx-guest", "tdx", str(tdx.device), False,
        why or "present, but yields only a local TDREPORT; quotes come via configfs-tsm"))
    gr = GramineBackend(r)
    why = gr.probe()
    out.append(PlatformInterface("gramine", "sgx", str(gr.base), why is None, why or "usable"))
    return out


def auto_backend(root: str | Path = "/", sim_root: str | Path | None = None,
                 data_dir: str | Path | None = None) -> TeeBackend:
    """First usable hardware backend; the sim only when `sim_root` is given.

    Raises TeeUnavailable listing why each hardware interface was skipped.
    """
    r = Path(root)
    reasons = []
    for backend in (ConfigfsTsmBackend(r), SevGuestBackend(r), GramineBackend(r)):
        why = backend.probe()
        if why is None:
            if isinstance(backend, ConfigfsTsmBackend):
                backend.kind = _configfs_kind(r)
            return backend
        reasons.append(f"{backend.name}: {why}")
    if sim_root is not None:
        from keepmesh.agent.tee.sim import SimTee

        return SimTee(sim_root, data_dir if data_dir is not None else sim_root)
    raise TeeUnavailable("no TEE hardware interface usable (" + "; ".join(reasons) +
                         "); pass --tee sim --sim-root DIR for the insecure simulated TEE")


def backend_for(tee: str, root: str | Path = "/", sim_root: str | Path | None = None,
                data_dir: str | Path | None = None) -> TeeBackend:
    """Backend for an explicit `--tee` choice (snp, tdx, sgx, sim, auto)."""
    r = Path(root)
    if tee == "auto":
        return auto_backend(r, sim_root, data_dir)
    if tee == "sim":
        if sim_root is None:
            raise TeeUnavailable("--tee sim needs --sim-root DIR")
        from keepmesh.agent.tee.sim import SimTee

        return SimTee(sim_root, data_dir if data_dir is not None else sim_root)
    candidates: dict[str, list[TeeBackend]] = {
        "snp": [ConfigfsTsmBackend(r), SevGuestBackend(r)],
        "tdx": [ConfigfsTsmBackend(r)],
        "sgx": [GramineBackend(r)],
    }
    if tee not in candidates:
        raise TeeUnavailable(f"unknown TEE kind {tee!r}")
    reasons = []
    for backend in candidates[tee]:
        why = backend.probe()  # type: ignore[attr-defined]
        if why is None:
            if isinstance(backend, ConfigfsTsmBackend):
                backend.kind = tee
            return backend
        reasons.append(f"{backend.name}: {why}")
    raise TeeUnavailable(f"--tee {tee}: " + "; ".join(reasons))
