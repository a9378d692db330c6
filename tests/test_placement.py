"""Placement, sans-IO: MeshNodes with PlacementMachines on an in-memory network with
explicit time. Decisions (labels, room, spread), refusals, lease expiry,
all-or-nothing, no double booking under concurrency, and location gossip."""

from __future__ import annotations

import heapq
import random

import pytest
from keepmesh.protocol.effects import (
    AttestationVerdict,
    Commit,
    Deploy,
    KeepLocated,
    Output,
    PlacementDone,
    PlacementFailed,
    Release,
    Send,
    StartKeep,
)
from keepmesh.protocol.errors import ProtocolError
from keepmesh.protocol.membership import Capacity, Claims, MembershipConfig, make_record
from keepmesh.protocol.membership.signing import CachingVerifier
from keepmesh.protocol.node import MeshNode
from keepmesh.protocol.placement import (
    LeaseTable,
    PlacementConfig,
    PlacementMachine,
    PlacementSpec,
    Refused,
    Requirements,
    parse_placement_table,
)
from keepmesh.simulations.keyring import SimulationKeyring
from keepmesh.simulations.testnet import sim_node_id

LAN = MembershipConfig.profile("lan")
KEYRING = SimulationKeyring(b"placement-test")
VERIFIER = CachingVerifier(KEYRING.verifier())
LATENCY = 0.002


class Mesh:
    """Warm mesh of n nodes; Sends delivered after LATENCY with the sender's identity."""

    def __init__(self, hosts: list[dict[str, object]], *, commit_by_entry: bool = True,
                 seed: int = 1, tee: list[str] | None = None) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self.nodes: dict[str, MeshNode] = {}
        self.places: dict[str, PlacementMachine] = {}
        self.outputs: dict[str, list[Output]] = {}
        self.down: set[str] = set()
        self.heap: list[tuple[float, int, str, bytes, str]] = []
        self.n = 0
        cfg = PlacementConfig(commit_by_entry=commit_by_entry, lease_ttl=5.0)
        for i, h in enumerate(hosts):
            addr = f"10.0.0.{i + 1}:7946"
            signer = KEYRING.signer(sim_node_id(i + 1))
            claims = Claims((tee or [])[i] if tee else "sim", "ab", "1")
            labels = h.get("labels", {})
            assert isinstance(labels, dict)
            mem = int(str(h.get("memory", 1024)))
            record = make_record(signer, addr, 1, claims, Capacity(mem, 1000, mem, 1000), labels)
            node = MeshNode(LAN, record, signer, VERIFIER, random.Random(seed * 100 + i), 0.0)
            self.places[addr] = node.add(PlacementMachine(   # type: ignore[assignment]
                node, random.Random(seed * 1000 + i), memory_mb=mem,
                max_keeps=int(str(h.get("keeps", 8))), config=cfg))
            self.nodes[addr] = node
            self.outputs[addr] = []
        records = [n.record for n in self.nodes.values()]
        for node in self.nodes.values():
            node.learn(records, 0.0, trusted=True)
        self.pump()

    def join_late(self) -> str:
        """One more node, attested by every member now (as a join would); it knows them
        but attests them only when `trust_members(addr)` is called."""
        i = len(self.nodes)
        addr = f"10.0.0.{i + 1}:7946"
        signer = KEYRING.signer(sim_node_id(i + 1))
        record = make_record(signer, addr, 1, Claims("sim", "ab", "1"),
                             Capacity(1024, 1000, 1024, 1000), {})
        node = MeshNode(LAN, record, signer, VERIFIER, random.Random(100 + i), self.now)
        self.places[addr] = node.add(PlacementMachine(  # type: ignore[assignment]
            node, random.Random(1000 + i), memory_mb=1024, max_keeps=8,
            config=PlacementConfig(lease_ttl=5.0)))
        node.learn([n.record for n in self.nodes.values()], self.now)  # attested below
        for other in self.nodes.values():  # heard of, then attested: a `join` event
            other.learn([record], self.now)
            other.complete(AttestationVerdict(record.node_id, True, 30.0, ""), self.now)
        self.nodes[addr] = node
        self.outputs[addr] = []
        self.pump()
        return addr

    def trust_members(self, addr: str) -> None:
        node = self.nodes[addr]
        for other in self.nodes.values():
            if other is not node:
                node.complete(AttestationVerdict(other.node_id, True, 30.0, ""), self.now)
        self.pump()

    @property
    def addrs(self) -> list[str]:
        return list(self.nodes)

    def pump(self) -> None:
        for addr, node in self.nodes.items():
            if addr in self.down:
                continue
            while (item := node.next_effect()) is not None:
                if isinstance(item, Send):
                    if item.data[3:9] == b"place.":  # membership traffic is not needed here
                        self.n += 1
                        heapq.heappush(self.heap, (self.now + LATENCY, self.n, item.dst,
                                                   item.data, addr))
                else:
                    self.outputs[addr].append(item)

    def run_until(self, t: float) -> None:
        while True:
            self.pump()
            timers = [(n.get_timer(), a) for a, n in self.nodes.items()
                      if a not in self.down and self.places[a].get_timer() is not None]
            next_timer = min((self.places[a].get_timer() or t, a) for _, a in timers) \
                if timers else (t + 1, "")
            next_msg = self.heap[0][0] if self.heap else t + 1
            if min(next_timer[0], next_msg) > t:
                break
            if next_msg <= next_timer[0]:
                at, _, dst, data, src = heapq.heappop(self.heap)
                self.now = max(self.now, at)
                if dst in self.down or dst not in self.nodes:
                    continue
                self.nodes[dst].receive(data, src, self.nodes[src].node_id, self.now)
            else:
                self.now = max(self.now, next_timer[0])
                self.places[next_timer[1]].handle_timer(self.now)
            for p in self.places.values():
                p.leases.check()  # invariant: no host ever promises more than it has
        self.now = t
        self.pump()

    def deploy(self, entry: str, request: int, req: Requirements, keep: str = "") -> None:
        self.nodes[entry].command(Deploy(request, keep or f"keep{request}", b"", req), self.now)
        self.pump()

    def result(self, entry: str, request: int) -> PlacementDone | PlacementFailed | None:
        for item in self.outputs[entry]:
            if isinstance(item, PlacementDone | PlacementFailed) and item.request == request:
                return item
        return None

    def running(self) -> dict[str, list[str]]:
        return {a: [i.keep_id for i in out if isinstance(i, StartKeep)]
                for a, out in self.outputs.items()}


