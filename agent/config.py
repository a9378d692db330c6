"""Agent configuration: a TOML file, overridden by command-line flags.

Example (keys are optional; flags win):

    listen = "0.0.0.0:7400"
    advertise = "10.0.0.5:7400"     # what peers dial; defaults to the bound address
    join = ["10.0.0.6:7400"]
    tee = "auto"                    # auto | snp | tdx | sgx | sim
    sim_root = "/etc/keepmesh/sim-root"
    data_dir = "/var/lib/keepmesh"
    roots = ["extra-root.pem"]      # extra trusted roots (e.g. another site's sim root)
    policy = "policy.toml"          # appraisal policy for peers (specs/attestation.md)
    collateral = "collateral/"      # TCB info, QE identity, CRLs applied to peers' evidence
    owners = ["<hex ed25519 public key>"]   # owner keys admitted to deploy
    profile = "lan"                 # membership timing profile
    metrics = "127.0.0.1:9400"      # serve /metrics and /healthz here
    log_format = "text"             # text | json
    discover = false                # find agents on the LAN by mDNS (DNS-SD)
    [labels]
    zone = "edge-1"
    [capacity]                      # offered to keeps (advertised; the lease table decides)
    memory = "2GiB"
    keeps = 16
    [limits]                        # inbound QUIC admission (specs/wire.md "Limits")
    connections = 512
    connections_per_source = 64     # raise for many agents behind one address
    handshakes = 128
    handshakes_per_source = 16
    [transport]                     # QUIC datagram size (specs/wire.md "Datagram size")
    max_datagram_size = 1472        # only if every path between your agents carries it

KEY_DOCS below is the reference for every key; docs/config.md is generated
from it (`python -m keepmesh.agent.config`) and tests/test_docs.py checks
the two agree, and that every AgentConfig field is documented.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keepmesh.agent.transport.limits import AdmissionLimits, LimitsError, TransportSettings
from keepmesh.protocol.errors import ProtocolError

from keepmesh.files import read_at_most

TEE_CHOICES = ("auto", "snp", "tdx", "sgx", "sim")
MAX_CONFIG = 1024 * 1024


SYSTEM_DATA_DIR = Path("/var/lib/keepmesh")
LOG_FORMATS = ("text", "json")


def default_data_dir() -> Path:
    """/var/lib/keepmesh for root (the systemd unit's StateDirectory), else the user's
    data dir ($XDG_DATA_HOME/keepmesh/agent, default ~/.local/share/keepmesh/agent)."""
    if os.geteuid() == 0:
        return SYSTEM_DATA_DIR
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "keepmesh" / "agent"


def default_config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "keepmesh"


@dataclass
class HostCapacity:
    """What this host offers to keeps: memory in bytes (None: the machine's), keep slots."""

    memory: int | None = None
    keeps: int = 16


MAX_KEEPS = 4096


@dataclass
class AgentConfig:
    listen: str = "127.0.0.1:7400"
    advertise: str | None = None
    join: list[str] = field(default_factory=list)
    tee: str = "auto"
    sim_root: Path | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    roots: list[Path] = field(default_factory=list)
    policy: Path | None = None
    collateral: Path | None = None
    owners: list[bytes] = field(default_factory=list)
    profile: str = "lan"
    labels: dict[str, str] = field(default_factory=dict)
    metrics: str | None = None
    log_format: str = "text"
    discover: bool = False
    capacity: HostCapacity = field(default_factory=lambda: HostCapacity())
    limits: AdmissionLimits = field(default_factory=lambda: AdmissionLimits())
    transport: TransportSettings = field(default_factory=lambda: TransportSettings())


_KEYS: dict[str, type | tuple[type, ...]] = {
    "listen": str, "advertise": str, "join": list, "tee": str, "sim_root": str,
    "data_dir": str, "roots": list, "policy": str, "collateral": str, "owners": list,
    "profile": str,
    "labels": dict, "metrics": str, "log_format": str, "discover": bool,
    "capacity": dict, "limits": dict, "transport": dict,
}

# key -> (TOML type, default as written in the reference, flag, what it does).
KEY_DOCS: dict[str, tuple[str, str, str, str]] = {
    "listen": ("string HOST:PORT", '"127.0.0.1:7400"', "--listen",
               "UDP address to listen on (QUIC)"),
    "advertise": ("string HOST:PORT", "the bound address", "--advertise",
                  "address peers should dial, e.g. behind NAT"),
    "join": ("list of HOST:PORT", "[]", "--join", "seed agents to join at start"),
    "tee": ("string", '"auto"', "--tee", "TEE backend: auto, snp, tdx, sgx or sim (INSECURE)"),
    "sim_root": ("path", "none", "--sim-root", "sim root directory, for tee = \"sim\" only"),
    "data_dir": ("path", "/var/lib/keepmesh as root, else ~/.local/share/keepmesh/agent",
                 "--data-dir", "identity key, keeps and their sealed state (0700)"),
    "roots": ("list of paths", "[]", "--root", "extra trusted roots for peers' evidence"),
    "policy": ("path", "same measured image as this agent", "--policy",
               "appraisal policy for peers (docs/policies.md)"),
    "collateral": ("path", "none", "", "Intel TCB info, QE identity and CRLs (file or dir)"),
    "owners": ("list of hex keys", "[]", "--owner",
               "Ed25519 public keys admitted to deploy and manage (keepmesh keygen --public)"),
    "profile": ("string", '"lan"', "", "membership timing profile (lan, wan, ...)"),
    "labels": ("table of strings", "{}", "--label", "labels other agents see (placement, keepmesh "
               "members); values at most 64 characters"),
    "metrics": ("string HOST:PORT", "none (off)", "--metrics",
                "serve Prometheus /metrics and /healthz over HTTP"),
    "log_format": ("string", '"text"', "--log-format", "text, or json (one object per line)"),
    "discover": ("boolean", "false", "--discover",
                 "find and join agents on the LAN by mDNS/DNS-SD (still attested)"),
    "capacity": ("table: memory (size), keeps (int)", "machine memory, 16 keeps",
                 "--memory, --max-keeps", "offered to keeps; advertised in the signed record, "
                 "enforced by this agent's lease table"),
    "limits": ("table: connections, connections_per_source, handshakes, handshakes_per_source "
               "(ints)", "512, 64, 128, 16", "--max-connections, --max-connections-per-source",
               "inbound QUIC connections and handshakes in progress admitted in total and per "
               "source IP (specs/wire.md Limits); connections ≤ 16384, handshakes ≤ 1024, per "
               "source ≤ total; raise connections_per_source for many agents behind one "
               "address (a local mesh of more than 64 agents on one loopback address)"),
    "transport": ("table: max_datagram_size (int)", "none (1200)", "",
                  "UDP payload size for QUIC to peers not on loopback, in [1200, 16000], capped "
                  "by the first hop's MTU; set it only if every path between your agents "
                  "carries it (e.g. 1472 on a 1500-MTU LAN): aioquic does no path-MTU "
                  "discovery and larger packets move bulk data faster (specs/wire.md "
                  "Datagram size). Loopback peers always get up to 16000"),
}
# Paths are relative to the config file's directory.


def load_config(path: Path) -> AgentConfig:
    """Parse a config file; any problem is a ProtocolError naming the file and key."""
    try:
        raw = read_at_most(path, MAX_CONFIG)
    except OSError as err:
        raise ProtocolError(f"{path}: cannot read: {err.strerror}") from None
    if len(raw) > MAX_CONFIG:
        raise ProtocolError(f"{path}: larger than {MAX_CONFIG} bytes")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ProtocolError(f"{path}: not valid TOML: {err}") from None
    except RecursionError:  # tomllib recurses on nested arrays/tables
        raise ProtocolError(f"{path}: not valid TOML: nested too deeply") from None
    return config_from_dict(data, str(path), base=path.parent)


def config_from_dict(data: dict[str, Any], source: str, base: Path = Path(".")) -> AgentConfig:
    cfg = AgentConfig()
    for key, value in data.items():
        expected = _KEYS.get(key)
        if expected is None:
            raise ProtocolError(f"{source}: unknown key {key!r}")
        if not isinstance(value, expected):
            kind = getattr(expected, "__name__", str(expected))
            raise ProtocolError(f"{source}: key {key!r} must be {kind}")
        items: Any = value  # isinstance above narrowed it to `object` for mypy
        if key in ("join", "roots", "owners") and not all(isinstance(v, str) for v in items):
            raise ProtocolError(f"{source}: key {key!r} must be a list of strings")
        if key == "labels" and not all(isinstance(k, str) and isinstance(v, str) and len(v) <= 64
                                       for k, v in items.items()):
            raise ProtocolError(f"{source}: key 'labels' must map strings to short strings")
    if "tee" in data and data["tee"] not in TEE_CHOICES:
        raise ProtocolError(f"{source}: key 'tee' must be one of {', '.join(TEE_CHOICES)}")
    if "log_format" in data and data["log_format"] not in LOG_FORMATS:
        raise ProtocolError(f"{source}: key 'log_format' must be one of "
                            f"{', '.join(LOG_FORMATS)}")

    def rel(p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else base / q

    for key in ("listen", "advertise", "tee", "profile", "metrics", "log_format", "discover"):
        if key in data:
            setattr(cfg, key, data[key])
    if "join" in data:
        cfg.join = list(data["join"])
    if "sim_root" in data:
        cfg.sim_root = rel(data["sim_root"])
    if "data_dir" in data:
        cfg.data_dir = rel(data["data_dir"])
    if "policy" in data:
        cfg.policy = rel(data["policy"])
    if "collateral" in data:
        cfg.collateral = rel(data["collateral"])
    if "roots" in data:
        cfg.roots = [rel(p) for p in data["roots"]]
    if "owners" in data:
        cfg.owners = [parse_public_key(v, f"{source}: owners") for v in data["owners"]]
    if "labels" in data:
        cfg.labels = dict(data["labels"])
    if "capacity" in data:
        cfg.capacity = parse_capacity(data["capacity"], source)
    if "limits" in data:
        cfg.limits = parse_limits(data["limits"], source)
    if "transport" in data:
        try:
            cfg.transport = TransportSettings.from_table(data["transport"], source)
        except LimitsError as err:
            raise ProtocolError(str(err)) from None
    return cfg


def parse_capacity(table: dict[str, Any], source: str) -> HostCapacity:
    """[capacity] memory = "2GiB" (sizes as in keepmesh.toml), keeps = 16."""
    unknown = sorted(set(table) - {"memory", "keeps"})
    if unknown:
        raise ProtocolError(f"{source}: unknown key 'capacity.{str(unknown[0])[:40]}'")
    cap = HostCapacity()
    if "memory" in table:
        cap.memory = parse_memory(table["memory"], f"{source}: capacity.memory")
    if "keeps" in table:
        cap.keeps = parse_keeps(table["keeps"], f"{source}: capacity.keeps")
    return cap


def parse_limits(table: dict[str, Any], source: str,
                 base: AdmissionLimits | None = None) -> AdmissionLimits:
    """[limits] connections / connections_per_source / handshakes / handshakes_per_source,
    each an integer within its bound (AdmissionLimits), a per-source value at most its total."""
    try:
        return AdmissionLimits.from_table(table, source, base)
    except LimitsError as err:
        raise ProtocolError(str(err)) from None


def parse_memory(value: object, where: str) -> int:
    from keepmesh.protocol.deployment import parse_size
    try:
        size: int = parse_size(value, "memory")
    except ProtocolError:
        raise ProtocolError(f"{where}: expected a size such as \"2GiB\"") from None
    if not 1024 * 1024 <= size <= 1 << 50:
        raise ProtocolError(f"{where}: {size} bytes outside [1MiB, 1PiB]")
    return size


def parse_keeps(value: object, where: str) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit():  # not '²' or '٣'
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_KEEPS:
        raise ProtocolError(f"{where}: expected an integer in [0, {MAX_KEEPS}]")
    return value


def parse_public_key(text: str, where: str) -> bytes:
    """An Ed25519 public key written as 64 hex characters."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ProtocolError(f"{where}: {text[:20]!r} is not hex") from None
    if len(key) != 32:
        raise ProtocolError(f"{where}: public key must be 32 bytes, got {len(key)}")
    return key


def reference_markdown() -> str:
    """The config file reference table (docs/config.md embeds exactly this)."""
    rows = ["| key | type | default | flag | what |", "|---|---|---|---|---|"]
    for key, (kind, default, flag, what) in KEY_DOCS.items():
        rows.append(f"| `{key}` | {kind} | {default} | {f'`{flag}`' if flag else '-'} | {what} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
