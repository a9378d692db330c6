"""Offence scores and bans (protocol/membership/penalties.py)."""

from __future__ import annotations

from keepmesh.protocol.membership.penalties import Penalties


def test_ban_starts_at_threshold_and_expires() -> None:
    p = Penalties(threshold=2.0, decay_s=100.0, ban_s=10.0)
    assert not p.banned(b"a", 0.0)
    assert p.add(b"a", 1.0, 0.0) is None
    assert not p.banned(b"a", 0.0)
    assert p.add(b"a", 1.0, 0.0) == 10.0
    assert p.banned(b"a", 5.0) and not p.banned(b"b", 5.0)
    assert not p.banned(b"a", 10.0)


def test_no_bans_horizon_covers_every_running_ban() -> None:
    """`banned` answers without a lookup once every ban has ended: a ban that ends later
    than another keeps the horizon; an earlier one never pulls it back."""
    p = Penalties(threshold=1.0, decay_s=100.0, ban_s=10.0)
    assert p.no_bans_from == 0.0
    p.add(b"late", 1.0, 20.0)   # banned until 30
    p.add(b"early", 1.0, 0.0)   # banned until 10
    assert p.no_bans_from == 30.0
    assert p.banned(b"late", 25.0) and not p.banned(b"early", 25.0)
    assert not p.banned(b"late", 30.0)
    p.add(b"late", 1.0, 31.0)   # a repeat doubles: banned until 51
    assert p.banned(b"late", 50.0) and p.no_bans_from == 51.0