def req(memory: int = 64, replicas: int = 1, labels: dict[str, str] | None = None,
        spread: str | None = None, tee: tuple[str, ...] | None = None) -> Requirements:
    return Requirements(memory, PlacementSpec(replicas=replicas, labels=labels or {},
                                              spread=spread), tee_kinds=tee)


def test_lands_on_the_only_host_with_the_label() -> None:
    mesh = Mesh([{}, {}, {"labels": {"zone": "factory-3"}}, {}])
    mesh.deploy(mesh.addrs[0], 1, req(labels={"zone": "factory-3"}))
    mesh.run_until(2.0)
    done = mesh.result(mesh.addrs[0], 1)
    assert isinstance(done, PlacementDone), done
    assert [p.host for p in done.placements] == [mesh.addrs[2]]
    assert mesh.running()[mesh.addrs[2]] == ["keep1"]


def test_no_host_fits_fails_at_once_with_one_line_naming_it() -> None:
    mesh = Mesh([{}, {}])
    mesh.deploy(mesh.addrs[0], 1, req(memory=4, labels={"zone": "factory-3"}))
    failed = mesh.result(mesh.addrs[0], 1)
    assert isinstance(failed, PlacementFailed)
    assert "zone=factory-3" in failed.reason and "4 MiB" in failed.reason
    assert "\n" not in failed.reason


def test_policy_claims_filter_hosts() -> None:
    mesh = Mesh([{"memory": 100}, {"memory": 4000}, {"memory": 200}],
                tee=["snp", "sim", "snp"])
    mesh.deploy(mesh.addrs[0], 1, req(tee=("snp",)))
    mesh.run_until(2.0)
    done = mesh.result(mesh.addrs[0], 1)
    assert isinstance(done, PlacementDone)
    # the roomiest host claims "sim", which the policy does not accept: never asked
    assert done.placements[0].host != mesh.addrs[1]
    assert mesh.places[mesh.addrs[1]].stats.get("reserve.granted", 0) == 0


