"""Turns topology [[event]] entries into actions on a running simulation.

Why a separate module: each fault is a small story (who is chosen, what the
network or the protocol sees, what the metrics must start watching) and the
stories should read in one place. Every choice of victims draws from the
simulation's fault RNG, so the same seed picks the same agents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .topology import EventSpec

if TYPE_CHECKING:  # pragma: no cover
    from .runner import Simulation


def apply_event(sim: Simulation, ev: EventSpec) -> None:
    """Run one scripted event at the current virtual time."""
    now = sim.engine.now
    action = ev.action
    if action == "crash":
        victims = sim.pick(ev.value, ev.group)
        for idx in victims:
            sim.crash(idx)
        sim.metrics_input.mark(now, f"crash {len(victims)}")
    elif action == "restart":
        crashed = sim.crashed_indices(ev.group)
        n = len(crashed) if ev.value == -1 else min(ev.value, len(crashed))
        chosen = sim.fault_rng.sample(crashed, n) if n < len(crashed) else crashed
        for idx in sorted(chosen):
            sim.restart(idx)
        sim.metrics_input.mark(now, f"restart {len(chosen)}")
    elif action == "pause":
        victims = sim.pick(ev.value, ev.group)
        for idx in victims:
            sim.engine.pause(sim.engine.nodes[idx], ev.pause_s)
        sim.metrics_input.mark(now, f"pause {len(victims)}")
    elif action == "leave":
        victims = sim.pick(ev.value, ev.group)
        for idx in victims:
            sim.leave(idx)
        sim.metrics_input.mark(now, f"leave {len(victims)}")
    elif action == "join":
        for _ in range(ev.value):
            sim.join_new(ev.group)
        sim.metrics_input.mark(now, f"join {ev.value}")
    elif action == "loss_burst":
        sim.engine.network.loss_burst(ev.value, now + ev.duration_s)
        sim.metrics_input.mark(now, f"loss {ev.value:g}")
    elif action == "partition":
        sim.partition(ev.value)
        sim.metrics_input.mark(now, "partition")
    elif action == "heal":
        sim.engine.network.heal(now)
        sim.metrics_input.mark(now, "heal")
    elif action in ("tee_expire", "tcb_drop"):
        victims = sim.pick(ev.value, ev.group)
        reason = ("attestation evidence expired" if action == "tee_expire"
                  else "TCB below policy minimum")
        for idx in victims:
            sim.tee_fault(idx, reason)
        sim.metrics_input.mark(now, f"{action} {len(victims)}")
    elif action == "update":
        victims = sim.pick(ev.value, ev.group)
        for idx in victims:
            sim.update(idx)
        sim.metrics_input.mark(now, f"update {len(victims)}")
    elif action == "churn":
        sim.metrics_input.mark(now, f"churn {ev.value:g}/s")
        _schedule_churn(sim, ev, now, now + ev.duration_s)
    else:  # pragma: no cover - topology validation rejects unknown actions
        raise ValueError(f"unknown action {action}")


def _schedule_churn(sim: Simulation, ev: EventSpec, start: float, end: float) -> None:
    """Poisson leaves and joins at `ev.value` per second each, keeping the mesh size steady."""
    rate = float(ev.value)
    t = start
    rng = sim.fault_rng
    while True:
        t += rng.expovariate(rate)
        if t >= end or t > sim.topology.duration_s:
            break
        sim.engine.schedule(t, _churn_leave, sim, ev.group)
    t = start
    while True:
        t += rng.expovariate(rate)
        if t >= end or t > sim.topology.duration_s:
            break
        sim.engine.schedule(t, sim.join_new, ev.group)


def _churn_leave(sim: Simulation, group: str | None) -> None:
    victims = sim.pick(1, group)
    for idx in victims:
        sim.leave(idx)
