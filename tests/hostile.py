"""Helpers for the hostile-peer tests: an attacker speaking from its own loopback
address, a good client that must keep being served, and floods. (An agent in its
own process, whose RSS can be measured, is agent_proc.AgentProc.)

Linux routes all of 127.0.0.0/8 to loopback, so the attacker binds 127.0.0.2 and
the per-source limits can tell it apart from the good client on 127.0.0.1.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio
from keepmesh.agent.client import open_client
from keepmesh.agent.config import AgentConfig
from keepmesh.agent.identity import Identity
from keepmesh.agent.node import Agent
from keepmesh.agent.session import Session, establish
from keepmesh.agent.startup import build_agent
from keepmesh.agent.transport.quic import QuicEndpoint, QuicPeerConnection, parse_address
from keepmesh.protocol.attestation.certs import TrustStore
from keepmesh.protocol.attestation.policy import Policy
from keepmesh.protocol.channel import ChannelConfig, EvidenceCache
from keepmesh.protocol.rpc import RpcRequest, pack_body
from keepmesh.protocol.wire import encode_frame

ATTACKER = "127.0.0.2"
GOOD_CLIENT_BUDGET_S = 5.0


def make_agent(tmp: Path, root: Path, name: str, **kw: Any) -> Agent:
    return build_agent(AgentConfig(listen="127.0.0.1:0", tee="sim", sim_root=root,
                                   data_dir=tmp / name, **kw))


async def start_agent(nursery: trio.Nursery, agent: Agent) -> str:
    address: str = await nursery.start(agent.run)
    return address


async def attacker_endpoint(nursery: trio.Nursery, source: str = ATTACKER) -> QuicEndpoint:
    ep = QuicEndpoint(Identity.generate())
    await nursery.start(ep.serve, source, 0)
    return ep


async def raw_connection(ep: QuicEndpoint, address: str) -> QuicPeerConnection:
    """TLS done, no attested channel yet: the attacker decides what comes next."""
    host, port = parse_address(address)
    return await ep.connect(host, port)


async def attacker_session(ep: QuicEndpoint, address: str, root: Path,
                           cache: EvidenceCache | None = None) -> Session:
    """An attested *client* session: any key can have one (clients need no TEE).
    Passing one `cache` to many calls verifies the agent's evidence once."""
    from keepmesh.agent.client import load_roots
    roots = load_roots([root / "ark.pem"])
    from keepmesh.protocol.attestation.certs import fingerprint
    config = ChannelConfig(role="client", trust=TrustStore(roots),
                           policy=Policy(allow_sim=True,
                                         sim_roots=tuple(fingerprint(c) for c in roots)),
                           expect_peer_role="agent")
    conn = await raw_connection(ep, address)
    return await establish(conn, identity=ep.identity, attester=None, config=config,
                           cache=cache if cache is not None else EvidenceCache(),
                           rng=random.Random(1))


def request_frame(method: str, body: dict[str, Any] | None = None) -> bytes:
    return encode_frame(RpcRequest(method=method, body=pack_body(body or {})), 32 << 20)


async def good_client_served(address: str, root: Path, key: Path,
                             within: float = GOOD_CLIENT_BUDGET_S) -> float:
    """A well-behaved client connects, attests the agent and gets `agent.peers` in time;
    returns how long it took."""
    t0 = time.monotonic()
    with trio.fail_after(within):
        client = await open_client(address, roots=[root / "ark.pem"], key_path=key,
                                   timeout=within)
        try:
            reply = await client.call("agent.peers", {})
        finally:
            await client.aclose()
    assert isinstance(reply.get("peers"), list)
    return time.monotonic() - t0


# ------------------------------------------------------------ Initial floods
def garbage_initial() -> bytes:
    """A long-header Initial that parses but holds no real ClientHello."""
    dcid, scid = os.urandom(8), os.urandom(8)
    head = bytes([0xC3]) + (1).to_bytes(4, "big") + bytes([8]) + dcid + bytes([8]) + scid + b"\0"
    rest = 1200 - len(head) - 2
    return head + (0x4000 | rest).to_bytes(2, "big") + os.urandom(rest)


def half_open_initial(address: tuple[str, int]) -> bytes:
    """A genuine first flight (ClientHello) from a client that will never answer."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    cfg = QuicConfiguration(is_client=True, alpn_protocols=["keepmesh/1"])
    conn = QuicConnection(configuration=cfg)
    conn.connect(address, now=time.monotonic())
    return b"".join(d for d, _ in conn.datagrams_to_send(now=time.monotonic()))


def flood(address: str, seconds: float, rate: float, mode: str, source: str = ATTACKER) -> int:
    """Send Initials at `rate` per second for `seconds`; returns how many were sent."""
    import socket
    host, port = parse_address(address)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sent = 0
    t0 = time.monotonic()
    while (now := time.monotonic()) - t0 < seconds:
        if sent > (now - t0) * rate:
            time.sleep(0.002)
            continue
        packet = garbage_initial() if mode == "garbage" else half_open_initial((host, port))
        try:
            sock.sendto(packet, (host, port))
        except OSError:
            pass
        sent += 1
    return sent


class Flooder:
    """`flood` in its own process, so it does not steal the agent's interpreter."""

    def __init__(self, address: str, seconds: float, rate: float, mode: str) -> None:
        here = Path(__file__).resolve().parent
        self.proc = subprocess.Popen(
            [sys.executable, "-c",
             f"import sys; sys.path.insert(0, {str(here)!r}); import hostile; "
             f"print(hostile.flood({address!r}, {seconds}, {rate}, {mode!r}))"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def wait(self) -> int:
        out, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err.decode()[-2000:]
        return int(out.decode().strip())
