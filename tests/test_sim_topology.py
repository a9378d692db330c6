"""Topology TOML loading: the reference keys work; malformed files fail in one line."""

from __future__ import annotations

import glob
import os

import pytest
from keepmesh.simulations.topology import TopologyError, load_topology

HERE = os.path.dirname(__file__)
TOPOS = os.path.join(HERE, "..", "simulations", "topologies")

BASE = """
[mesh]
agents = 200
duration_s = 120
profile = "lan"
[network]
latency_ms = 5
loss = 0.01
"""


def write(tmp_path, text: str) -> str:
    p = tmp_path / "t.toml"
    p.write_text(text)
    return str(p)


def test_reference_keys(tmp_path):
    t = load_topology(write(tmp_path, BASE + """
[[event]]
at_s = 30
crash = 5
[[event]]
at_s = 60
partition = 0.5
[[event]]
at_s = 90
heal = true
"""))
    assert t.agents == 200 and t.duration_s == 120.0 and t.profile == "lan"
    assert t.default_link.latency_s == 0.005 and t.default_link.loss == 0.01
    assert [(e.at_s, e.action, e.value) for e in t.events] == [
        (30.0, "crash", 5), (60.0, "partition", 0.5), (90.0, "heal", True)]


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(TOPOS, "*.toml"))))
def test_shipped_topologies_load(path):
    t = load_topology(path)
    assert t.agents >= 1 and t.events


@pytest.mark.parametrize("text,key,reason", [
    (BASE.replace("agents = 200", "agents = 0"), "mesh.agents", "out of range"),
    (BASE.replace("loss = 0.01", "loss = 2"), "network.loss", "out of range"),
    (BASE.replace("loss = 0.01", "loss = 1"), "network.loss", "drop everything"),
    (BASE.replace("agents = 200", 'agents = "many"'), "mesh.agents", "expected integer"),
    (BASE.replace("profile = \"lan\"", "profile = \"moon\""), "mesh.profile", "not one of"),
    (BASE + "[[event]]\nat_s = 500\ncrash = 1\n", "event[0].at_s", "beyond"),
    (BASE + "[[event]]\nat_s = 5\ncrahs = 1\n", "event[0].crahs", "unknown key"),
    (BASE + "[[event]]\nat_s = 5\ncrash = 500\n", "event[0].crash", "out of range"),
    (BASE + "[[event]]\nat_s = 5\n", "event[0]", "exactly one action"),
    (BASE + "[[event]]\nat_s = 5\ncrash = 1\nheal = true\n", "event[0]", "exactly one action"),
    (BASE + "[[event]]\nat_s = 5\npause = 1\n", "event[0].pause_s", "missing"),
    (BASE + "[[event]]\nat_s = 5\ncrash = 1\npause_s = 3\n", "event[0].pause_s", "not valid"),
    (BASE + "[[event]]\nat_s = 5\npartition = 1.5\n", "event[0].partition", "out of range"),
    (BASE + "[[event]]\nat_s = 5\nheal = false\n", "event[0].heal", "expected true"),
    (BASE + "[[event]]\nat_s = 5\ncrash = 1\ngroup = \"x\"\n", "event[0].group", "no group"),
    (BASE + "[bogus]\nx = 1\n", ".bogus", "unknown key"),
    (BASE.replace("duration_s = 120", "duration_s = -1"), "mesh.duration_s", "out of range"),
    (BASE + "[[group]]\nname = \"a\"\nagents = 5\n", "mesh.agents", "sum of group"),
    (BASE + "[graph]\nkind = \"blob\"\nsites = 3\n", "graph.kind", "not one of"),
    ("[network]\nlatency_ms = 1\n", "[mesh]", "missing"),
    (BASE + "[[event]]\nat_s = 5\ncrash = true\n", "event[0].crash", "expected integer"),
    # bounds a hostile file used to pass: a sample every nanosecond grew memory ~70 MB/s,
    # joins took a 200-agent mesh past the million-agent bound
    (BASE.replace("profile", "sample_interval_s = 1e-9\nprofile"), "mesh.sample_interval_s",
     "out of range"),
    (BASE + "[[event]]\nat_s = 5\njoin = 999900\n", "event", "exceed 1,000,000"),
])
def test_malformed_one_line_error(tmp_path, text, key, reason):
    path = write(tmp_path, text)
    with pytest.raises(TopologyError) as ei:
        load_topology(path)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(path + ": ")
    assert key in msg and reason in msg, msg


def test_syntax_error_and_missing_file(tmp_path):
    path = write(tmp_path, "[mesh\nagents=")
    with pytest.raises(TopologyError, match="TOML syntax"):
        load_topology(path)
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology(str(tmp_path / "nope.toml"))


def test_groups_links_asymmetric(tmp_path):
    t = load_topology(write(tmp_path, """
[mesh]
duration_s = 10
[[group]]
name = "a"
agents = 3
latency_ms = 1
[[group]]
name = "b"
agents = 2
labels = { zone = "z2" }
[[link]]
from = "a"
to = "b"
latency_ms = 50
symmetric = false
[[link]]
from = "b"
to = "a"
latency_ms = 70
"""))
    assert t.agents == 5
    assert t.links[("a", "b")].latency_s == 0.05 and t.links[("b", "a")].latency_s == 0.07
    assert t.groups[0].labels == {"zone": "a"} and t.groups[1].labels == {"zone": "z2"}


