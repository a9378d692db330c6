"""A simulation on several processes (cores) with the one-process answer.

How: conservative parallel discrete-event simulation. Every process builds the
same world (same RNG draws, same scheduled actions) but runs only the agents it
owns (shard.py). No message can arrive sooner than the smallest link latency
`L` (the network's lookahead), so once every process has run everything before
T, each can run its own agents up to T + L without waiting for the others: no
message sent in that window can land inside it. Processes then swap the messages
bound for each other's agents and the next window starts at the earliest pending
entry anywhere. A window holds either one world entry (an action or a resume,
which every process runs) or agent entries only, so world changes happen at the
same point of every process's history.

Why the answer does not depend on the number of processes: an agent's history
depends only on its own inputs, in (time, key) order (engine.py: entry keys name
their origin); the network draws from one stream per sender; each agent keeps its
own trace, and the run's trace hash combines them in agent order; metric calls are
replayed by worker 0 in one-process order (shard.py). `tests/test_sim_parallel.py`
runs topologies on 1 and 2 processes and compares trace hashes and reports.

Transport: worker 0 is the hub. Each window worker 0 sends every other worker
its next entry and its messages for that worker, and every other worker sends
worker 0 its next entry, its messages by destination and its metric calls; both
sides send before they read. With two workers that is the whole exchange: each
computes the next window from both heads, and neither waits on the other's
bookkeeping (a round trip through the hub cost two wake-ups per window). With
more, worker 0 then forwards what the others sent each other, with the earliest
head among the rest. Pipes between forked processes; a window's traffic is a few
hundred small tuples, so pickling is cheap beside the events. In object mode a message
crosses with its decoded twin (engine.py): unpickling that costs about half of
decoding the bytes, which was a tenth of a worker's time at 10,000 agents.

Placement and migration experiments run in one process (their bookkeeping sits
outside the agents); so does a topology whose smallest latency is zero.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from math import inf
from multiprocessing.connection import Connection
from typing import Any

from .collector import quiet_collector
from .engine import KEY_BITS
from .runner import Simulation
from .shard import MetricsRecorder, Shard, replay
from .topology import Topology

_WORLD_KEYS = 1 << KEY_BITS  # keys below this are world entries (engine.py)

Message = tuple[float, int, int, int, bytes, Any]  # time, key, dst, src, bytes, decoded


class ParallelUnavailable(Exception):
    """This run cannot be split over processes (the reason is the message)."""


def can_split(sim: Simulation) -> str:
    """Why `sim` must run in one process ("" when it can be split)."""
    if sim.topology.placement is not None or sim.topology.migration is not None:
        return "placement and migration experiments run in one process"
    if sim.network.min_latency() <= 0.0:
        return "a link with zero latency leaves no lookahead"
    return ""


def simulate_parallel(topo: Topology, seed: int, workers: int,
                      progress: Callable[[float], None] | None = None,
                      mode: str = "object") -> tuple[dict[str, Any], Simulation]:
    """Run `topo` on `workers` processes; returns worker 0's report and Simulation
    (whose metrics hold the whole run's)."""
    if workers < 2:
        raise ValueError("simulate_parallel needs at least 2 workers")
    probe = Simulation(topo, seed, mode=mode)
    why = can_split(probe)
    if why:
        raise ParallelUnavailable(why)
    lookahead = probe.network.min_latency()
    del probe
    ctx = multiprocessing.get_context("fork")
    pipes = [ctx.Pipe() for _ in range(workers - 1)]
    procs = []
    for k in range(1, workers):
        p = ctx.Process(target=_child, args=(topo, seed, mode, k, workers, lookahead,
                                             pipes[k - 1][1]), daemon=True)
        p.start()
        procs.append(p)
    for _, child_end in pipes:
        child_end.close()
    conns = [hub_end for hub_end, _ in pipes]
    try:
        wall0 = time.perf_counter()
        sim = Simulation(topo, seed, mode=mode, shard=Shard(0, workers))
        sim.setup()
        _hub(sim, conns, lookahead, progress)
        results = [_recv(c) for c in conns]
        wall = time.perf_counter() - wall0
        report = _merge(sim, results, wall, workers)
    finally:
        for c in conns:
            c.close()
        for p in procs:
            p.join(timeout=5.0)
            if p.is_alive():
                p.kill()
    return report, sim


# ------------------------------------------------------------------ windows


def _window(sim: Simulation, start: float, key: int, lookahead: float) -> None:
    """Run this process's part of the window that starts at the entry (start, key)."""
    eng = sim.engine
    until = sim.topology.duration_s
    if key < _WORLD_KEYS:
        eng.run(until, one=True)
        return
    end = start + lookahead
    world = eng.next_world_after(start)
    if world is not None and world < end:
        end = world
    eng.run(until, before=end)


def _head(sim: Simulation) -> tuple[float, int]:
    eng = sim.engine
    head = eng.peek()
    t, key = head if head is not None else (inf, 0)
    for m in eng.outgoing:  # sent this window, not yet queued anywhere
        if (m[0], m[1]) < (t, key):
            t, key = m[0], m[1]
    return t, key


def _split(sim: Simulation, workers: int) -> list[list[Message]]:
    by_dst: list[list[Message]] = [[] for _ in range(workers)]
    for m in sim.engine.outgoing:
        by_dst[m[2] % workers].append(m)
    sim.engine.outgoing = []
    return by_dst


def _calls(sim: Simulation) -> list[Any]:
    rec = sim.metrics_input
    assert isinstance(rec, MetricsRecorder)
    return rec.take()


# Hub messages ahead of the workers' own may not fill a socket buffer: a worker sends
# its part before it reads, so a hub blocked on a full buffer would deadlock with it.
_AHEAD_MAX = 32 * 1024


def _hub(sim: Simulation, conns: list[Connection], lookahead: float,
         progress: Callable[[float], None] | None) -> None:
    """Worker 0's loop. Each window it first sends every worker its own head and its
    messages for that worker, then reads theirs. With two workers that is the whole
    exchange: each side knows both heads and everything bound for it, and neither
    waits on the other's bookkeeping. With more, a second message forwards what
    workers sent each other and the earliest head of the rest."""
    workers = len(conns) + 1
    until = sim.topology.duration_s
    next_progress = 0.0
    step = until / 1000.0 if until > 0 else 1.0
    attach = getattr(progress, "attach", None)
    if attach is not None:
        attach(sim.engine)
    rec = sim.metrics_input
    assert isinstance(rec, MetricsRecorder) and rec.real is not None
    with ExitStack() as stack:
        quiet = False
        while True:
            head = _head(sim)
            mine = _split(sim, workers)
            batches = [_calls(sim)]
            late: list[tuple[Connection, bytes]] = []
            for k, c in enumerate(conns, start=1):
                data = pickle.dumps((head, mine[k]), pickle.HIGHEST_PROTOCOL)
                if len(data) <= _AHEAD_MAX:
                    _post(c, data)
                else:  # too big to send ahead safely: after reading that worker's part
                    late.append((c, data))
            heads = [head]
            inbox: list[list[Message]] = [[] for _ in range(workers)]
            for c in conns:
                their_head, by_dst, calls = _recv(c)
                heads.append(their_head)
                for j, msgs in enumerate(by_dst):
                    inbox[j].extend(msgs)
                batches.append(calls)
                for pending, data in late:
                    if pending is c:
                        _post(c, data)
            start, key = min(heads)
            go = start <= until
            if workers > 2:
                for k, c in enumerate(conns, start=1):
                    rest = min(h for j, h in enumerate(heads) if j != k)
                    _post(c, pickle.dumps((rest, inbox[k]), pickle.HIGHEST_PROTOCOL))
            # The window just run is complete everywhere: its measurements, in order.
            # The world answers from that window: this process has not moved past it.
            replay(rec.real, sim, batches)
            if not go:
                break
            if start > 0.0 and not quiet:  # past the warm start (collector.py)
                quiet = True
                stack.enter_context(quiet_collector())
            sim.engine.deliver_remote(inbox[0])
            _window(sim, start, key, lookahead)
            if progress is not None and start >= next_progress:
                progress(start)
                next_progress = start + step
    sim.engine.now = max(sim.engine.now, until)


def _child(topo: Topology, seed: int, mode: str, index: int, workers: int,
           lookahead: float, conn: Connection) -> None:
    try:
        sim = Simulation(topo, seed, mode=mode, shard=Shard(index, workers))
        sim.setup()
        until = topo.duration_s
        with ExitStack() as stack:
            quiet = False
            while True:
                head = _head(sim)
                conn.send((head, _split(sim, workers), _calls(sim)))
                hub_head, inbox = _recv(conn)
                first = min(head, hub_head)
                if workers > 2:
                    rest, forwarded = _recv(conn)
                    first = min(first, rest)
                    inbox.extend(forwarded)
                start, key = first
                if start > until:
                    break
                if start > 0.0 and not quiet:  # past the warm start (collector.py)
                    quiet = True
                    stack.enter_context(quiet_collector())
                sim.engine.deliver_remote(inbox)
                _window(sim, start, key, lookahead)
        sim.engine.now = max(sim.engine.now, until)
        sim._count_agents()
        conn.send(("ok", _result(sim)))
    except BaseException as err:  # the hub must hear why, not wait forever
        try:
            conn.send(("error", f"worker {index}: {type(err).__name__}: {err}\n"
                                f"{traceback.format_exc(limit=8)}"))
        except OSError:
            pass
    finally:
        conn.close()
        os._exit(0)  # no atexit handlers of the parent's copy


def _post(conn: Connection, data: bytes) -> None:
    """Send to a worker that may have died (its end closed): the next read from it
    says why (its error, or that it exited without a word), in one line."""
    try:
        conn.send_bytes(data)
    except OSError:
        pass


def _recv(conn: Connection) -> Any:
    try:
        msg = conn.recv()
    except EOFError:
        raise RuntimeError("a simulation worker exited without a word") from None
    if isinstance(msg, tuple) and len(msg) == 2 and msg[0] == "error":
        raise RuntimeError(str(msg[1]).splitlines()[0]) from None
    if isinstance(msg, tuple) and len(msg) == 2 and msg[0] == "ok":
        return msg[1]
    return msg


# ------------------------------------------------------------------ results

_COUNTERS = ("sent", "delivered", "in_flight", "bytes_sent", "sent_reliable", "steps",
             "stale_timers", "idle_timers", "handed_over", "protocol_errors")
# world entries run in every process: counted once, by worker 0


def _result(sim: Simulation) -> dict[str, Any]:
    eng = sim.engine
    return {"traces": eng.node_traces(), "dropped": dict(eng.dropped),
            **{name: getattr(eng, name) for name in _COUNTERS},
            "steps": eng.steps - eng.world_steps}


def _merge(sim: Simulation, results: list[dict[str, Any]], wall: float,
           workers: int) -> dict[str, Any]:
    """Worker 0's report with every worker's counters and traces folded in."""
    eng = sim.engine
    sim._count_agents()
    for r in results:
        eng.remote_traces.update(r["traces"])
        for name in _COUNTERS:
            setattr(eng, name, getattr(eng, name) + r[name])
        for reason, n in r["dropped"].items():
            eng.dropped[reason] = eng.dropped.get(reason, 0) + n
    report = sim.report(wall)
    report["workers"] = workers
    return report
