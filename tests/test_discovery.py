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
from agent_proc import AgentProc
from keepmesh.agent.discovery import SERVICE_TYPE, _interfaces
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
