"""Engine, network and metrics tests, driven by a tiny fake protocol (fake_protocol.py)."""

from __future__ import annotations

import dataclasses
import random

from fake_protocol import FakeAdapter
from keepmesh.simulations.network import DROP_LOSS, DROP_PARTITION, LinkSpec, Network
from keepmesh.simulations.runner import simulate
from keepmesh.simulations.topology import parse_topology


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



def test_network_draws_each_senders_fate_from_its_own_stream():
    """What one sender's messages meet does not depend on what others sent in between
    (a parallel run interleaves senders differently), and the lookahead is the
    smallest latency: no message is faster."""
    link = LinkSpec(latency_s=0.002, jitter_s=0.001, loss=0.3)

    def fates(order: list[int]) -> dict[int, list[tuple[float, str]]]:
        net = Network([[link]], random.Random(7))
        for _ in range(3):
            net.add_agent(0)
        out: dict[int, list[tuple[float, str]]] = {0: [], 1: [], 2: []}
        for src in order:
            out[src].append(net.route(src, (src + 1) % 3, 50, False, 1.0))
        return out

    a = fates([0, 1, 2] * 40)
    b = fates([2] * 40 + [1] * 40 + [0] * 40)
    assert a == b
    assert len({tuple(v) for v in a.values()}) == 3  # the streams differ
    assert min(t for v in a.values() for t, r in v if not r) >= 1.0 + 0.002
    assert Network([[link, LinkSpec(latency_s=0.0005)]], random.Random(1)).min_latency() == 0.0005


# ------------------------------------------------ events that do work, wire economy


def test_with_gossip_bytes_equal_encoding_the_full_message():
    """Encode once per send: splicing the gossip array is byte-identical to re-encoding."""
    import dataclasses

    import pytest
    from keepmesh.protocol.membership.messages import Ack, Gossip, Nack, Ping, PingReq, with_gossip
    from keepmesh.protocol.wire import encode_payload

    a, b = b"a" * 32, b"b" * 32
    items = (b"x" * 10, b"y" * 300, b"", b"z" * 255)
    for msg in (Ping(seq=7, sender=a, target=b, gossip=()), Ack(seq=2**32 - 1, sender=a, gossip=()),
                Nack(seq=0, sender=a, gossip=()), Gossip(sender=a, gossip=()),
                PingReq(seq=9, sender=a, target=b, target_addr="10.0.0.1:7946", nack=True,
                        gossip=())):
        enc = encode_payload(msg)
        for n in range(len(items) + 1):
            full = encode_payload(dataclasses.replace(msg, gossip=items[:n]))
            assert with_gossip(enc, list(items[:n])) == full
    with pytest.raises(ValueError):  # a message that already carries gossip is refused
        with_gossip(encode_payload(Gossip(sender=a, gossip=(b"q",))), [b"r"])


def test_gossip_item_decode_is_memoized_and_bad_items_still_fail():
    import pytest
    from keepmesh.protocol.errors import ProtocolError
    from keepmesh.protocol.membership.messages import Alive, decode_gossip_item
    from keepmesh.protocol.wire import encode_payload

    item = encode_payload(Alive(record=b"r" * 300))
    first = decode_gossip_item(item, 2048)
    assert decode_gossip_item(bytes(item), 2048) is first  # equal bytes: one decode
    assert first == Alive(record=b"r" * 300)
    for bad in (b"\x93\x01\xa9swim.ping\x80", b"\xc1", item + b"\x00" * 3000):
        with pytest.raises(ProtocolError):
            decode_gossip_item(bad, 2048)


def _real_topology(extra: str = "", agents: int = 60, duration: float = 30.0,
                   bootstrap: str = "join"):
    import tomllib
    return parse_topology(tomllib.loads(f"""
[mesh]
agents = {agents}
duration_s = {duration}
profile = "lan"
bootstrap = "{bootstrap}"
[network]
latency_ms = 2
jitter_ms = 1
loss = 0.02
{extra}
"""), "real.toml")


