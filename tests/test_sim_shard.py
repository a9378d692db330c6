"""simulations/shard.py: ownership, and metric calls replayed in one-process order."""

from __future__ import annotations

from typing import Any

import pytest

from keepmesh.simulations.shard import MetricsRecorder, Shard, replay


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.key = 0


class Log:
    """Stands in for Metrics: remembers the order calls arrive in."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.append((name, *args))


def test_every_agent_has_exactly_one_owner() -> None:
    shards = [Shard(k, 3) for k in range(3)]
    for idx in range(50):
        assert sum(s.owns(idx) for s in shards) == 1
    for bad in ((3, 3), (-1, 2), (0, 0)):
        with pytest.raises(ValueError):
            Shard(*bad)


def _script(rec: MetricsRecorder, clock: Clock, owner_of: int) -> None:
    """One action entry (update agent 1, whose hook fires, then a mark), then agent
    3's delivery (two events), as one process would make the calls. Every process
    runs the world code; hooks fire only where their agent lives."""
    clock.now, clock.key = 5.0, 7  # a world entry
    rec.update(1, 4 if owner_of == 1 else -1, 5.0, bytearray(b"\x01\x01"))
    if rec.shard.owns(1):
        rec.on_event(1, 2, "alive", 3, 5.0, None)
    rec.mark(5.0, "update 1")
    clock.now, clock.key = 5.0, (4 << 40) + 1  # agent 3's entry at the same instant
    if rec.shard.owns(3):
        rec.on_event(3, 2, "suspect", 3, 5.0, None)
        rec.attested(3, False)


def test_replay_restores_the_one_process_order() -> None:
    one_clock = Clock()
    one = MetricsRecorder(Shard(0, 1), one_clock, None)
    _script(one, one_clock, owner_of=1)
    expected = [(name, *args) for _, name, args in one.take()]
    # the one-process order, written out: world call, the hook it caused, world call,
    # then the agent entry's calls
    assert [c[0] for c in expected] == ["update", "on_event", "mark", "on_event", "attested"]

    batches = []
    for k in range(2):
        clock = Clock()
        rec = MetricsRecorder(Shard(k, 2), clock, None)
        _script(rec, clock, owner_of=1)
        batches.append(rec.take())
    # worker 0 recorded the mark only; worker 1 owns agents 1 and 3
    assert [c[1] for c in batches[0]] == ["mark"]
    assert [c[1] for c in batches[1]] == ["update", "on_event", "on_event", "attested"]
    for order in (batches, batches[::-1]):
        log = Log()
        replay(log, "live", order)  # type: ignore[arg-type]
        got = [c if c[0] != "on_event" else c[:-1] for c in log.calls]
        assert got == expected
        assert all(c[-1] == "live" for c in log.calls if c[0] == "on_event")


def test_a_non_owner_never_records_an_update_it_cannot_know() -> None:
    clock = Clock()
    rec = MetricsRecorder(Shard(0, 2), clock, None)
    rec.update(1, -1, 0.0, bytearray(2))
    assert rec.take() == []
