"""Prometheus can scrape an agent: /metrics parses as exposition text, /healthz answers.

A real agent process (`keepmesh agent --metrics`), a second agent joining it
so handshakes, RPCs, members and bytes move; then the text is parsed with
prometheus_client's own parser, the way a Prometheus server reads it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from agent_proc import AgentProc
from prometheus_client.parser import text_string_to_metric_families
from walkthrough import free_port


def scrape(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Content-Type", "")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_method_labels_are_bounded() -> None:
    from keepmesh.agent import metrics
    assert metrics.method_label("keeps.call") == "keeps.call"
    assert metrics.method_label("x" * 60) == "other"  # a peer's made-up method: no new series


def test_a_dropped_agent_is_not_kept_alive_by_metrics() -> None:
    """Tests build many agents in one process: the registry must not pin them."""
    import gc
    import weakref

    from keepmesh.agent import metrics

    class FakeAgent:
        address = ""

    agent = FakeAgent()
    service = {"agent": agent}  # a source refers back to its agent, as real services do
    metrics.add_source(agent, "members", lambda: {"alive": len(service)})
    ref = weakref.ref(agent)
    del agent, service
    gc.collect()
    assert ref() is None


def test_metrics_endpoint_refuses_a_bad_address(tmp_path: Path, sim_root: Path) -> None:
    from keepmesh.agent.cli import main
    assert main(["agent", "--tee", "sim", "--sim-root", str(sim_root), "--data-dir",
                 str(tmp_path / "a"), "--listen", "127.0.0.1:0", "--metrics", "nope"]) == 1


@pytest.mark.slow
def test_scrape_a_real_agent(tmp_path: Path, sim_root: Path) -> None:
    mport = free_port()
    a = AgentProc(tmp_path / "a", sim_root, "--metrics", f"127.0.0.1:{mport}")
    b = None
    try:
        a.wait_for("listening on")
        b = AgentProc(tmp_path / "b", sim_root, "--join", a.address)
        a.wait_for("member ")  # b joined a's membership
        status, body, ctype = scrape(f"http://127.0.0.1:{mport}/healthz")
        assert status == 200 and ctype == "application/json"
        health = json.loads(body)
        assert health["status"] == "ok" and health["tee"] == "sim"
        status, body, ctype = scrape(f"http://127.0.0.1:{mport}/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        got = samples(body.decode())
        fp = health["fingerprint"]
        assert got[("keepmesh_up", (("agent", fp),))] == 1.0
        assert got[("keepmesh_attested_peers", (("agent", fp),))] >= 1.0
        assert got[("keepmesh_members", (("agent", fp), ("state", "alive")))] == 2.0
        assert got[("keepmesh_channel_handshakes_total", (("outcome", "ok"),))] >= 1.0
        assert got[("keepmesh_transport_bytes_total", (("direction", "in"),))] > 0
        assert got[("keepmesh_transport_bytes_total", (("direction", "out"),))] > 0
        assert any(name == "keepmesh_rpc_requests_total" and dict(labels)["outcome"] == "ok"
                   for name, labels in got)
        assert ("keepmesh_evidence_age_seconds", (("agent", fp),)) in got
        assert scrape(f"http://127.0.0.1:{mport}/nope")[0] == 404
    finally:
        if b is not None:
            b.stop()
        a.stop()
