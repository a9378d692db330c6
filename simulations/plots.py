"""metrics.json and PNG plots for a finished simulation (matplotlib, Agg backend).

Imported lazily by `keepmesh simulate --out`, so agents never need matplotlib.
Plots compare what the real protocol did with the analytic models it is
expected to follow: Serf's dissemination curve and SWIM's first-detection time.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from .metrics import SWIM_FIRST_DETECTION_PERIODS, serf_model

if TYPE_CHECKING:  # pragma: no cover
    from .runner import Simulation


def write_outputs(sim: Simulation, report: dict[str, Any], out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    files = []
    with open(os.path.join(out_dir, "metrics.json"), "w") as fh:
        json.dump(report, fh, indent=2, sort_keys=True)
    files.append("metrics.json")
    ad = sim.adapter
    n = max(2, report["agents"])

    # 1. dissemination vs Serf's model
    fig, ax = plt.subplots(figsize=(7, 4.5))
    tracks = [u for u in sim.metrics.all_updates() if u.times and u.effective_target > 0]
    horizon = 1.0
    for u in tracks[:8]:
        xs = sorted(u.times)
        ys = [(i + 1) / u.effective_target for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=f"measured ({u.kind} at {u.at:.0f}s)")
        horizon = max(horizon, xs[-1])
    steps = 200
    mx = [horizon * 1.1 * k / steps for k in range(steps + 1)]
    my = [serf_model(n, ad.gossip_nodes, x / ad.gossip_interval) / n for x in mx]
    ax.plot(mx, my, "k--", label=f"Serf model (fanout {ad.gossip_nodes}, "
            f"interval {ad.gossip_interval:g}s)")
    ax.axhline(0.999, color="grey", lw=0.5)
    ax.set_xlabel("seconds since the update")
    ax.set_ylabel("fraction of live agents informed")
    ax.set_title(f"Dissemination, {report['agents']} agents")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "dissemination.png"), dpi=110)
    plt.close(fig)
    files.append("dissemination.png")

    # 2. detection CDF
    crashes = sim.metrics.all_crashes()
    det = sorted(c.first_suspect - c.at for c in crashes if c.first_suspect is not None)
    dead = sorted(c.dead_everywhere - c.at for c in crashes if c.dead_everywhere is not None)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if det:
        ax.step(det, [(i + 1) / len(crashes) for i in range(len(det))], where="post",
                label="first suspicion anywhere")
    if dead:
        ax.step(dead, [(i + 1) / len(crashes) for i in range(len(dead))], where="post",
                label="dead at every live agent")
    swim = SWIM_FIRST_DETECTION_PERIODS * ad.probe_interval + ad.probe_timeout
    ax.axvline(swim, color="k", ls="--",
               label=f"SWIM e/(e-1) periods + timeout = {swim:.2f}s")
    ax.set_xlabel("seconds since crash")
    ax.set_ylabel("CDF over crashes")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Failure detection ({len(crashes)} crashes)" if crashes
                 else "Failure detection (no crash in topology)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "detection_cdf.png"), dpi=110)
    plt.close(fig)
    files.append("detection_cdf.png")

    # 3. membership view over time with events marked
    fig, ax = plt.subplots(figsize=(8, 4.5))
    samples = sim.metrics.view_samples
    if samples:
        ts = [s[0] for s in samples]
        ax.plot(ts, [s[1] for s in samples], label="mean members in view (alive+suspect)")
        ax.plot(ts, [s[2] for s in samples], label="min members in view", lw=0.8)
        ax.plot(ts, [max(0, s[3] - 1) for s in samples], "k:", label="agents up - 1 (truth)")
    for t, label in sim.metrics.marks:
        ax.axvline(t, color="red", lw=0.6, alpha=0.6)
        ax.annotate(label, (t, ax.get_ylim()[1] * 0.95), rotation=90, fontsize=7,
                    va="top", ha="right", color="red")
    ax.set_xlabel("simulated seconds")
    ax.set_ylabel("members")
    ax.set_title("Membership view over time")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "membership_view.png"), dpi=110)
    plt.close(fig)
    files.append("membership_view.png")
    if getattr(sim, "migration", None) is not None:
        raw = sim.migration.raw()
        with open(os.path.join(out_dir, "migration.json"), "w") as fh:
            json.dump(raw, fh, indent=1, sort_keys=True)
        files.append("migration.json")
        files += write_migration_plots(raw, out_dir)
    return files


def write_migration_plots(raw: dict[str, Any], out_dir: str) -> list[str]:
    """Issue 11's figures from a run's migration.json (MigrationExperiment.raw()):
    keeps down / duplicated over time, and each measure against its target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    summary = raw["summary"]
    ref = summary["reference"]
    # 1. keeps with no running copy / with two copies, over time, events marked
    fig, ax = plt.subplots(figsize=(8, 4.5))
    tl = raw["timeline"]
    if tl:
        ts = [p[0] for p in tl]
        ax.step(ts, [p[1] for p in tl], where="post", label="keeps with no running copy")
        ax.step(ts, [p[2] for p in tl], where="post", label="keeps running twice")
    for t, label in raw["marks"]:
        if label in ("partition", "heal") or label.startswith("crash"):
            ax.axvline(t, color="red", lw=0.6, alpha=0.6)
            ax.annotate(label, (t, ax.get_ylim()[1] * 0.95), rotation=90, fontsize=7,
                        va="top", ha="right", color="red")
    ax.set_xlabel("simulated seconds")
    ax.set_ylabel(f"keeps (of {summary['keeps']})")
    ax.set_title("Keeps down and duplicated over time")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "migration_timeline.png"), dpi=110)
    plt.close(fig)

    # 2. the three measures against their targets
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    rec = raw["recoveries"]
    ax = axes[0]
    det = sorted(r["first_dead_at"] - r["crashed_at"] for r in rec
                 if r["first_dead_at"] is not None)
    run = sorted(r["running_at"] - r["crashed_at"] for r in rec)
    if run:
        ax.step(det, [(i + 1) / len(det) for i in range(len(det))], where="post",
                label="host declared dead (first member)")
        ax.step(run, [(i + 1) / len(run) for i in range(len(run))], where="post",
                label="keep running elsewhere")
        bound = sorted(d + 2.0 for d in det)
        ax.step(bound, [(i + 1) / len(bound) for i in range(len(bound))], where="post",
                color="k", ls="--", lw=0.8, label="target: detection + 2 s")
    else:
        ax.annotate("no keep lost its host", (0.5, 0.5), xycoords="axes fraction",
                    ha="center")
    ax.set_xlabel("seconds since the host's crash")
    ax.set_ylabel(f"CDF over {len(run)} recovered keeps")
    ax.set_title("Crash -> running elsewhere")
    if run:
        ax.legend(fontsize=7, loc="lower right")
    ax = axes[1]
    lost = [r["lost_state_s"] / r["checkpoint_s"] for r in rec]
    if lost:
        ax.hist(lost, bins=20, range=(0.0, max(1.2, max(lost) * 1.05)))
    ax.axvline(1.0, color="k", ls="--", lw=0.8, label="target: one checkpoint interval")
    ax.set_xlabel("state lost on the crash (checkpoint intervals)")
    ax.set_ylabel("recovered keeps")
    ax.set_title("State lost on a crash")
    ax.legend(fontsize=7)
    ax = axes[2]
    heals = [t for t, label in raw["marks"] if label == "heal"]
    after = []
    for d in raw["duplicates"]:
        h = max((x for x in heals if x <= d["end"]), default=None)
        if h is not None:
            after.append(d["end"] - max(d["start"], h))
    after.sort()
    if after:
        ax.step(after, [(i + 1) / len(after) for i in range(len(after))], where="post",
                label="duplicate gone after the heal")
    if ref.get("suspicion_min_s") is not None:
        ax.axvline(ref["suspicion_min_s"], color="k", ls="--", lw=0.8,
                   label=f"one suspicion timeout (min, {ref['suspicion_min_s']:.1f} s)")
    ax.set_xlabel("seconds after the heal")
    ax.set_ylabel(f"CDF over {len(after)} duplicated keeps")
    ax.set_title("Duplicate lifetime after a heal")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "migration_targets.png"), dpi=110)
    plt.close(fig)
    return ["migration_timeline.png", "migration_targets.png"]


