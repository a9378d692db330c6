"""simulations/collector.py: the collector is quietened for a run and restored after."""

from __future__ import annotations

import gc

import pytest

from keepmesh.simulations.collector import THRESHOLDS, quiet_collector


def test_quiet_during_the_run_and_restored_after_even_on_error() -> None:
    before = gc.get_threshold()
    kept = [object() for _ in range(100)]
    with pytest.raises(RuntimeError):
        with quiet_collector():
            assert gc.get_threshold() == THRESHOLDS
            assert gc.get_freeze_count() >= len(kept)  # built before the run: out of sight
            raise RuntimeError("a run that fails")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_cycles_made_during_the_run_are_still_collected() -> None:
    with quiet_collector():
        a: list[object] = []
        a.append(a)
        del a
        assert gc.collect() >= 1