def test_replicas_on_distinct_hosts_and_zones() -> None:
    hosts: list[dict[str, object]] = [{"labels": {"zone": z}} for z in "aabbcc"]
    mesh = Mesh(hosts)
    mesh.deploy(mesh.addrs[0], 1, req(replicas=3, spread="zone"))
    mesh.run_until(3.0)
    done = mesh.result(mesh.addrs[0], 1)
    assert isinstance(done, PlacementDone)
    hosts_used = [p.host for p in done.placements]
    assert len(set(hosts_used)) == 3
    zones = {mesh.nodes[h].record.labels["zone"] for h in hosts_used}
    assert zones == {"a", "b", "c"}


def test_spread_impossible_is_refused_up_front() -> None:
    mesh = Mesh([{"labels": {"zone": "a"}}, {"labels": {"zone": "a"}}])
    mesh.deploy(mesh.addrs[0], 1, req(replicas=2, spread="zone"))
    failed = mesh.result(mesh.addrs[0], 1)
    assert isinstance(failed, PlacementFailed) and "distinct values of label zone" in failed.reason


def test_all_or_nothing_releases_every_lease() -> None:
    # advertised room (record) says 1024 MiB each, but two hosts' tables are full
    mesh = Mesh([{}, {}, {}])
    for a in mesh.addrs[1:]:
        mesh.places[a].leases.memory_mb = 10
    mesh.deploy(mesh.addrs[0], 1, req(memory=64, replicas=3))
    mesh.run_until(10.0)
    failed = mesh.result(mesh.addrs[0], 1)
    assert isinstance(failed, PlacementFailed), failed
    assert "replicas" in failed.reason or "reservation" in failed.reason
    # the hosts' own answer is quoted (specs/placement.md: the last refusal is appended)
    assert "last refusal: a host had 10 MiB" in failed.reason and "64 MiB asked" in failed.reason
    for p in mesh.places.values():
        assert not p.leases.leases, "a failed multi-replica placement left a lease behind"
    assert not any(mesh.running().values())


def test_host_refuses_what_it_cannot_honour_and_entry_moves_on() -> None:
    mesh = Mesh([{}, {}, {}, {}])
    full = mesh.addrs[1]
    mesh.places[full].leases.max_keeps = 0       # lies in its record: lease table decides
    for i in range(6):
        mesh.deploy(mesh.addrs[0], i, req(memory=32))
    mesh.run_until(5.0)
    results = [mesh.result(mesh.addrs[0], i) for i in range(6)]
    assert all(isinstance(r, PlacementDone) for r in results), results
    assert mesh.running()[full] == []


def test_lease_expires_when_entry_dies_mid_negotiation() -> None:
    mesh = Mesh([{}, {"memory": 64, "keeps": 1}], commit_by_entry=False)
    entry, host = mesh.addrs
    mesh.deploy(entry, 1, req(memory=64, labels={}), keep="k1")
    mesh.run_until(0.5)
    done = mesh.result(entry, 1)
    assert isinstance(done, PlacementDone)
    # the entry/owner never commits (crashed): the reservation holds the host...
    assert mesh.places[host].leases.free_slots() == 0 or done.placements[0].host != host
    mesh.down.add(entry)
    mesh.run_until(6.0)   # lease_ttl = 5 s
    assert mesh.places[host].leases.leases == {}
    # ... and a commit after expiry is refused
    with pytest.raises(ProtocolError):
        mesh.nodes[host].command(Commit(done.placements[0].lease, "k1", 1), mesh.now)


def test_commit_by_owner_then_release() -> None:
    mesh = Mesh([{}, {}], commit_by_entry=False)
    entry = mesh.addrs[0]
    mesh.deploy(entry, 7, req(memory=100), keep="k7")
    mesh.run_until(0.5)
    done = mesh.result(entry, 7)
    assert isinstance(done, PlacementDone)
    p = done.placements[0]
    # the entry routes the owner's next command at once, without gossiping a claim
    assert [loc.host_id for loc in mesh.places[entry].known() if loc.keep == "k7"] == \
        [p.host_id]
    assert not mesh.places[entry].where("k7")
    mesh.nodes[p.host].command(Commit(p.lease, "k7", 1, b"o" * 32), mesh.now)
    table = mesh.places[p.host].leases
    assert table.leases[p.lease].committed
    mesh.run_until(30.0)                         # committed leases never expire
    assert p.lease in table.leases
    mesh.nodes[p.host].command(Release("k7"), mesh.now)
    assert table.leases == {}