def test_lazy_gossip_timer_keeps_the_trace_and_saves_events(monkeypatch):
    """The real protocol with an eager gossip timer (every tick reported, the old
    behaviour) and the lazy one: same trace hash, fewer events."""
    from keepmesh.protocol.membership import Membership

    t = _real_topology('[[event]]\nat_s = 12\ncrash = 2\n[[event]]\nat_s = 18\nupdate = 2\n'
                       '[[event]]\nat_s = 20\nleave = 1\n')
    lazy, _ = simulate(t, 11)
    lazy_get_timer = Membership.get_timer

    def eager(self):  # type: ignore[no-untyped-def]
        got = lazy_get_timer(self)
        return self._next_gossip if got is None else min(got, self._next_gossip)

    monkeypatch.setattr(Membership, "get_timer", eager)
    eager_rep, _ = simulate(t, 11)
    assert lazy["trace_hash"] == eager_rep["trace_hash"]
    assert lazy["messages"] == eager_rep["messages"]
    assert lazy["events"] < eager_rep["events"]


def test_idle_member_reports_no_gossip_deadline_until_something_is_queued():
    from keepmesh.protocol.membership import (
        Capacity,
        Claims,
        Ed25519Signer,
        Ed25519Verifier,
        Membership,
        MembershipConfig,
        make_record,
    )

    cfg = MembershipConfig.profile("lan")
    signer = Ed25519Signer(b"\x05" * 32)
    record = make_record(signer, "10.0.0.5:7946", 0, Claims(tee="sim", measurement="00" * 32,
                                                             tcb="t"),
                         Capacity(memory_mb=1, cpu_milli=1, free_memory_mb=1, free_cpu_milli=1),
                         {})
    m = Membership(cfg, record, signer, Ed25519Verifier(), random.Random(4), 0.0,
                   require_attestation=False)
    phase = m._next_gossip
    assert m.pending_broadcasts() == 0
    t0 = m.get_timer()
    assert t0 is None or t0 != phase  # nothing queued: no gossip deadline reported
    m.handle_timer(7.3)  # idle for many gossip intervals
    assert m.pending_broadcasts() == 0
    m.update_local(7.3, labels={"k": "v"})  # queues our new record
    assert m.pending_broadcasts() == 1
    t = m.get_timer()
    k = phase  # the phase it would have had had every idle tick fired
    while k < 7.3:
        k += cfg.gossip_interval
    assert t is not None and t <= k and m._next_gossip == k


def test_warm_start_leaves_every_engine_timer_on_the_protocols_next_deadline():
    """learn() during the warm start moves each agent's push-pull deadline; the engine
    must re-arm, or that push-pull fires whenever another timer happens to wake it."""
    from keepmesh.simulations.runner import Simulation

    sim = Simulation(_real_topology(agents=60, duration=10.0, bootstrap="warm"), 1)
    sim.setup()
    sim.engine.run(0.0)  # t = 0: the warm start
    stale = [n.idx for n in sim.engine.nodes
             if n.timer_at is None or abs(n.timer_at - max(n.proto.get_timer(), 1e-6)) > 1e-9]
    assert stale == []


# ------------------------------------------------------------------ object mode

_MODE_EVENTS = ('[[event]]\nat_s = 10\ncrash = 2\n[[event]]\nat_s = 14\nupdate = 2\n'
                '[[event]]\nat_s = 16\nleave = 1\n[[event]]\nat_s = 18\npause = 1\n'
                'pause_s = 3\n[[event]]\nat_s = 24\nrestart = true\n')


