"""The CLI side of agent RPC: a client, not an agent.

A client has an operator (or owner) Ed25519 key but no TEE. It verifies the
agent's evidence against the pinned vendor roots plus any `--root` given, and
a policy (the deployment's, for `deploy`). Sim evidence is accepted only when
its root was given explicitly.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio
from keepmesh.agent.cli import CommandError
from keepmesh.agent.config import default_config_dir
from keepmesh.agent.identity import Identity, load_or_create
from keepmesh.agent.rpc import RpcError, call
from keepmesh.agent.session import ChannelFailed, Session, establish
from keepmesh.agent.transport.quic import ConnectionClosed, QuicEndpoint, parse_address
from keepmesh.protocol.attestation.certs import TrustStore, fingerprint, load_certificates
from keepmesh.protocol.attestation.evidence import VerifiedEvidence
from keepmesh.protocol.attestation.policy import Policy
from keepmesh.protocol.channel import ChannelConfig, EvidenceCache
from keepmesh.protocol.errors import ProtocolError

from keepmesh.files import read_at_most

CONNECT_TIMEOUT_S = 15.0
MAX_ROOT_FILE = 512 * 1024  # a --root PEM/DER file (as `attest verify --root`)


def operator_key_path() -> Path:
    return default_config_dir() / "operator.key"


def load_roots(paths: Sequence[Path]) -> list[Any]:
    """Extra trusted roots from PEM/DER files; a bad file is a one-line CommandError."""
    certs = []
    for path in paths:
        try:
            data = read_at_most(path, MAX_ROOT_FILE)
        except OSError as err:
            raise CommandError(f"cannot read root {path}: {err.strerror}") from None
        if len(data) > MAX_ROOT_FILE:
            raise CommandError(f"root {path}: larger than {MAX_ROOT_FILE} bytes")
        try:
            found = load_certificates(data)
        except ProtocolError as err:
            raise CommandError(f"root {path}: {err.reason}") from None
        if not found:
            raise CommandError(f"root {path}: no certificate found")
        certs.extend(found)
    return certs


STALE_EPOCH_RETRY_S = (0.5, 1.0, 2.0)  # a keep moving between hosts (specs/wire.md)


def client_policy(roots: Sequence[Any]) -> Policy:
    """Default: hardware evidence under vendor roots, or sim evidence under the given roots."""
    fps = tuple(fingerprint(c) for c in roots)
    return Policy(allow_sim=bool(fps), sim_roots=fps)


def explain_rpc_error(err: RpcError, body: dict[str, Any]) -> str:
    """One line saying what went wrong and what to do, chosen by the error's code."""
    keep = body.get("keep") if isinstance(body.get("keep"), str) else None
    if err.code == "not_found" and keep is not None:
        return (f"keep {keep[:64]} is not yours or does not exist; pass the owner's --key "
                f"(`keepmesh keeps` lists the keeps this key can see)")
    if err.code == "forbidden" and err.method in ("agent.join", "agent.leave"):
        return ("this key is not an admitted owner of the agent; pass an owner's --key, or "
                "start the agent with --owner <public key> (`keepmesh keygen --public FILE`)")
    if err.code == "forbidden":
        return f"{err}; pass the owner's --key"
    if err.code == "unknown_method":
        return f"{err}: the agent does not offer this (an older version? see `keepmesh status`)"
    if err.code == "stale_epoch":
        return f"{err}; the keep is moving between hosts, try again"
    if err.code == "unavailable":
        return f"{err}; `keepmesh keeps` shows whether it is moving or orphaned"
    if err.code == "busy":
        return f"{err}; the agent is busy or unreachable, try again"
    return str(err)


def explain_channel_failure(address: str, err: ChannelFailed, have_roots: bool) -> str:
    """Why the agent could not be attested, with the fix for the common cases."""
    if err.kind == "verification" and err.local:
        hint = ("pass the root its evidence chains to with --root (for a sim-TEE agent: "
                "--root SIM_ROOT/ark.pem)" if not have_roots else
                "check that --root names the root this agent's evidence chains to")
        return f"agent {address}: its evidence did not verify ({err}); {hint}"
    if err.kind == "policy" and err.local:
        hint = ("a sim-TEE agent is accepted only with --root SIM_ROOT/ark.pem"
                if not have_roots else "check the policy and --root")
        return f"agent {address}: refused by policy ({err}); {hint}"
    if not err.local:
        return f"agent {address} refused this client: {err}"
    return f"agent {address}: {err}"


