"""Turn an AgentConfig into a ready Agent: identity, TEE backend, trust, policy, services.

Kept apart from node.py so the node stays about sessions and RPC, and tests
can build agents the same way the command line does.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from keepmesh.agent.client import load_roots
from keepmesh.agent.config import AgentConfig
from keepmesh.agent.identity import load_or_create
from keepmesh.agent.node import Agent
from keepmesh.agent.tee.base import TeeBackend, TeeUnavailable
from keepmesh.agent.transport.limits import AdmissionLimits, LimitsError
from keepmesh.agent.transport.quic import QuicEndpoint, parse_address
from keepmesh.protocol.attestation.certs import TrustStore, fingerprint
from keepmesh.protocol.attestation.collateral import (
    MAX_COLLATERAL_FILE,
    MAX_COLLATERAL_FILES,
    STATUS_ORDER,
    Collateral,
    load_collateral,
)
from keepmesh.protocol.attestation.evidence import VerifiedEvidence
from keepmesh.protocol.attestation.policy import (
    MAX_POLICY_FILE,
    MAX_VMPL,
    Policy,
    SgxPolicy,
    SnpPolicy,
    TdxPolicy,
    load_policy,
)
from keepmesh.protocol.errors import ProtocolError

from keepmesh.files import read_at_most

log = logging.getLogger("keepmesh.agent")


LOCK_FILE = "agent.lock"


class StartupError(Exception):
    """The agent cannot start; str() is the one-line reason."""


SELF_CHECK_TCB_STATUSES = ("unknown", *(s for s in STATUS_ORDER if s != "Revoked"))


def load_agent_collateral(path: Path) -> Collateral:
    """Collateral files from `path` (a file, or a directory's regular files), bounded.

    Applied by the channel to every peer's evidence (Intel TCB info / QE
    identity decide DCAP tcb_status; CRLs revoke chain certificates).
    """
    try:
        entries = [path] if path.is_file() else sorted(e for e in path.iterdir() if e.is_file())
    except OSError as err:
        raise StartupError(f"collateral {path}: {err.strerror}") from None
    if len(entries) > MAX_COLLATERAL_FILES:
        raise StartupError(f"collateral {path}: more than {MAX_COLLATERAL_FILES} files")
    files: dict[str, bytes] = {}
    for entry in entries:
        try:
            with open(entry, "rb") as fh:
                data = fh.read(MAX_COLLATERAL_FILE + 1)
        except OSError as err:
            raise StartupError(f"collateral {entry}: {err.strerror}") from None
        if len(data) > MAX_COLLATERAL_FILE:
            raise StartupError(f"collateral {entry}: larger than {MAX_COLLATERAL_FILE} bytes")
        files[entry.name] = data
    try:
        return load_collateral(files)
    except ProtocolError as err:
        raise StartupError(err.reason) from None


class DataDirLock:
    """An exclusive flock on `<data_dir>/agent.lock`, held while the agent lives.

    Two agents on one data dir would share an identity and keeps (two members
    with one key, two runtimes writing one keep's state): the second refuses to
    start. The kernel drops the lock when the process dies, so a crash never
    leaves a stale lock behind; the pid inside is only for the message.
    """

    def __init__(self, data_dir: Path) -> None:
        path = data_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise StartupError(f"data dir {data_dir}: cannot open {LOCK_FILE}: "
                               f"{err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise StartupError(f"data dir {data_dir} is in use by another agent{who}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def make_backend(cfg: AgentConfig) -> TeeBackend:
    from keepmesh.agent.tee.detect import backend_for
    try:
        return backend_for(cfg.tee, "/", cfg.sim_root, cfg.data_dir / "tee")
    except TeeUnavailable as err:
        raise StartupError(str(err)) from None
    except Exception as err:  # e.g. SimRootError: unusable sim root directory
        raise StartupError(str(err)) from None


def same_image_policy(own: VerifiedEvidence, sim_roots: tuple[bytes, ...]) -> Policy:
    """Default peer policy: peers must run the same measured image as we do.

    The measured agent image is what the trust model trusts; a homogeneous
    fleet shares it. Sites that mix images write a policy file instead.
    Sim evidence is accepted only when we run the sim ourselves, and only from
    the sim roots we were given.
    """
    m = (own.measurement,)
    if own.format == "sev-snp":
        sim = own.tee == "sim"
        return Policy(allowed_tee=("snp", "sim") if sim else ("snp",), allow_sim=sim,
                      sim_roots=sim_roots, snp=SnpPolicy(measurements=m))
    if own.format == "tdx":
        return Policy(allowed_tee=("tdx",), tdx=TdxPolicy(mrtd=m))
    return Policy(allowed_tee=("sgx",), sgx=SgxPolicy(mrenclave=m))


def build_agent(cfg: AgentConfig) -> Agent:
    data_dir = cfg.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(data_dir, 0o700)
    except OSError as err:
        raise StartupError(f"data dir {data_dir}: {err.strerror}") from None
    lock = DataDirLock(data_dir)
    try:
        agent = _build(cfg, data_dir)
    except BaseException:
        lock.release()
        raise
    agent.data_dir_lock = lock.release
    return agent


def _build(cfg: AgentConfig, data_dir: Path) -> Agent:
    try:
        identity = load_or_create(data_dir / "identity.key", name="keepmesh agent")
    except ProtocolError as err:
        raise StartupError(err.reason) from None
    except OSError as err:
        raise StartupError(f"identity key in {data_dir}: {err.strerror}") from None
    backend = make_backend(cfg)
    extra = []
    if backend.kind == "sim":
        root_attr = getattr(backend, "root_dir", cfg.sim_root)
        if root_attr is None:
            raise StartupError("--tee sim needs --sim-root DIR (make one with "
                               "`keepmesh sim init-root DIR`)")
        root_dir = Path(root_attr)
        extra += load_roots([root_dir / "ark.pem"])
    try:
        extra += load_roots(cfg.roots)
    except Exception as err:
        raise StartupError(str(err)) from None
    trust = TrustStore(extra)
    sim_roots = tuple(fingerprint(c) for c in extra)
    sim = backend.kind == "sim"
    # The self-check proves our evidence is genuine and chains to our roots; whether
    # its TCB status or VMPL is good enough is each peer's policy to decide.
    permissive = Policy(allowed_tee=("snp", "sgx", "tdx", "sim") if sim else ("snp", "sgx", "tdx"),
                        allow_sim=sim, sim_roots=sim_roots,
                        accepted_tcb_status=SELF_CHECK_TCB_STATUSES,
                        snp=SnpPolicy(max_vmpl=MAX_VMPL))
    agent = Agent(identity=identity, backend=backend, trust=trust, policy=permissive,
                  listen=cfg.listen, advertise=cfg.advertise, join=cfg.join, data_dir=data_dir,
                  admin_keys=cfg.owners)
    try:
        apply_limits(agent.endpoint, cfg.limits)
    except LimitsError as err:
        raise StartupError(str(err)) from None
    agent.endpoint.vouched_datagram_size = cfg.transport.max_datagram_size
    if cfg.collateral is not None:
        agent.collateral = load_agent_collateral(cfg.collateral)
    try:
        own = agent.self_check()
    except ProtocolError as err:
        raise StartupError(f"own evidence does not verify: {err.reason}") from None
    if cfg.policy is not None:
        try:
            text = read_at_most(cfg.policy, MAX_POLICY_FILE)
            if len(text) > MAX_POLICY_FILE:
                raise StartupError(f"policy {cfg.policy}: larger than {MAX_POLICY_FILE} bytes")
            agent.policy = load_policy(text, str(cfg.policy))
        except OSError as err:
            raise StartupError(f"policy {cfg.policy}: {err.strerror}") from None
        except ProtocolError as err:
            raise StartupError(err.reason) from None
    else:
        agent.policy = same_image_policy(own, sim_roots)
    try:
        _attach_services(agent, cfg)
    except ProtocolError as err:  # bad profile, unreadable or truncated keep storage key
        raise StartupError(err.reason) from None
    except OSError as err:
        raise StartupError(f"{err.filename or data_dir}: {err.strerror}") from None
    host, port = parse_address(cfg.listen)
    try:
        agent.endpoint.bind(host, port)  # port in use, address not here, bad name: now
    except ProtocolError as err:
        raise StartupError(err.reason) from None
    return agent


def apply_limits(endpoint: QuicEndpoint, limits: AdmissionLimits) -> None:
    """The config's [limits] on the endpoint's admission rules (before it serves)."""
    limits.check("limits")
    endpoint.max_connections = limits.connections
    endpoint.max_connections_per_host = limits.connections_per_source
    endpoint.handshakes.limit = limits.handshakes
    endpoint.max_handshakes_per_host = limits.handshakes_per_source


def _attach_services(agent: Agent, cfg: AgentConfig) -> None:
    """Mesh services that ride on the agent's sessions (keeps, membership)."""
    from keepmesh.agent import metrics
    from keepmesh.agent.membership_service import MembershipService, offered_capacity
    capacity, memory_bytes = offered_capacity(cfg.capacity.memory)
    members = MembershipService(agent, profile=cfg.profile, labels=cfg.labels,
                                capacity=capacity)
    metrics.add_source(agent, "members", lambda: metrics.counts_by(
        members.membership.members() if members.membership else [], lambda m: m.state.value))
    try:
        from keepmesh.agent.keeps.service import KeepService
    except ImportError:  # pragma: no cover - partial installs
        return
    service = KeepService(agent.data_dir / "keeps", cfg.owners, agent.identity.seed)
    metrics.add_source(agent, "keeps", lambda: metrics.counts_by(  # "failed: why" -> "failed"
        list(service.manager.keeps.values()), lambda k: str(k.status).split(":")[0]))
    agent.register(service.methods())
    from keepmesh.agent.placement_service import PlacementService
    PlacementService(agent, members, service, cfg.capacity, memory_bytes)
    from keepmesh.agent.migration_service import MigrationService
    migration = MigrationService(agent, service, members)
    from keepmesh.agent.workload_router import WorkloadRouter
    WorkloadRouter(agent, service, epochs=migration)

    async def run_keeps(nursery: object) -> None:
        await service.start()
        try:
            import trio
            await trio.sleep_forever()
        finally:
            import trio
            with trio.CancelScope(shield=True):
                await service.aclose()

    agent.services.append(run_keeps)
