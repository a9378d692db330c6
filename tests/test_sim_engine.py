"""Engine, network and metrics tests, driven by a tiny fake protocol (fake_protocol.py)."""

from __future__ import annotations

import random

from keepmesh.simulations.network import DROP_LOSS, DROP_PARTITION, LinkSpec, Network
from keepmesh.simulations.runner import simulate
from keepmesh.simulations.topology import parse_topology
from fake_protocol import FakeAdapter


def topo(extra: str = "", agents: int = 20, duration: float = 40.0, loss: float = 0.0):
    import tomllib
    doc = tomllib.loads(f"""
[mesh]
agents = {agents}
duration_s = {duration}
[network]
latency_ms = 5
loss = {loss}
{extra}
""")
    return parse_topology(doc, "t.toml")


def run(t, seed=1, attest=True):
    return simulate(t, seed, FakeAdapter(attest))


def test_same_seed_same_hash_and_different_seed_differs():
    t = topo('[[event]]\nat_s = 15\ncrash = 2\n', loss=0.05)
    a, _ = run(t, 7)
    b, _ = run(t, 7)
    c, _ = run(t, 8)
    assert a["trace_hash"] == b["trace_hash"]
    assert a["events"] == b["events"]
    assert a["metrics"] == b["metrics"]
    assert a["trace_hash"] != c["trace_hash"]


def test_conservation_every_message_delivered_or_dropped():
    t = topo('[[event]]\nat_s = 10\npartition = 0.5\n[[event]]\nat_s = 20\nheal = true\n'
             '[[event]]\nat_s = 25\ncrash = 3\n', loss=0.1)
    rep, sim = run(t, 3)
    m = rep["messages"]
    assert m["balanced"] == 1
    assert m["sent"] == m["delivered"] + m["dropped"] + m["in_flight"]
    assert rep["dropped_by_reason"].get("loss", 0) > 0
    assert rep["dropped_by_reason"].get("partition", 0) > 0
    assert rep["dropped_by_reason"].get("down", 0) > 0


def test_crash_is_detected_and_declared_dead_everywhere():
    t = topo('[[event]]\nat_s = 15\ncrash = 1\n', duration=60.0)
    rep, _ = run(t, 5)
    det = rep["metrics"]["detection_s"]
    assert det["detected"] == 1 and 0 < det["p50"] < 30
    dead = rep["metrics"]["dead_everywhere_s"]
    assert dead["complete"] == 1 and dead["max"] >= det["max"]
    assert rep["metrics"]["false_positives"] == 0


def test_no_crash_means_null_detection_metrics():
    rep, _ = run(topo(duration=20.0), 5)
    assert rep["metrics"]["detection_s"] is None
    assert rep["metrics"]["dead_everywhere_s"] is None


def test_tee_fault_answers_attest_with_failure():
    t = topo('[[event]]\nat_s = 10\ntcb_drop = 2\n[[event]]\nat_s = 12\njoin = 2\n',
             duration=20.0)
    rep, sim = run(t, 2)
    assert rep["metrics"]["event_counts"]["untrusted"] >= 2 * 18
    assert rep["metrics"]["attest_failures"] >= 2  # the newcomers attest the bad ones


def test_pause_buffers_and_resumes():
    t = topo('[[event]]\nat_s = 10\npause = 1\npause_s = 8\n', duration=30.0)
    rep, sim = run(t, 4)
    assert rep["messages"]["balanced"] == 1
    assert all(n.pending is None for n in sim.engine.nodes)


def test_restart_leave_join_churn_keep_running():
    t = topo('[[event]]\nat_s = 8\ncrash = 3\n[[event]]\nat_s = 14\nrestart = true\n'
             '[[event]]\nat_s = 16\nleave = 2\n[[event]]\nat_s = 18\njoin = 3\n'
             '[[event]]\nat_s = 20\nchurn = 0.5\nduration_s = 10\n', duration=35.0)
    rep, sim = run(t, 9)
    assert rep["agents_started"] >= 20 + 3 + 3
    assert rep["messages"]["balanced"] == 1
    assert rep["metrics"]["event_counts"].get("left", 0) > 0


def test_network_partition_loss_bandwidth_asymmetry():
    fast = LinkSpec(latency_s=0.001)
    slow = LinkSpec(latency_s=0.1, bandwidth_bps=8000.0)  # 1 kB/s
    net = Network([[fast, fast], [slow, fast]], random.Random(1))
    a = net.add_agent(0)
    b = net.add_agent(1)
    assert net.route(a, b, 100, False, 0.0) == (0.001, "")
    t1, _ = net.route(b, a, 1000, False, 0.0)
    t2, _ = net.route(b, a, 1000, False, 0.0)
    assert abs(t1 - 1.1) < 1e-9 and abs(t2 - 2.1) < 1e-9  # FIFO serialization queue
    net.partition({b: 1})
    assert net.route(a, b, 10, False, 0.0)[1] == DROP_PARTITION
    net.heal()
    lossy = Network([[LinkSpec(latency_s=0.01, loss=0.5)]], random.Random(2))
    x, y = lossy.add_agent(0), lossy.add_agent(0)
    drops = sum(lossy.route(x, y, 10, False, 0.0)[1] == DROP_LOSS for _ in range(2000))
    assert 850 < drops < 1150
    # reliable messages are never lost, only delayed by retransmissions
    outs = [lossy.route(x, y, 10, True, 0.0) for _ in range(200)]
    assert all(r == "" for _, r in outs) and max(t for t, _ in outs) > 0.2