def test_concurrent_entries_never_double_book() -> None:
    # 5 hosts x 2 slots = room for 10; 14 deploys through 3 entries at once
    mesh = Mesh([{"keeps": 2, "memory": 512} for _ in range(5)], seed=4)
    for i in range(14):
        mesh.deploy(mesh.addrs[i % 3], i, req(memory=64))
    mesh.run_until(20.0)
    results = [mesh.result(mesh.addrs[i % 3], i) for i in range(14)]
    done = [r for r in results if isinstance(r, PlacementDone)]
    failed = [r for r in results if isinstance(r, PlacementFailed)]
    assert len(done) == 10 and len(failed) == 4
    assert all(r.reason for r in failed)
    per_host = {a: len(k) for a, k in mesh.running().items()}
    assert max(per_host.values()) <= 2 and sum(per_host.values()) == 10


def test_locations_spread_to_every_member() -> None:
    mesh = Mesh([{} for _ in range(8)])
    mesh.deploy(mesh.addrs[0], 1, req(), keep="seen")
    mesh.run_until(10.0)
    done = mesh.result(mesh.addrs[0], 1)
    assert isinstance(done, PlacementDone)
    host = done.placements[0].host_id
    for p in mesh.places.values():
        locs = p.where("seen")
        assert len(locs) == 1 and locs[0].host_id == host and locs[0].state == "running"
    assert any(isinstance(o, KeepLocated) for o in mesh.outputs[mesh.addrs[5]])
    # A member joining after the gossip died down still learns it: the host tells it,
    # and again a gossip round later, as the newcomer drops what it hears from a host
    # before it has attested it (here: after the host's first telling arrived).
    late = mesh.join_late()
    mesh.run_until(10.1)
    assert not mesh.places[late].where("seen")
    assert mesh.places[late].stats.get("where.unknown_host", 0) >= 1
    mesh.trust_members(late)
    mesh.run_until(11.0)
    locs = mesh.places[late].where("seen")
    assert len(locs) == 1 and locs[0].host_id == host and locs[0].state == "running"


def test_where_from_a_stranger_about_our_keeps_is_ignored() -> None:
    from keepmesh.protocol.placement.messages import Location, PlaceWhere
    from keepmesh.protocol.wire import encode_payload
    mesh = Mesh([{}, {}])
    a, b = mesh.addrs
    lie = Location(keep="x", host_id=mesh.nodes[a].node_id, host=a, epoch=9, state="running",
                   owner=b"")
    mesh.nodes[a].receive(encode_payload(PlaceWhere(entries=(lie,))), b,
                          mesh.nodes[b].node_id, 0.0)
    assert not mesh.places[a].where("x")
    unknown = Location(keep="y", host_id=b"\x07" * 32, host="1.2.3.4:1", epoch=1,
                       state="running", owner=b"")
    mesh.nodes[a].receive(encode_payload(PlaceWhere(entries=(unknown,))), b,
                          mesh.nodes[b].node_id, 0.0)
    assert not mesh.places[a].where("y")
    mesh.nodes[a].receive(b"\x93\x01\xabplace.probe\x80", b, mesh.nodes[b].node_id, 0.0)
    assert mesh.places[a].stats["malformed"] == 1


def test_sample_size_adapts_to_refusals() -> None:
    mesh = Mesh([{}])
    p = mesh.places[mesh.addrs[0]]
    assert p.sample_size(1) == 2
    for _ in range(20):
        p._note_outcome(refused=True)
    assert p.sample_size(1) >= 7
    assert p.sample_size(3) <= 3 * p.config.max_d


def test_lease_table_bounds() -> None:
    t = LeaseTable(memory_mb=100, max_keeps=2)
    a = t.reserve("a", 60, 0.0, 1.0)
    with pytest.raises(Refused):
        t.reserve("b", 60, 0.0, 1.0)     # memory
    with pytest.raises(Refused):
        t.reserve("a", 10, 0.0, 1.0)     # same keep twice
    t.reserve("b", 40, 0.0, 1.0)
    with pytest.raises(Refused):
        t.reserve("c", 0, 0.0, 1.0)      # slots
    t.commit(a.lease_id, "a", 1, 0.5)
    assert [x.keep_id for x in t.expire(2.0)] == ["b"]
    t.draining = True
    with pytest.raises(Refused, match="draining"):
        t.reserve("d", 1, 2.0, 1.0)


