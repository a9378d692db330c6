"""Topology files (TOML) for the simulator, validated strictly before anything runs.

Why strict: a typo in a topology (``crahs = 5``) would otherwise silently
simulate something else and report numbers for it. Every unknown key, wrong
type or impossible value raises `TopologyError` with ONE line naming the file,
the key and the reason. The format is documented in specs/simulator.md.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keepmesh.protocol.membership.records import MAX_LABELS

from keepmesh.files import read_at_most

from .network import DISTRIBUTIONS, LinkSpec

PROFILES = ("lan", "wan", "local")
GRAPH_KINDS = ("full", "star", "scale_free", "grid", "random_geometric", "tree")
MAX_AGENTS = 1_000_000
MAX_DURATION_S = 86_400.0 * 7
MAX_SITES = 2_000
# 1 bit/s: far below it a message's serialization time overflows the clock to inf
MIN_MBPS = 1e-6
MAX_SAMPLES = 100_000  # membership-view samples per run (sample_interval_s >= duration / this)

# Event action keys and the extra keys each one allows.
ACTIONS: dict[str, tuple[str, ...]] = {
    "crash": ("group",),
    "restart": ("group",),
    "pause": ("pause_s", "group"),
    "leave": ("group",),
    "join": ("group",),
    "loss_burst": ("duration_s",),
    "partition": (),
    "heal": (),
    "tee_expire": ("group",),
    "tcb_drop": ("group",),
    "update": ("group",),
    "churn": ("duration_s", "group"),
}


class TopologyError(Exception):
    """A topology file is malformed; str() is one line: file: key: reason."""


@dataclass(frozen=True)
class GroupSpec:
    name: str
    agents: int
    labels: dict[str, str]
    intra: LinkSpec


@dataclass(frozen=True)
class EventSpec:
    at_s: float
    action: str
    value: Any
    pause_s: float = 0.0
    duration_s: float = 0.0
    group: str | None = None
    index: int = 0


@dataclass
class Topology:
    path: str
    agents: int
    duration_s: float
    profile: str
    seeds: int
    attestation: bool
    update_at_s: float | None
    # "join": staggered joins through seeds (realistic first seconds);
    # "warm": every agent starts at t=0 already knowing every other (steady state).
    bootstrap: str
    sample_interval_s: float
    default_link: LinkSpec
    groups: list[GroupSpec]
    links: dict[tuple[str, str], LinkSpec]
    graph: dict[str, Any] | None
    events: list[EventSpec] = field(default_factory=list)
    # [placement]: a deployment stream (simulations/placement_stream.py); None: membership only
    placement: Any = None
    # [migration]: keeps with standbys (simulations/migration_experiment.py); None: off
    migration: Any = None


class _Checker:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, reason: str) -> TopologyError:
        return TopologyError(f"{self.path}: {key}: {reason}")

    def table(self, doc: dict[str, Any], name: str, allowed: set[str],
              required: bool = False) -> dict[str, Any]:
        val = doc.get(name)
        if val is None:
            if required:
                raise self.fail(f"[{name}]", "missing table")
            return {}
        if not isinstance(val, dict):
            raise self.fail(name, f"expected a table, got {_tname(val)}")
        self.keys(val, name, allowed)
        return val

    def keys(self, tbl: dict[str, Any], where: str, allowed: set[str]) -> None:
        for k in tbl:
            if k not in allowed:
                allowed_s = ", ".join(sorted(allowed))
                raise self.fail(f"{where}.{k}", f"unknown key (allowed: {allowed_s})")

    def int_(self, tbl: dict[str, Any], where: str, key: str, lo: int, hi: int,
             default: int | None = None) -> int:
        if key not in tbl:
            if default is None:
                raise self.fail(f"{where}.{key}", "missing")
            return default
        v = tbl[key]
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(f"{where}.{key}", f"expected integer, got {_tname(v)}")
        if not lo <= v <= hi:
            raise self.fail(f"{where}.{key}", f"{_short(v)} out of range [{lo}, {hi}]")
        return v

    def num(self, tbl: dict[str, Any], where: str, key: str, lo: float, hi: float,
            default: float | None = None, lo_open: bool = False) -> float:
        if key not in tbl:
            if default is None:
                raise self.fail(f"{where}.{key}", "missing")
            return default
        v = tbl[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(f"{where}.{key}", f"expected number, got {_tname(v)}")
        bracket = "(" if lo_open else "["
        try:
            v = float(v)
        except OverflowError:  # an integer beyond any float (TOML allows 4,300 digits)
            raise self.fail(f"{where}.{key}",
                            f"{_short(v)} out of range {bracket}{lo:g}, {hi:g}]") from None
        if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
            raise self.fail(f"{where}.{key}", f"{v:g} out of range {bracket}{lo:g}, {hi:g}]")
        return v

    def str_(self, tbl: dict[str, Any], where: str, key: str, choices: tuple[str, ...] | None,
             default: str | None = None) -> str:
        if key not in tbl:
            if default is None:
                raise self.fail(f"{where}.{key}", "missing")
            return default
        v = tbl[key]
        if not isinstance(v, str):
            raise self.fail(f"{where}.{key}", f"expected string, got {_tname(v)}")
        if choices is not None and v not in choices:
            raise self.fail(f"{where}.{key}", f"{v!r} not one of {', '.join(choices)}")
        if not v or len(v) > 64:
            raise self.fail(f"{where}.{key}", "must be 1..64 characters")
        return v

    def bool_(self, tbl: dict[str, Any], where: str, key: str, default: bool) -> bool:
        if key not in tbl:
            return default
        v = tbl[key]
        if not isinstance(v, bool):
            raise self.fail(f"{where}.{key}", f"expected boolean, got {_tname(v)}")
        return v

    def link(self, tbl: dict[str, Any], where: str, base: LinkSpec) -> LinkSpec:
        lat = self.num(tbl, where, "latency_ms", 0.0, 60_000.0, base.latency_s * 1000.0)
        jit = self.num(tbl, where, "jitter_ms", 0.0, 60_000.0, base.jitter_s * 1000.0)
        loss = self.num(tbl, where, "loss", 0.0, 1.0, base.loss)
        if loss >= 1.0:
            raise self.fail(f"{where}.loss", "1 would drop everything; use a partition")
        bw_default = None if base.bandwidth_bps is None else base.bandwidth_bps / 1e6
        if "bandwidth_mbps" in tbl:
            bw: float | None = self.num(tbl, where, "bandwidth_mbps", MIN_MBPS, 1e6) * 1e6
        else:
            bw = None if bw_default is None else bw_default * 1e6
        dist = self.str_(tbl, where, "distribution", DISTRIBUTIONS, base.distribution)
        return LinkSpec(latency_s=lat / 1000.0, jitter_s=jit / 1000.0, loss=loss,
                        bandwidth_bps=bw, distribution=dist)


def _short(v: int) -> str:
    """An integer for a one-line message: a huge one as its first digits and length."""
    text = str(v)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text.lstrip('-'))} digits)"


def _check_record_fits(c: _Checker, where: str, labels: dict[str, str]) -> None:
    """A group's labels must fit in a signed record (MAX_RECORD_BYTES) at its largest:
    last address, highest incarnation, a long `rev`. Labels far below it are not built."""
    if sum(len(k.encode()) + len(v.encode()) + 6 for k, v in labels.items()) <= 512:
        return  # the rest of a record is under 400 bytes
    from keepmesh.protocol.errors import ProtocolError

    from .keyring import SimulationKeyring
    from .runner import sim_record
    worst = {**labels, "rev": "9" * 12}
    try:
        sim_record(SimulationKeyring(bytes(32)), bytes(32), "10.255.255.255:7946", worst,
                   2**63 - 1)
    except ProtocolError as err:
        raise c.fail(f"{where}.labels", f"too long for a member record: {err}") from None


def _tname(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string",
            list: "array", dict: "table"}.get(type(v), type(v).__name__)


LINK_KEYS = {"latency_ms", "jitter_ms", "loss", "bandwidth_mbps", "distribution"}


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file; raise TopologyError (one line) on any problem."""
    p = str(path)
    try:
        raw = read_at_most(path, 4 * 1024 * 1024)
    except OSError as err:
        raise TopologyError(f"{p}: cannot read: {err.strerror or err}") from None
    if len(raw) > 4 * 1024 * 1024:
        raise TopologyError(f"{p}: file larger than 4 MiB")
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise TopologyError(f"{p}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as err:
        raise TopologyError(f"{p}: TOML syntax: {str(err).splitlines()[0]}") from None
    except RecursionError:  # tomllib recurses on nested arrays/tables
        raise TopologyError(f"{p}: TOML syntax: nested too deeply") from None
    except ValueError as err:  # int() of a literal over sys.get_int_max_str_digits()
        raise TopologyError(f"{p}: TOML syntax: {str(err).split(':')[0]}") from None
    return parse_topology(doc, p)


def parse_topology(doc: dict[str, Any], p: str = "<topology>") -> Topology:
    c = _Checker(p)
    c.keys(doc, "", {"mesh", "network", "group", "link", "graph", "event", "placement",
                     "migration"})
    mesh = c.table(doc, "mesh", {"agents", "duration_s", "profile", "seeds", "attestation",
                                 "update_at_s", "sample_interval_s", "bootstrap"},
                   required=True)
    bootstrap = c.str_(mesh, "mesh", "bootstrap", ("join", "warm"), "join")
    duration = c.num(mesh, "mesh", "duration_s", 0.0, MAX_DURATION_S, lo_open=True)
    profile = c.str_(mesh, "mesh", "profile", PROFILES, "lan")
    seeds = c.int_(mesh, "mesh", "seeds", 1, 64, 3)
    attestation = c.bool_(mesh, "mesh", "attestation", True)
    update_at: float | None = None
    if "update_at_s" in mesh:
        update_at = c.num(mesh, "mesh", "update_at_s", 0.0, duration)
    # at most MAX_SAMPLES samples: each one is a timer and a record kept to the end
    sample = c.num(mesh, "mesh", "sample_interval_s", duration / MAX_SAMPLES, duration,
                   min(1.0, duration))

    net = c.table(doc, "network", set(LINK_KEYS))
    default = c.link(net, "network", LinkSpec(latency_s=0.005, distribution="uniform"))

    groups: list[GroupSpec] = []
    raw_groups = doc.get("group", [])
    if not isinstance(raw_groups, list):
        raise c.fail("group", "expected an array of tables [[group]]")
    names: set[str] = set()
    for gi, g in enumerate(raw_groups):
        where = f"group[{gi}]"
        if not isinstance(g, dict):
            raise c.fail(where, "expected a table")
        c.keys(g, where, {"name", "agents", "labels"} | LINK_KEYS)
        name = c.str_(g, where, "name", None)
        if name in names:
            raise c.fail(f"{where}.name", f"duplicate group {name!r}")
        names.add(name)
        n = c.int_(g, where, "agents", 1, MAX_AGENTS)
        labels = g.get("labels", {})
        if not isinstance(labels, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 128
                for k, v in labels.items()) or len(labels) > MAX_LABELS:
            raise c.fail(f"{where}.labels",
                         f"expected a table of at most {MAX_LABELS} short strings")
        labels = dict(labels)
        labels.setdefault("zone", name)
        # a record carries at most MAX_LABELS labels, and every update adds `rev`
        if len(labels.keys() | {"rev"}) > MAX_LABELS:
            raise c.fail(f"{where}.labels",
                         f"{len(labels.keys() | {'rev'})} labels with zone and rev (set by "
                         f"updates); a record carries at most {MAX_LABELS}")
        _check_record_fits(c, where, labels)
        groups.append(GroupSpec(name, n, labels, c.link(g, where, default)))

    graph: dict[str, Any] | None = None
    if "graph" in doc:
        gt = c.table(doc, "graph", {"kind", "sites", "m", "radius", "hop_latency_ms",
                                    "hop_jitter_ms", "hop_loss", "hop_bandwidth_mbps"})
        if groups:
            raise c.fail("graph", "use either [graph] or [[group]], not both")
        kind = c.str_(gt, "graph", "kind", GRAPH_KINDS)
        sites = c.int_(gt, "graph", "sites", 1, MAX_SITES)
        m = c.int_(gt, "graph", "m", 1, 64, 2)
        if kind == "scale_free" and m >= sites:
            raise c.fail("graph.m", f"must be below sites ({sites})")
        graph = {
            "kind": kind, "sites": sites, "m": m,
            "radius": c.num(gt, "graph", "radius", 0.0, 2.0, 0.15, lo_open=True),
            "hop": LinkSpec(
                latency_s=c.num(gt, "graph", "hop_latency_ms", 0.0, 60_000.0, 2.0) / 1000.0,
                jitter_s=c.num(gt, "graph", "hop_jitter_ms", 0.0, 60_000.0, 0.0) / 1000.0,
                loss=c.num(gt, "graph", "hop_loss", 0.0, 0.5, 0.0),
                bandwidth_bps=(c.num(gt, "graph", "hop_bandwidth_mbps", MIN_MBPS, 1e6)
                               * 1e6 if "hop_bandwidth_mbps" in gt else None),
                distribution=default.distribution),
        }

    if "agents" in mesh:
        agents = c.int_(mesh, "mesh", "agents", 1, MAX_AGENTS)
        if groups and sum(g.agents for g in groups) != agents:
            raise c.fail("mesh.agents", f"{agents} != sum of group agents "
                         f"({sum(g.agents for g in groups)})")
    elif groups:
        agents = sum(g.agents for g in groups)
        if agents > MAX_AGENTS:
            raise c.fail("group", f"total agents {agents} above {MAX_AGENTS}")
    else:
        raise c.fail("mesh.agents", "missing")

    links: dict[tuple[str, str], LinkSpec] = {}
    raw_links = doc.get("link", [])
    if not isinstance(raw_links, list):
        raise c.fail("link", "expected an array of tables [[link]]")
    explicit: set[tuple[str, str]] = set()
    for li, lk in enumerate(raw_links):
        where = f"link[{li}]"
        if not isinstance(lk, dict):
            raise c.fail(where, "expected a table")
        c.keys(lk, where, {"from", "to", "symmetric"} | LINK_KEYS)
        a = c.str_(lk, where, "from", None)
        b = c.str_(lk, where, "to", None)
        for key, nm in (("from", a), ("to", b)):
            if nm not in names:
                raise c.fail(f"{where}.{key}", f"no group named {nm!r}")
        if (a, b) in explicit:
            raise c.fail(where, f"duplicate link {a} -> {b}")
        spec = c.link(lk, where, default)
        links[(a, b)] = spec
        explicit.add((a, b))
        if c.bool_(lk, where, "symmetric", True) and (b, a) not in explicit:
            links[(b, a)] = spec

    events: list[EventSpec] = []
    raw_events = doc.get("event", [])
    if not isinstance(raw_events, list):
        raise c.fail("event", "expected an array of tables [[event]]")
    for ei, ev in enumerate(raw_events):
        events.append(_parse_event(c, ev, ei, duration, agents, names))
    events.sort(key=lambda e: (e.at_s, e.index))
    joined = sum(e.value for e in events if e.action == "join")
    if agents + joined > MAX_AGENTS:
        raise c.fail("event", f"{agents} agents and {joined} joined exceed {MAX_AGENTS:,} "
                              "agents in one run")
    placement = None
    if "placement" in doc:
        from .placement_stream import parse_stream
        placement = parse_stream(doc["placement"], p)
    migration = None
    if "migration" in doc:
        from .migration_experiment import parse_migration_spec
        migration = parse_migration_spec(doc["migration"], p)
    return Topology(path=p, agents=agents, duration_s=duration, profile=profile, seeds=seeds,
                    attestation=attestation, update_at_s=update_at, bootstrap=bootstrap,
                    sample_interval_s=sample,
                    default_link=default, groups=groups, links=links, graph=graph,
                    events=events, placement=placement, migration=migration)


def _parse_event(c: _Checker, ev: Any, ei: int, duration: float, agents: int,
                 groups: set[str]) -> EventSpec:
    where = f"event[{ei}]"
    if not isinstance(ev, dict):
        raise c.fail(where, "expected a table")
    actions = [k for k in ev if k in ACTIONS]
    extras_all = {x for xs in ACTIONS.values() for x in xs}
    c.keys(ev, where, {"at_s"} | set(ACTIONS) | extras_all)
    if len(actions) != 1:
        raise c.fail(where, f"needs exactly one action of {', '.join(ACTIONS)}; got "
                     f"{', '.join(actions) or 'none'}")
    action = actions[0]
    for k in ev:
        if k not in ("at_s", action) and k not in ACTIONS[action]:
            raise c.fail(f"{where}.{k}", f"not valid with {action}")
    at = c.num(ev, where, "at_s", 0.0, math.inf)
    if at > duration:
        raise c.fail(f"{where}.at_s", f"{at:g} is beyond mesh.duration_s ({duration:g})")
    group = None
    if "group" in ev:
        group = c.str_(ev, where, "group", None)
        if group not in groups:
            raise c.fail(f"{where}.group", f"no group named {group!r}")
    pause_s = 0.0
    dur = 0.0
    value: Any
    key = f"{where}.{action}"
    v = ev[action]
    if action in ("crash", "pause", "leave", "join", "tee_expire", "tcb_drop", "update"):
        limit = MAX_AGENTS if action == "join" else agents
        value = c.int_(ev, where, action, 1, limit)
        if action == "pause":
            pause_s = c.num(ev, where, "pause_s", 0.0, duration, lo_open=True)
    elif action == "restart":
        if isinstance(v, bool):
            if not v:
                raise c.fail(key, "false does nothing; remove the event")
            value = -1  # all crashed agents
        else:
            value = c.int_(ev, where, action, 1, agents)
    elif action == "heal":
        if v is not True:
            raise c.fail(key, "expected true")
        value = True
    elif action == "loss_burst":
        value = c.num(ev, where, action, 0.0, 1.0, lo_open=True)
        dur = c.num(ev, where, "duration_s", 0.0, duration, lo_open=True)
    elif action == "churn":
        value = c.num(ev, where, action, 0.0, 10_000.0, lo_open=True)
        dur = c.num(ev, where, "duration_s", 0.0, duration, lo_open=True)
    elif action == "partition":
        if isinstance(v, list):
            if not v or not all(isinstance(x, str) for x in v):
                raise c.fail(key, "expected a fraction or a non-empty list of group names")
            for x in v:
                if x not in groups:
                    raise c.fail(key, f"no group named {x!r}")
            if set(v) == groups:
                raise c.fail(key, "lists every group; one side would be empty")
            value = tuple(v)
        else:
            value = c.num(ev, where, action, 0.0, 1.0, lo_open=True)
            if value >= 1.0:
                raise c.fail(key, "fraction must be below 1")
    else:  # pragma: no cover - ACTIONS and this chain are kept in sync
        raise c.fail(key, "unsupported action")
    return EventSpec(at_s=at, action=action, value=value, pause_s=pause_s, duration_s=dur,
                     group=group, index=ei)