def test_mutated_files_never_crash_the_loader(tmp_path):
    """Random value/type mutations of a full topology load or fail with TopologyError only."""
    import random

    src = open(os.path.join(TOPOS, "edge_cloud.toml")).read().splitlines()
    values = ['"x"', "-1", "0", "1e400", "true", "[]", "[1, 2]", "{}", '{ a = 1 }', "2",
              "0.5", '""', "99999999999", "nan", "inf", '["far", "nope"]']
    rng = random.Random(7)
    assignments = [i for i, line in enumerate(src) if " = " in line and not line.startswith("#")]
    for _ in range(300):
        lines = list(src)
        for i in rng.sample(assignments, rng.randint(1, 3)):
            key = lines[i].split(" = ")[0]
            lines[i] = f"{key} = {rng.choice(values)}"
        path = write(tmp_path, "\n".join(lines) + "\n")
        try:
            load_topology(path)
        except TopologyError as err:
            assert "\n" not in str(err) and str(err).startswith(path)


def _labels_topology(labels: str) -> str:
    return f"""
[mesh]
duration_s = 3
bootstrap = "warm"
update_at_s = 1
[[group]]
name = "a"
agents = 6
labels = {{ {labels} }}
"""


@pytest.mark.parametrize("labels", [
    ", ".join(f'k{i} = "v"' for i in range(16)),                    # + zone = 17
    ", ".join(f'k{i} = "v"' for i in range(15)),                    # + zone + rev = 17
    'zone = "z", ' + ", ".join(f'k{i} = "v"' for i in range(15)),   # + rev = 17
])
def test_labels_leave_room_for_zone_and_rev(tmp_path, labels):
    """Found by a topology generator: 16 labels passed validation, then the zone the
    simulator adds (or the `rev` every update adds) made the record carry 17 and the run
    died in the middle with ProtocolError."""
    with pytest.raises(TopologyError, match=r"group\[0\]\.labels: 1[78] labels with zone and rev"):
        load_topology(write(tmp_path, _labels_topology(labels)))


def test_most_labels_a_record_carries_run(tmp_path):
    from keepmesh.simulations.runner import simulate

    labels = ", ".join(f'k{i} = "v"' for i in range(14))  # + zone + rev = 16
    report, _ = simulate(load_topology(write(tmp_path, _labels_topology(labels))), 1)
    assert report["protocol_errors"] == 0 and report["metrics"]["updates_tracked"] == 1


@pytest.mark.parametrize("text,key", [
    # a float key given an integer beyond any float: float() raised OverflowError
    (BASE.replace("latency_ms = 5", "latency_ms = 1" + "0" * 400), "network.latency_ms"),
    (BASE.replace("duration_s = 120", "duration_s = 1" + "0" * 400), "mesh.duration_s"),
    (BASE + "[[event]]\nat_s = 1" + "0" * 400 + "\ncrash = 1\n", "event[0].at_s"),
    (BASE.replace("agents = 200", "agents = 1" + "0" * 400), "mesh.agents"),
    # an integer literal over Python's 4,300-digit limit: tomllib raised ValueError
    (BASE.replace("agents = 200", "agents = " + "9" * 5000), "TOML syntax"),
])
def test_huge_integers_are_one_line_topology_errors(tmp_path, text, key):
    """Found by invalid-topology runs: these were "internal error OverflowError/ValueError"."""
    path = write(tmp_path, text)
    with pytest.raises(TopologyError) as ei:
        load_topology(path)
    msg = str(ei.value)
    assert key in msg and "\n" not in msg and len(msg) < len(path) + 120, msg


@pytest.mark.parametrize("text,key", [
    (BASE.replace("loss = 0.01", "bandwidth_mbps = 5e-324"), "network.bandwidth_mbps"),
    (BASE + "[graph]\nkind = \"star\"\nsites = 3\nhop_bandwidth_mbps = 1e-300\n",
     "graph.hop_bandwidth_mbps"),
])
def test_bandwidth_below_one_bit_per_second_is_refused(tmp_path, text, key):
    """Found by the topology generator: bandwidth_mbps = 5e-324 was valid ((0, 1e6]) and the
    run died with OverflowError (an infinite delivery time in the event queue)."""
    with pytest.raises(TopologyError, match=r"bandwidth_mbps: .* out of range \[1e-06"):
        load_topology(write(tmp_path, text))


def test_one_bit_per_second_runs(tmp_path):
    from keepmesh.simulations.runner import simulate

    text = BASE.replace("agents = 200", "agents = 6").replace("duration_s = 120",
                                                             "duration_s = 3")
    report, _ = simulate(load_topology(write(tmp_path, text.replace(
        "loss = 0.01", "bandwidth_mbps = 1e-6"))), 1)
    assert report["messages"]["balanced"] and report["messages"]["in_flight"] > 0


def test_labels_too_long_for_a_record_are_refused(tmp_path):
    """Found by the topology generator: 15 labels of 64/128 characters were valid, and
    the run died building the first record (ProtocolError: node record of 3107 bytes
    exceeds 1024)."""
    from keepmesh.simulations.runner import simulate

    def labels(n: int) -> str:
        return ", ".join(f'k{i} = "{"v" * 128}"' for i in range(n))

    with pytest.raises(TopologyError, match=r"group\[0\]\.labels: too long for a member "
                                            r"record: node record of \d+ bytes exceeds 1024"):
        load_topology(write(tmp_path, _labels_topology(labels(6))))
    # five such labels still fit (1,023 bytes with the largest address, incarnation, rev)
    report, _ = simulate(load_topology(write(tmp_path, _labels_topology(labels(5)))), 1)
    assert report["protocol_errors"] == 0 and report["metrics"]["updates_tracked"] == 1
