"""Join/leave soak under CPU load: false deaths and suspicions per agent per minute.

    .venv/bin/python bench/soak.py [--agents 6] [--stable 3] [--duration 600]
                                   [--burners 8] [--churn-gap 10] [--baseline S]

N real `keepmesh agent --tee sim` processes on loopback (each on its own
127.0.3.x address). `--stable` of them (the seed first) stay up all along; the
others churn: every `--churn-gap` seconds one of them, at random, either leaves
(SIGTERM: a graceful leave) or, if it is down, comes back (half the time with
its old identity, a restart, half the time as a new identity, a newcomer).

Two phases, measured the same way in the same run:
- baseline: churn for `--baseline` seconds (default a fifth of --duration,
  at least 30 s) with no extra CPU load;
- load: churn for `--duration` seconds while `--burners` busy loops saturate
  the CPU the agents run on (agents and burners pinned to one core, the last
  one, so the rest of the machine keeps working; `--no-pin` spreads them).

Every agent logs its membership events as JSON (`member.suspect`, `.dead`,
`.left`, ...); each event is judged against this script's record of when the
member it names was up (listening, and not yet asked to leave):
- false death: an agent declared a member dead while that member was up;
- suspicion of a live member: likewise for `suspect`;
- dead after leave: declared dead after it left gracefully (its leave was missed).
Rates are per observing agent per minute of that agent's uptime in the phase.

Prints one JSON document; `ratio_vs_baseline` compares the load phase to the
baseline phase of this run. Target (issue 9): zero false deaths in a
10-minute soak under CPU load.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


def _busy() -> None:
    while True:
        pass


def _pin(pid: int, cpus: set[int] | None) -> None:
    if cpus is None:
        return
    try:
        os.sched_setaffinity(pid, cpus)
    except (AttributeError, OSError):
        pass  # not Linux, or the process is gone


@dataclass
class Life:
    """One run of one identity: up from `ready` until `leave` (None: still up)."""

    ready: float
    leave: float | None = None


@dataclass
class Slot:
    """A place in the mesh: the agent running in it now (if any), its history."""

    index: int
    stable: bool
    proc: Any = None
    data_dir: Path | None = None
    generation: int = 0
    logs: list[Path] = field(default_factory=list)


class Soak:
    def __init__(self, tmp: Path, root: Path, args: argparse.Namespace) -> None:
        self.tmp, self.root, self.args = tmp, root, args
        self.rng = random.Random(args.seed)
        self.slots = [Slot(i, i < args.stable) for i in range(args.agents)]
        self.lives: dict[str, list[Life]] = {}  # fingerprint -> its runs
        self.seed_address = ""
        self.cpus: set[int] | None = None
        if args.pin and hasattr(os, "sched_getaffinity"):
            self.cpus = {sorted(os.sched_getaffinity(0))[-1]}
        self.start_failures = 0
        self.churn_events = {"leaves": 0, "restarts": 0, "newcomers": 0}

    # ------------------------------------------------------------ processes
    def start(self, slot: Slot, new_identity: bool) -> None:
        from keepmesh.agent.localmesh import AgentProcess
        if new_identity or slot.data_dir is None:
            slot.generation += 1
            slot.data_dir = self.tmp / f"agent{slot.index}-{slot.generation}"
        join = [self.seed_address] if self.seed_address else []
        try:
            proc = AgentProcess(slot.data_dir, self.root, listen=f"127.0.3.{slot.index + 2}:0",
                                join=join, extra=["--log-format", "json"],
                                start_timeout=self.args.start_timeout)
        except RuntimeError:  # did not start in time on a starved machine: counted
            self.start_failures += 1
            return
        now = time.time()
        _pin(proc.proc.pid, self.cpus)
        slot.proc = proc
        if proc.log_path not in slot.logs:
            slot.logs.append(proc.log_path)
        fp = _identity_fingerprint(slot.data_dir)
        _FINGERPRINTS[proc.log_path] = fp
        self.lives.setdefault(fp, []).append(Life(ready=now))
        if not self.seed_address:
            self.seed_address = proc.address

    def stop(self, slot: Slot) -> None:
        fp = _own_fingerprint(slot.proc.log_path)
        self.lives[fp][-1].leave = time.time()  # judged from here: a leave, not a death
        slot.proc.stop(timeout=10)
        slot.proc = None

    def churn(self) -> None:
        slot = self.rng.choice([s for s in self.slots if not s.stable])
        if slot.proc is not None:
            self.stop(slot)
            self.churn_events["leaves"] += 1
            what = "left"
        else:
            new = self.rng.random() < 0.5
            self.start(slot, new_identity=new)
            self.churn_events["newcomers" if new else "restarts"] += 1
            what = "joined as a newcomer" if new else "restarted"
        _say(f"agent {slot.index} {what}; {sum(s.proc is not None for s in self.slots)} up")

    def phase(self, seconds: float) -> tuple[float, float]:
        t0 = time.time()
        while time.time() - t0 < seconds:
            time.sleep(min(self.args.churn_gap, max(0.0, seconds - (time.time() - t0))))
            if time.time() - t0 < seconds:
                self.churn()
        return t0, time.time()

    # ------------------------------------------------------------ judging
    def up(self, fp: str, t: float) -> bool:
        return any(life.ready <= t and (life.leave is None or t < life.leave)
                   for life in self.lives.get(fp, []))

    def left_before(self, fp: str, t: float) -> bool:
        return any(life.leave is not None and life.leave <= t for life in self.lives.get(fp, []))

    def judge(self, window: tuple[float, float]) -> dict[str, Any]:
        t0, t1 = window
        counts = {"false_deaths": 0, "suspicions_of_live_members": 0, "suspicions": 0,
                  "dead_after_leave": 0, "deaths": 0, "lefts": 0}
        examples: list[str] = []
        for slot in self.slots:
            for path in slot.logs:
                observer = _own_fingerprint(path)
                for t, kind, member in _member_events(path):
                    if not t0 <= t < t1:
                        continue
                    if kind == "suspect":
                        counts["suspicions"] += 1
                        counts["suspicions_of_live_members"] += self.up(member, t)
                    elif kind == "dead":
                        counts["deaths"] += 1
                        if self.up(member, t):
                            counts["false_deaths"] += 1
                            if len(examples) < 5:
                                examples.append(f"{observer[:8]} declared {member[:8]} dead "
                                                f"at +{t - t0:.1f} s while it was up")
                        elif self.left_before(member, t):
                            counts["dead_after_leave"] += 1
                    elif kind == "left":
                        counts["lefts"] += 1
        minutes = sum(_overlap(life, t0, t1) for lives in self.lives.values()
                      for life in lives) / 60.0
        out: dict[str, Any] = {"seconds": round(t1 - t0, 1),
                               "agent_minutes": round(minutes, 2), **counts}
        per = max(minutes, 1e-9)
        out["false_deaths_per_agent_minute"] = round(counts["false_deaths"] / per, 4)
        out["suspicions_per_agent_minute"] = round(counts["suspicions_of_live_members"] / per, 4)
        out["examples"] = examples
        return out


def _say(text: str) -> None:
    print(f"bench/soak.py: {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def _overlap(life: Life, t0: float, t1: float) -> float:
    end = t1 if life.leave is None else min(life.leave, t1)
    return max(0.0, end - max(life.ready, t0))


def _json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


_FINGERPRINTS: dict[Path, str] = {}  # log file -> fingerprint of the agent writing it


def _identity_fingerprint(data_dir: Path) -> str:
    """The fingerprint agents log members by (agent.identity.fingerprint of the key)."""
    from cryptography.hazmat.primitives import serialization
    from keepmesh.agent.identity import fingerprint, read_private_key
    key = read_private_key(data_dir / "identity.key")
    return fingerprint(key.public_key().public_bytes(serialization.Encoding.Raw,
                                                     serialization.PublicFormat.Raw))


def _own_fingerprint(path: Path) -> str:
    return _FINGERPRINTS[path]


def _member_events(path: Path) -> list[tuple[float, str, str]]:
    out = []
    for rec in _json_lines(path):
        event = str(rec.get("event", ""))
        if event.startswith("member.") and isinstance(rec.get("member"), str):
            t = datetime.fromisoformat(str(rec["time"]).replace("Z", "+00:00")).timestamp()
            out.append((t, event.split(".", 1)[1], rec["member"]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=6, help="mesh size (default 6)")
    ap.add_argument("--stable", type=int, default=3,
                    help="agents that never leave, the seed among them (default 3)")
    ap.add_argument("--duration", type=float, default=600.0,
                    help="seconds of churn under load (default 600)")
    ap.add_argument("--baseline", type=float, default=None,
                    help="seconds of churn without load first (default duration/5, >= 30)")
    ap.add_argument("--burners", type=int, default=8, help="busy loops (default 8)")
    ap.add_argument("--churn-gap", type=float, default=10.0,
                    help="seconds between join/leave events (default 10)")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin agents and burners to one core")
    ap.add_argument("--seed", type=int, default=1, help="churn schedule seed")
    ap.add_argument("--start-timeout", type=float, default=180.0,
                    help="seconds one agent may take to start on a loaded machine")
    args = ap.parse_args()
    if not 2 <= args.agents <= 200 or not 1 <= args.stable < args.agents:
        ap.error("need 2 <= --agents <= 200 and 1 <= --stable < --agents")
    if not 0 <= args.burners <= 64 or args.duration <= 0 or args.churn_gap <= 0:
        ap.error("need 0 <= --burners <= 64, --duration > 0, --churn-gap > 0")
    baseline_s = args.baseline if args.baseline is not None else max(30.0, args.duration / 5)
    from keepmesh.agent.tee.sim import init_sim_root

    burners: list[multiprocessing.Process] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        root = tmp / "root"
        init_sim_root(root, key_bits=2048)
        soak = Soak(tmp, root, args)
        try:
            for slot in soak.slots:  # everyone up first; churn starts from a full mesh
                soak.start(slot, new_identity=True)
            _say(f"{sum(s.proc is not None for s in soak.slots)} agents up; converging")
            time.sleep(max(10.0, args.churn_gap))  # converge
            _say(f"baseline: {baseline_s:g} s of churn without load")
            base = soak.phase(baseline_s)
            _say(f"load: {args.duration:g} s of churn with {args.burners} busy loops")
            ctx = multiprocessing.get_context("fork")
            burners = [ctx.Process(target=_busy, daemon=True) for _ in range(args.burners)]
            for b in burners:
                b.start()
                assert b.pid is not None
                _pin(b.pid, soak.cpus)
            load = soak.phase(args.duration)
        finally:
            for b in burners:
                b.kill()
            for slot in soak.slots:
                if slot.proc is not None:
                    soak.stop(slot)
        time.sleep(0.5)
        phases = {"baseline": soak.judge(base), "load": soak.judge(load)}
    b, lo = phases["baseline"], phases["load"]
    ratio = (lo["suspicions_per_agent_minute"] / b["suspicions_per_agent_minute"]
             if b["suspicions_per_agent_minute"] else None)
    doc = {"benchmark": "soak", "what": "membership under join/leave churn: false deaths "
           "and suspicions of live members per agent per minute, without and with CPU load",
           "agents": args.agents, "stable": args.stable, "burners": args.burners,
           "pinned_to_cpus": sorted(soak.cpus) if soak.cpus else None,
           "churn_gap_s": args.churn_gap, "churn_events": soak.churn_events,
           "start_failures": soak.start_failures, "phases": phases,
           "suspicions_ratio_vs_baseline": round(ratio, 3) if ratio is not None else None,
           "false_deaths_under_load": lo["false_deaths"], "target_false_deaths": 0,
           "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