class AgentClient:
    """An attested session from the CLI to one agent."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.endpoint = QuicEndpoint(identity)
        self.session: Session | None = None
        self._scope = trio.CancelScope()
        self._done = trio.Event()

    @property
    def peer_key(self) -> bytes:
        assert self.session is not None
        return self.session.peer.identity

    @property
    def peer_evidence(self) -> VerifiedEvidence | None:
        assert self.session is not None
        return self.session.peer.evidence

    async def _start(self) -> None:
        started = trio.Event()

        async def run() -> None:
            try:
                with self._scope:
                    async with trio.open_nursery() as nursery:
                        await nursery.start(self.endpoint.serve, "0.0.0.0", 0)
                        started.set()
            except Exception:  # noqa: BLE001 - a system task must never raise
                pass
            finally:
                started.set()
                self._done.set()

        trio.lowlevel.spawn_system_task(run)
        await started.wait()
        if self.endpoint.sock is None:
            raise CommandError("cannot open a UDP socket")

    async def call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.session is not None
        for backoff in (*STALE_EPOCH_RETRY_S, None):
            try:
                return await call(self.session, method, body)
            except RpcError as err:
                if err.code == "stale_epoch" and backoff is not None:
                    await trio.sleep(backoff)  # the keep is moving: nothing was served
                    continue
                raise CommandError(explain_rpc_error(err, body)) from None
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        if self.session is not None:
            self.session.conn.close(0, "client done")
        self._scope.cancel()
        await self._done.wait()


def client_channel_config(root_certs: Sequence[Any], *, policy: Policy | None = None,
                          fresh: bool = False, collateral: object | None = None) -> ChannelConfig:
    """How a client appraises an agent: vendor roots plus `root_certs`, the given policy
    (else client_policy), and collateral (`--collateral`) applied in the channel exactly
    as an agent applies its configured collateral: Intel TCB info / QE identity decide
    tcb_status, CRLs revoke chain certificates, stale collateral fails. Without it an
    SGX/TDX agent's status is "unknown", which the default policy refuses (fail closed)."""
    return ChannelConfig(role="client", trust=TrustStore(list(root_certs)),
                         policy=policy or client_policy(root_certs), demand_fresh=fresh,
                         expect_peer_role="agent", collateral=collateral)


async def open_client(address: str, *, roots: Sequence[Path] = (), key_path: Path | None = None,
                      policy: Policy | None = None, fresh: bool = False,
                      timeout: float = CONNECT_TIMEOUT_S,
                      collateral: object | None = None) -> AgentClient:
    """Connect to the agent at `address` and verify it; raises CommandError with a reason.
    `collateral` is a loaded `Collateral` (client_channel_config says how it is used)."""
    try:
        host, port = parse_address(address)
        identity = load_or_create(Path(key_path) if key_path else operator_key_path(),
                                  name="keepmesh client")
    except ProtocolError as err:
        raise CommandError(err.reason) from None
    root_certs = load_roots(roots)
    config = client_channel_config(root_certs, policy=policy, fresh=fresh, collateral=collateral)
    client = AgentClient(identity)
    await client._start()
    try:
        with trio.move_on_after(timeout) as scope:
            conn = await client.endpoint.connect(host, port)
            client.session = await establish(conn, identity=identity, attester=None,
                                             config=config, cache=EvidenceCache(),
                                             rng=random.SystemRandom())
        if scope.cancelled_caught:
            raise CommandError(f"no attested answer from {address} within {timeout:g}s")
    except ChannelFailed as err:
        await client.aclose()
        raise CommandError(explain_channel_failure(address, err, bool(root_certs))) from None
    except ConnectionClosed as err:
        await client.aclose()
        raise CommandError(f"agent {address}: {err}") from None
    except BaseException:
        await client.aclose()
        raise
    return client