def test_object_mode_and_byte_mode_give_the_same_trace():
    """The honest shortcut: handing decoded messages over changes nothing observable.
    Join bootstrap (push-pull with full state), periodic sync (local profile: 15 s),
    crash, update, leave, pause and restart; same hash, counts and metrics."""
    doc = dataclasses.replace(_real_topology(_MODE_EVENTS, agents=50, duration=40.0),
                              profile="local")
    obj, _ = simulate(doc, 21, mode="object")
    byt, _ = simulate(doc, 21, mode="bytes")
    assert obj["mode"] == "object" and byt["mode"] == "bytes"
    assert obj["trace_hash"] == byt["trace_hash"]
    assert obj["messages"] == byt["messages"] and obj["bytes_sent"] == byt["bytes_sent"]
    assert obj["metrics"] == byt["metrics"] and obj["events"] == byt["events"]
    assert byt["handed_over"] == 0
    # nearly every delivery was handed over (a few are placement-free, all are swim.*)
    assert obj["handed_over"] > 0.95 * obj["messages"]["delivered"]
    assert obj["protocol_errors"] == byt["protocol_errors"] == 0


def test_every_handed_over_object_equals_decoding_its_bytes(monkeypatch):
    """What object mode hands the receiver is exactly what it would have decoded,
    for every message type the run sends (ping, ack, ping_req, nack, gossip, sync,
    push_pull); sizes are those of the bytes."""
    from keepmesh.protocol.membership.messages import PRIMARY, PushPull, Sync, decode_swim
    from keepmesh.protocol.node import MeshNode

    seen: dict[str, int] = {}
    real = MeshNode.receive

    def checked(self, data, src, src_id, now, decoded=None):
        if decoded is not None:
            assert decode_swim(data, 1 << 24, (*PRIMARY, PushPull, Sync)) == decoded
            seen[decoded.TYPE] = seen.get(decoded.TYPE, 0) + 1
        return real(self, data, src, src_id, now, decoded)

    # the sim driver hands the engine MeshNode.receive itself: patched before it is bound
    monkeypatch.setattr(MeshNode, "receive", checked)
    t = dataclasses.replace(_real_topology(_MODE_EVENTS, agents=40, duration=35.0),
                            profile="local")
    rep, _ = simulate(t, 5, mode="object")
    assert rep["handed_over"] == sum(seen.values())
    for kind in ("swim.ping", "swim.ack", "swim.ping_req", "swim.gossip", "swim.sync",
                 "swim.push_pull"):
        assert seen.get(kind, 0) > 0, (kind, seen)


def test_a_wrong_handed_over_object_would_change_the_trace(monkeypatch):
    """The byte-mode comparison can fail: a handover that differs from the bytes (here
    every ack loses its gossip) gives another trace hash."""
    from keepmesh.protocol.node import MeshNode

    real = MeshNode.receive

    def lossy(self, data, src, src_id, now, decoded=None):
        if decoded is not None and decoded.TYPE == "swim.ack" and decoded.gossip:
            decoded = dataclasses.replace(decoded, gossip=())
        return real(self, data, src, src_id, now, decoded)

    t = dataclasses.replace(_real_topology(_MODE_EVENTS, agents=40, duration=25.0),
                            profile="local")
    byt, _ = simulate(t, 5, mode="bytes")
    monkeypatch.setattr(MeshNode, "receive", lossy)
    bad, _ = simulate(t, 5, mode="object")
    assert bad["trace_hash"] != byt["trace_hash"]


def test_timer_bookkeeping_is_reported_not_counted_as_events():
    """stale_timers (superseded entries) and idle_timers (firings with no visible effect)
    are in the report; stale pops are not events."""
    t = _real_topology('[[event]]\nat_s = 12\ncrash = 2\n', agents=40, duration=20.0)
    rep, sim = simulate(t, 3)
    assert rep["stale_timers"] == sim.engine.stale_timers > 0
    assert 0 <= rep["idle_timers"] == sim.engine.idle_timers
    assert rep["events"] == sim.engine.steps


def test_unknown_mode_is_refused():
    import pytest
    from keepmesh.simulations.runner import Simulation

    with pytest.raises(ValueError):
        Simulation(_real_topology(), 1, mode="objects")
