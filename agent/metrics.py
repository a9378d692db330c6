"""Prometheus metrics for an agent: every definition in this one module.

Why here: increment points live where things happen (session.establish,
rpc serving, the transport's socket loop); the names, help texts and label
sets live in one place so they stay consistent and bounded. Labels take only
values from fixed sets (an RPC method name a peer chose is folded into
"other"), so a hostile peer cannot grow the series without bound.

Counters are per process (tests may run several agents in one process; a
deployed agent is one process). Gauges (members by state, attested peers,
keeps by state, evidence age) are read from the agent at scrape time by a
collector, so they are never stale and cost nothing between scrapes.

`serve(agent, "HOST:PORT")` starts a small HTTP server thread answering
`/metrics` (Prometheus text format) and `/healthz` (JSON, 200 when the agent
is serving, else 503).
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: they double the output and nobody graphs them
REGISTRY = CollectorRegistry(auto_describe=True)

# Bounded label values.
KNOWN_METHODS = frozenset({
    "agent.status", "agent.peers", "agent.join", "agent.leave", "members.list", "swim.stream",
    "swim.pushpull", "keeps.list", "keeps.logs", "keeps.call", "keeps.stop", "keeps.deploy",
    "keeps.deliver", "keeps.secret_set", "keeps.place", "keeps.migrate", "keeps.drain",
})
HANDSHAKE_OUTCOMES = ("ok", "verification", "policy", "protocol", "transport", "peer_rejected")

HANDSHAKES = Counter("keepmesh_channel_handshakes_total",
                     "Attested channel handshakes by outcome (ok, or why it failed)",
                     ["outcome"], registry=REGISTRY)
RPCS = Counter("keepmesh_rpc_requests_total",
               "RPC requests served, by method and outcome (ok or the error code)",
               ["method", "outcome"], registry=REGISTRY)
TRANSPORT_BYTES = Counter("keepmesh_transport_bytes_total",
                          "UDP payload bytes sent and received by the QUIC endpoint",
                          ["direction"], registry=REGISTRY)
PLACEMENTS = Counter("keepmesh_placements_total",
                     "Keep placement decisions made by this agent, by outcome",
                     ["outcome"], registry=REGISTRY)
MIGRATIONS = Counter("keepmesh_migrations_total",
                     "Keep migrations this agent took part in, by outcome",
                     ["outcome"], registry=REGISTRY)

for _outcome in HANDSHAKE_OUTCOMES:  # export zeros so rate() works from the first scrape
    HANDSHAKES.labels(outcome=_outcome)
for _direction in ("in", "out"):
    TRANSPORT_BYTES.labels(direction=_direction)
for _outcome in ("moved", "fenced", "orphaned"):
    MIGRATIONS.labels(outcome=_outcome)
for _outcome in ("placed", "failed", "timeout"):
    PLACEMENTS.labels(outcome=_outcome)


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def count_handshake(outcome: str) -> None:
    HANDSHAKES.labels(outcome=outcome if outcome in HANDSHAKE_OUTCOMES else "protocol").inc()


def count_rpc(method: str, outcome: str) -> None:
    RPCS.labels(method=method_label(method), outcome=outcome[:32]).inc()


def count_bytes(direction: str, n: int) -> None:
    TRANSPORT_BYTES.labels(direction=direction).inc(n)


# Migration engine events (protocol/migration effects) -> outcome label.
_MIGRATION_OUTCOMES = {"KeepMoved": "moved", "KeepFenced": "fenced", "KeepOrphaned": "orphaned"}


def count_migration(event: str) -> None:
    """Count a migration event by its effect type name; other events are not outcomes."""
    outcome = _MIGRATION_OUTCOMES.get(event)
    if outcome is not None:
        MIGRATIONS.labels(outcome=outcome).inc()


def count_placement(outcome: str) -> None:
    """keeps.place outcomes (agent/placement_service.py): placed, failed, timeout."""
    PLACEMENTS.labels(outcome=outcome[:32]).inc()


# ------------------------------------------------------------------ gauges

Source = Callable[[], dict[str, int]]
# Only weak references here: a stopped agent (tests build many in one process) must be
# collectable. Its sources live on the agent itself (they refer back to it, which is a
# plain cycle the garbage collector frees, not a global strong reference).
_agents: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()
SOURCES_ATTR = "metric_sources"


def add_source(agent: Any, name: str, source: Source) -> None:
    """A service reports a count-by-state (e.g. "members", "keeps") for `agent`.

    The source runs on the scrape thread: it must only read (copy) state.
    """
    with _lock:
        sources = agent.__dict__.setdefault(SOURCES_ATTR, {})
        sources[name] = source
        _agents.add(agent)


def watch(agent: Any) -> None:
    with _lock:
        _agents.add(agent)


def _safe_counts(source: Source) -> dict[str, int]:
    # The agent mutates its dicts on the trio thread while we read: a concurrent
    # change can raise RuntimeError; one retry, then report nothing this scrape.
    for _ in range(2):
        try:
            return {str(k): int(v) for k, v in source().items()}
        except RuntimeError:
            continue
    return {}


class AgentCollector(Collector):
    """Reads gauges from the watched agents at scrape time."""

    def collect(self) -> Iterator[Metric]:
        with _lock:
            agents = list(_agents)
            sources = {id(a): dict(getattr(a, SOURCES_ATTR, {})) for a in agents}
        up = GaugeMetricFamily("keepmesh_up", "1 while the agent serves", labels=["agent"])
        peers = GaugeMetricFamily("keepmesh_attested_peers",
                                  "Agents with an attested, connected session", labels=["agent"])
        age = GaugeMetricFamily("keepmesh_evidence_age_seconds",
                                "Age of the evidence this agent presents to peers",
                                labels=["agent"])
        peer_age = GaugeMetricFamily("keepmesh_peer_evidence_age_seconds",
                                     "Age of the oldest verification among connected peers",
                                     labels=["agent"])
        members = GaugeMetricFamily("keepmesh_members", "Members in the agent's view, by state",
                                    labels=["agent", "state"])
        keeps = GaugeMetricFamily("keepmesh_keeps", "Keeps on this agent, by state",
                                  labels=["agent", "state"])
        now = time.time()
        for agent in agents:
            name = str(getattr(getattr(agent, "identity", None), "fingerprint", "?"))
            up.add_metric([name], 1.0 if getattr(agent, "address", "") else 0.0)
            connected = [p for p in list(getattr(agent, "peers", {}).values())
                         if p.session is not None and not p.session.closed.is_set()]
            peers.add_metric([name], float(len(connected)))
            if connected:
                peer_age.add_metric([name], max(0.0, now - min(p.verified_at for p in connected)))
            issued = getattr(getattr(agent, "attester", None), "_generic", None)
            if issued is not None:
                age.add_metric([name], max(0.0, now - float(issued[1])))
            for src_name, family in (("members", members), ("keeps", keeps)):
                source = sources.get(id(agent), {}).get(src_name)
                if source is not None:
                    for state, n in sorted(_safe_counts(source).items()):
                        family.add_metric([name, state], float(n))
        yield from (up, peers, age, peer_age, members, keeps)


REGISTRY.register(AgentCollector())


def render() -> bytes:
    return generate_latest(REGISTRY)


# ------------------------------------------------------------------ HTTP

def health(agent: Any) -> tuple[bool, dict[str, Any]]:
    """Serving = bound, own evidence verified, not leaving."""
    address = getattr(agent, "address", "")
    ok = bool(address) and getattr(agent, "own_evidence", None) is not None \
        and not getattr(agent, "leaving", False)
    connected = sum(1 for p in list(getattr(agent, "peers", {}).values())
                    if p.session is not None and not p.session.closed.is_set())
    return ok, {"status": "ok" if ok else "unavailable", "address": address,
                "fingerprint": agent.identity.fingerprint, "tee": agent.backend.kind,
                "attested_peers": connected,
                "uptime_s": round(time.time() - float(getattr(agent, "started_at", time.time())),
                                  3)}


class MetricsServer:
    """`/metrics` and `/healthz` over HTTP on a daemon thread (prometheus scrapes it)."""

    def __init__(self, agent: Any, host: str, port: int) -> None:
        watch(agent)
        agent_ref = weakref.ref(agent)

        class Handler(BaseHTTPRequestHandler):
            server_version = "keepmesh"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                live = agent_ref()
                if path == "/metrics":
                    self._send(200, render(), "text/plain; version=0.0.4; charset=utf-8")
                elif path == "/healthz" and live is not None:
                    ok, doc = health(live)
                    self._send(200 if ok else 503, json.dumps(doc, sort_keys=True).encode(),
                               "application/json")
                else:
                    self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # scrapes every 15 s are not news

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        bound_host, bound_port = self.httpd.server_address[:2]
        self.address = f"{bound_host!s}:{bound_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="keepmesh-metrics",
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(agent: Any, address: str) -> MetricsServer:
    """Start serving metrics for `agent` on HOST:PORT (port 0 picks one); raises OSError."""
    from keepmesh.agent.transport.quic import parse_address

    host, port = parse_address(address)  # ProtocolError with a one-line reason
    return MetricsServer(agent, host, port)


def counts_by(items: Iterable[Any], key: Callable[[Any], str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        k = key(item)
        out[k] = out.get(k, 0) + 1
    return out
