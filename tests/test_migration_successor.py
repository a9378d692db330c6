"""Rendezvous successor choice: same answer from any view that agrees on the top."""

from __future__ import annotations

import random

from keepmesh.protocol.migration.successor import (
    choose_standbys,
    choose_successor,
    hrw_score,
    rank,
)


def _ids(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(n)]


def test_order_of_candidates_does_not_matter() -> None:
    nodes = _ids(20)
    shuffled = nodes[:]
    random.Random(2).shuffle(shuffled)
    for k in ("a" * 32, "b" * 32, "0" * 32):
        assert choose_successor(k, nodes) == choose_successor(k, shuffled)


def test_views_that_differ_elsewhere_agree_on_the_successor() -> None:
    rng = random.Random(3)
    nodes = _ids(30)
    keep = "1" * 32
    top = choose_successor(keep, nodes)
    for _ in range(50):
        view = [n for n in nodes if n == top or rng.random() < 0.5]
        assert choose_successor(keep, view) == top


def test_removing_the_top_moves_only_its_keeps() -> None:
    nodes = _ids(10)
    keeps = [f"{i:032x}" for i in range(200)]
    before = {k: choose_successor(k, nodes) for k in keeps}
    gone = nodes[0]
    after = {k: choose_successor(k, nodes[1:]) for k in keeps}
    changed = [k for k in keeps if before[k] != after[k]]
    assert changed and all(before[k] == gone for k in changed)
    # spread: no node wins most keeps
    wins = [list(before.values()).count(n) for n in nodes]
    assert max(wins) < 60


def test_empty_and_standbys() -> None:
    assert choose_successor("a" * 32, []) is None
    nodes = _ids(6)
    host = rank("a" * 32, nodes)[0]
    sb = choose_standbys("a" * 32, nodes, 2, exclude=[host])
    assert len(sb) == 2 and host not in sb and sb == rank("a" * 32, nodes)[1:3]
    assert choose_standbys("a" * 32, nodes, 0) == []
    assert hrw_score("a" * 32, nodes[0]) != hrw_score("b" * 32, nodes[0])