def test_placement_table_validation_names_the_field() -> None:
    assert parse_placement_table({"replicas": 2, "labels": {"zone": "f"}, "spread": "rack"}) \
        == PlacementSpec(replicas=2, labels={"zone": "f"}, spread="rack")
    for bad, field in [({"replicas": 0}, "placement.replicas"),
                       ({"replicas": 99}, "placement.replicas"),
                       ({"replicas": "2"}, "placement.replicas"),
                       ({"labels": {"zone": 3}}, "placement.labels"),
                       ({"spread": 1}, "placement.spread"),
                       ({"labels": {"zone": "a"}, "spread": "zone"}, "placement.spread"),
                       ({"zones": 1}, "placement.zones")]:
        with pytest.raises(ProtocolError, match=field.replace(".", r"\.")):
            parse_placement_table(bad)


def test_placement_is_signed_with_the_deployment_and_read_by_requirements() -> None:
    from keepmesh.protocol.deployment import (
        Deployment,
        make_deployment,
        parse_manifest_toml,
        verify_deployment,
    )
    from keepmesh.protocol.placement import requirements_for
    from keepmesh.protocol.wire import encode_payload as enc
    from nacl.signing import SigningKey
    manifest, _, _ = parse_manifest_toml(
        'name = "w"\n[resources]\nmemory = "3MiB"\n'
        '[placement]\nreplicas = 2\nlabels = { zone = "factory-3" }\nspread = "rack"\n')
    seed = b"\x01" * 32
    policy = 'allowed_tee = ["snp", "sim"]\nallow_sim = true\n' \
             '[snp]\nmeasurements = ["' + "ab" * 48 + '"]\n'
    d = make_deployment(manifest, b"\0asm", policy, seed, 1.0, random.Random(1))
    owner = bytes(SigningKey(seed).verify_key)
    verify_deployment(d, [owner])
    r = requirements_for(d)
    assert r.memory_mb == 3 and r.replicas == 2 and r.placement.spread == "rack"
    assert r.tee_kinds == ("snp", "sim") and r.measurements == ("ab" * 48,)
    # a broker relaxing the constraint breaks the owner's signature
    fields = d.to_fields()
    fields["manifest"]["placement"]["labels"] = {}
    tampered = Deployment.from_fields(fields)
    with pytest.raises(ProtocolError):
        verify_deployment(tampered, [owner])
    assert enc(d)  # still encodes
    with pytest.raises(ProtocolError, match=r"placement\.spread"):
        parse_manifest_toml('name = "w"\n[placement]\nspread = 3\n')


def test_hostile_placement_messages_are_dropped_and_counted() -> None:
    from keepmesh.protocol.placement.messages import (
        Location,
        PlaceBid,
        PlaceReserve,
        PlaceWhere,
    )
    from keepmesh.protocol.wire import encode_payload
    mesh = Mesh([{}, {}, {}])
    a, b, c = mesh.addrs
    place_a = mesh.places[a]
    reserve = encode_payload(PlaceReserve(req=1, keep="k", memory_mb=1, ttl_ms=1000))
    mesh.nodes[a].receive(reserve, b, None, 0.0)            # unauthenticated sender
    assert place_a.stats["malformed"] == 1 and not place_a.leases.leases
    mesh.nodes[a].receive(b"\x93\x01\xabplace.probe" + b"\x00" * 20000, b,
                          mesh.nodes[b].node_id, 0.0)      # oversized / garbage
    assert place_a.stats["malformed"] == 2
    too_many = PlaceWhere.__new__(PlaceWhere)
    loc = Location(keep="x", host_id=mesh.nodes[b].node_id, host=b, epoch=1,
                   state="running", owner=b"")
    object.__setattr__(too_many, "entries", (loc,) * 33)
    mesh.nodes[a].receive(encode_payload(too_many), b, mesh.nodes[b].node_id, 0.0)
    assert place_a.stats["malformed"] == 3 and not place_a.where("x")
    # a reply from someone other than the member asked is ignored
    mesh.deploy(a, 1, req(memory=64))
    probes = [w for r in place_a._requests.values() for w in r.waiting]
    assert probes
    fake = encode_payload(PlaceBid(req=probes[0], free_mb=1 << 20, free_slots=99, ok=True))
    asked = place_a._requests[1].waiting[probes[0]]
    stranger = next(n for n in mesh.nodes.values() if n.node_id != asked
                    and n.node_id != mesh.nodes[a].node_id)
    mesh.nodes[a].receive(fake, stranger.address, stranger.node_id, 0.0)
    assert place_a.stats.get("reply.unexpected", 0) == 1
    mesh.run_until(2.0)
    assert isinstance(mesh.result(a, 1), PlacementDone)