SWEEP_PLOTS = ("dissemination_999_s", "detection_p50_s", "dead_everywhere_max_s",
               "false_positives", "msgs_per_agent_s")


def write_sweep_outputs(doc: dict[str, Any], out_dir: str) -> list[str]:
    """sweep.json plus one PNG per metric: median with the p10-p90 band over seeds.

    The x axis is the grid parameter with the most values; every combination of
    the other parameters is its own line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "sweep.json"), "w") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True)
    files = ["sweep.json"]
    grid: dict[str, list[Any]] = doc["grid"]
    if not grid:
        return files
    xkey = max(grid, key=lambda k: len(grid[k]))
    lines: dict[str, list[dict[str, Any]]] = {}
    for point in doc["points"]:
        rest = ", ".join(f"{k}={v:g}" for k, v in point["params"].items() if k != xkey)
        lines.setdefault(rest or "all", []).append(point)
    for name in SWEEP_PLOTS:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        drawn = False
        for label, pts in lines.items():
            pts = sorted(pts, key=lambda p: p["params"][xkey])
            xs, med, lo, hi = [], [], [], []
            for p in pts:
                f = p["metrics"][name]
                if f["median"] is None:
                    continue
                xs.append(p["params"][xkey])
                med.append(f["median"])
                lo.append(f["p10"])
                hi.append(f["p90"])
            if xs:
                drawn = True
                ax.plot(xs, med, marker="o", label=label)
                ax.fill_between(xs, lo, hi, alpha=0.2)
        if drawn:
            ax.set_xlabel(xkey)
            ax.set_ylabel(f"{name} (median, p10-p90 over {len(doc['seeds'])} seeds)")
            ax.grid(alpha=0.3)
            if len(lines) > 1:
                ax.legend(fontsize=7)
            fname = f"sweep_{name}.png"
            fig.tight_layout()
            fig.savefig(os.path.join(out_dir, fname), dpi=100)
            files.append(fname)
        plt.close(fig)
    return files


def write_placement_plots(doc: dict[str, Any], out_dir: str) -> list[str]:
    """Issue 10's figures from bench/placement.py's document: acceptance against offered
    load for the protocol and the same run's greedy ideal, and messages per placement
    against N (negotiation and location gossip, with the +-10% flatness band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    files = []
    by_load = doc.get("by_load") or {}
    if by_load:
        pts = sorted(by_load.values(), key=lambda p: p["offered_load"])
        xs = [p["offered_load"] for p in pts]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(xs, [p["acceptance_rate"] for p in pts], "o-", label="keepmesh placement")
        ax.plot(xs, [p["ideal_acceptance_rate"] for p in pts], "s--",
                label="centralised greedy best fit (same run)")
        for x, p in zip(xs, pts, strict=True):
            if p["acceptance_vs_ideal"] is not None:
                ax.annotate(f"{p['acceptance_vs_ideal']:.3f}x", (x, p["acceptance_rate"]),
                            textcoords="offset points", xytext=(0, -14), fontsize=7,
                            ha="center")
        ax.set_xlabel("offered load (memory demanded / offered)")
        ax.set_ylabel("accepted / decided deployments")
        ax.set_title(f"Placement acceptance vs the ideal, {pts[0]['agents']} agents "
                     "(labels: accepted vs ideal's)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "placement_acceptance.png"), dpi=110)
        plt.close(fig)
        files.append("placement_acceptance.png")
    scaling = doc.get("scaling")
    if scaling:
        ns = scaling["agents"]
        msgs = [scaling["msgs_per_placement"][str(n)] for n in ns]
        where = [scaling["where_msgs_per_placement"][str(n)] for n in ns]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(ns, msgs, "o-", label="negotiation (probe ... committed)")
        ax.fill_between(ns, [msgs[0] * 0.9] * len(ns), [msgs[0] * 1.1] * len(ns), alpha=0.15,
                        label="smallest N +-10% (target band)")
        ax.plot(ns, where, "s--", label="location gossip (place.where)")
        ax.set_xscale("log")
        ax.set_xlabel("agents (N)")
        ax.set_ylabel("messages per placement")
        ax.set_title(f"Messages per placement vs N (load {scaling['load']:g}, "
                     f"{scaling['duration_s']:g} s, lifetime {scaling['lifetime_s']:g} s)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "placement_msgs_vs_n.png"), dpi=110)
        plt.close(fig)
        files.append("placement_msgs_vs_n.png")
    return files
