"""`keepmesh agent --discover`: two agents on loopback find, attest and join each other.

mDNS on 127.0.0.1 (the agents listen there, so they announce there): no
LAN traffic. A fake announcement for an address where nothing attests is
tried once and refused; the agent keeps serving.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import trio
from agent_proc import AgentProc
from keepmesh.agent.discovery import MAX_PENDING, MAX_REMEMBERED, SERVICE_TYPE, Discovery, \
    _interfaces
from walkthrough import free_port


def test_announces_on_the_listening_interface() -> None:
    assert _interfaces("127.0.0.1") == ["127.0.0.1"]
    assert _interfaces("0.0.0.0") is None  # all interfaces
    assert _interfaces("agent.example") is None


@pytest.mark.slow
def test_two_agents_find_each_other(tmp_path: Path, sim_root: Path) -> None:
    from zeroconf import IPVersion, ServiceInfo, Zeroconf

    a = AgentProc(tmp_path / "a", sim_root, "--discover")
    b = AgentProc(tmp_path / "b", sim_root, "--discover")
    fake = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    try:
        a.wait_for("announcing")
        b.wait_for("announcing")
        # No --join anywhere: membership comes from discovery alone, after attestation.
        a.wait_for("member ", timeout=90)
        b.wait_for("member ", timeout=90)
        assert "attested peer" in a.log() and "attested peer" in b.log()
        # A spoofed announcement: nothing attests there, so nothing joins.
        port = free_port()
        fake.register_service(ServiceInfo(
            SERVICE_TYPE, f"spoof.{SERVICE_TYPE}", addresses=[socket.inet_aton("127.0.0.1")],
            port=port, properties={"fp": "00" * 16}))
        a.wait_for(f"127.0.0.1:{port} not joined", timeout=90)
        time.sleep(0.5)
        assert a.proc.poll() is None and b.proc.poll() is None
    finally:
        fake.close()
        b.stop()
        a.stop()


def test_a_flood_of_announced_addresses_is_remembered_within_a_bound() -> None:
    """Anyone on the LAN can announce a new address every time: what the agent keeps of
    them (found, last dial times) stays bounded, the newest kept, the oldest forgotten."""

    class _Agent:
        address = "127.0.0.1:7400"

        def session_to_address(self, address: str) -> None:
            return None

    d = Discovery(_Agent())  # type: ignore[arg-type]
    send, recv = trio.open_memory_channel[str](MAX_PENDING)
    d._send = send
    n = 3 * MAX_REMEMBERED
    for i in range(n):
        d._offer(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:7400", "fp")
    assert len(d.found) == MAX_REMEMBERED and len(d._last_try) <= MAX_REMEMBERED
    last = n - 1
    assert d.addresses()[0] == f"10.{last >> 16 & 255}.{last >> 8 & 255}.{last & 255}:7400"
    assert "10.0.0.0:7400" not in d.found