def test_entry_bounds_concurrent_requests() -> None:
    from keepmesh.protocol.placement.machine import MAX_REQUESTS
    mesh = Mesh([{}, {}])
    a = mesh.addrs[0]
    for i in range(MAX_REQUESTS + 3):
        mesh.nodes[a].command(Deploy(i, f"k{i}", b"", req(memory=1)), 0.0)
    mesh.pump()
    busy = [o for o in mesh.outputs[a] if isinstance(o, PlacementFailed) and "busy" in o.reason]
    assert len(busy) == 3


@pytest.mark.parametrize("where", ["label", "spread"])
def test_a_label_name_with_a_trailing_newline_is_refused(where: str) -> None:
    """`$` matches before a final newline: "zone\\n" passed as a label name and was signed."""
    from keepmesh.protocol.errors import ProtocolError
    from keepmesh.protocol.placement.spec import PlacementSpec
    PlacementSpec(replicas=2, labels={"zone": "a"}, spread="rack").validate()
    bad = (PlacementSpec(replicas=1, labels={"zone\n": "a"}, spread=None) if where == "label"
           else PlacementSpec(replicas=2, labels={}, spread="rack\n"))
    with pytest.raises(ProtocolError):
        bad.validate()


def _answer_as_asked(mesh: Mesh, entry: str, request: int, make: object) -> None:
    """Each member the entry waits on answers `make(req)` (on its own channel)."""
    from keepmesh.protocol.wire import encode_payload
    waiting = mesh.places[entry]._requests[request].waiting
    for wire, host in list(waiting.items()):
        src = next(a for a in mesh.addrs if mesh.nodes[a].node_id == host)
        mesh.nodes[entry].receive(encode_payload(make(wire)), src, host,  # type: ignore[operator]
                                  mesh.now)


def test_a_reply_of_the_wrong_kind_from_the_asked_member_is_not_an_answer() -> None:
    """Found by the placement/migration sweep. A bid answering a reservation consumed the
    wait: the request was never answered and its past deadline came back for ever (a
    spinning timer, one of MAX_REQUESTS slots gone). `reserved` answering a probe placed
    replicas on hosts never asked to reserve (2 placements for replicas = 1)."""
    from keepmesh.protocol.placement.messages import PlaceBid, PlaceReserved
    mesh = Mesh([{"memory": 10}, {}, {}, {}], commit_by_entry=False)  # entry: no room
    a = mesh.addrs[0]
    place = mesh.places[a]
    mesh.deploy(a, 1, req(memory=64))
    mesh.heap.clear()
    _answer_as_asked(mesh, a, 1, lambda w: PlaceReserved(req=w, lease=99, ttl_ms=1000))
    assert place._requests[1].phase == "probe" and not place._requests[1].placed
    _answer_as_asked(mesh, a, 1, lambda w: PlaceBid(req=w, free_mb=500, free_slots=3, ok=True))
    request = place._requests[1]
    assert request.phase == "reserve" and request.waiting  # the right answer is taken
    _answer_as_asked(mesh, a, 1, lambda w: PlaceBid(req=w, free_mb=500, free_slots=3, ok=True))
    assert request.waiting and place.stats["reply.unexpected"] >= 3
    deadline = request.deadline
    place.handle_timer(deadline)  # unanswered: a refusal, the next round
    timer = place.get_timer()
    assert timer is not None and timer > deadline
    mesh.run_until(10.0)
    done = mesh.result(a, 1)
    assert isinstance(done, PlacementDone) and len(done.placements) == 1
    assert all(p.lease != 99 for p in done.placements)


@pytest.mark.parametrize("who", ["reserver", "other member", "reserver, agent host"])
def test_only_the_member_that_reserved_a_lease_commits_or_releases_it(who: str) -> None:
    """Lease ids are small counters. Any member could send place.commit for one: on an
    agent host (where the owner commits, not the wire) that made a reservation a hold
    that never expires, for a keep that never starts; place.release gave anyone's
    reservation back. Found by the placement/migration sweep."""
    from keepmesh.protocol.placement.messages import PlaceCommit, PlaceRelease, PlaceReserve
    from keepmesh.protocol.wire import encode_payload
    mesh = Mesh([{}, {}, {}], commit_by_entry=who != "reserver, agent host")
    a, b, c = mesh.addrs
    host, place = mesh.nodes[a], mesh.places[a]
    sender = mesh.nodes[b if who != "other member" else c]

    def send(msg: object, src: MeshNode) -> None:
        host.receive(encode_payload(msg), src.address, src.node_id, mesh.now)  # type: ignore[arg-type]

    for keep in ("k1", "k2"):
        send(PlaceReserve(req=1, keep=keep, memory_mb=64, ttl_ms=5000), mesh.nodes[b])
    l1, l2 = (place.leases.holds(k) for k in ("k1", "k2"))
    assert l1 is not None and l2 is not None
    send(PlaceCommit(req=2, lease=l1.lease_id, keep="k1", epoch=1), sender)
    send(PlaceRelease(lease=l2.lease_id, keep=""), sender)
    assert l1.committed is (who == "reserver")  # the wire commits in the simulator only
    assert (place.leases.holds("k2") is None) is (who != "other member")
    mesh.run_until(6.0)  # what was not committed expires: nothing stranded
    assert list(place.leases.leases.values()) == ([l1] if who == "reserver" else [])


@pytest.mark.parametrize("twice", ["place.reserved", "place.commit"])
def test_a_duplicated_message_neither_undoes_a_placement_nor_starts_a_keep_twice(
        twice: str) -> None:
    """Found by the placement/migration sweep (replayed traffic). A second `reserved`
    from the host, while the entry still waited on another replica, was taken for a late
    reservation and released: PlacementDone named a lease its host no longer held. A
    second `place.commit` committed again and emitted a second StartKeep."""
    mesh = Mesh([{"memory": 10}, {}, {}, {}], commit_by_entry=twice == "place.commit")
    for addr, node in mesh.nodes.items():
        deliver = node.receive

        def dup(data: bytes, src: str, src_id: bytes | None, now: float,
                decoded: object = None, deliver: object = deliver) -> None:
            for _ in range(2 if data[3:3 + len(twice)] == twice.encode() else 1):
                deliver(data, src, src_id, now)  # type: ignore[operator]
        node.receive = dup  # type: ignore[method-assign]
    a = mesh.addrs[0]
    mesh.deploy(a, 1, req(memory=64, replicas=2))
    mesh.run_until(3.0)
    done = mesh.result(a, 1)
    assert isinstance(done, PlacementDone) and len(done.placements) == 2
    for p in done.placements:
        assert p.lease in mesh.places[p.host].leases.leases
    started = [k for keeps in mesh.running().values() for k in keeps]
    assert started == (["keep1", "keep1"] if twice == "place.commit" else [])
    assert len({h for h, keeps in mesh.running().items() if keeps}) == len(started)


def test_a_full_location_table_gives_up_its_oldest_stopped_entry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Found checking the sweep's bounds: nothing ever left the location table, so once
    MAX_LOCATIONS (65,536) keeps had run anywhere over the mesh's life, stopped ones
    included, no member accepted a new location (routing of new keeps broke mesh-wide).
    A full table now drops its oldest stopped entry; with only running ones it refuses."""
    import keepmesh.protocol.placement.machine as machine
    monkeypatch.setattr(machine, "MAX_LOCATIONS", 3)
    mesh = Mesh([{}, {}])
    a = mesh.addrs[0]
    place, host = mesh.places[a], mesh.nodes[a]
    for i in range(3):
        host.command(Commit(0, f"k{i}", 1, b"o" * 32, 1), mesh.now)
    host.command(Release("k1"), mesh.now)   # stopped: k1
    host.command(Release("k0"), mesh.now)   # stopped: k0 (newer)
    host.command(Commit(0, "k3", 1, b"o" * 32, 1), mesh.now)
    keeps = sorted(k for k, _ in place.locations)
    assert keeps == ["k0", "k2", "k3"] and place.stats["locations.evicted"] == 1
    host.command(Commit(0, "k4", 1, b"o" * 32, 1), mesh.now)  # evicts k0
    host.command(Commit(0, "k5", 1, b"o" * 32, 1), mesh.now)  # all running: refused
    assert sorted(k for k, _ in place.locations) == ["k2", "k3", "k4"]
    assert place.stats["locations.full"] == 1
