"""Budgets a single peer cannot exceed, expiring bans, and log lines that cannot flood.

Why here: aioquic has no backpressure (it returns receive credit before the
application reads), so every byte a peer makes us hold must be counted by us,
per connection and in total, and a peer that keeps misbehaving must cost us
less and less. The numbers are specified in specs/wire.md ("Limits").
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

# Inbound admission defaults (specs/wire.md "Limits"); an operator may change them
# within the bounds below with the agent config's [limits] table (AdmissionLimits).
MAX_CONNECTIONS = 512
MAX_CONNECTIONS_PER_HOST = 64
MAX_HANDSHAKES = 128
MAX_HANDSHAKES_PER_HOST = 16
# Upper bounds an operator can raise them to: every connection costs memory (about
# 0.1-0.2 MB of session state) and every handshake in progress costs CPU, so even a
# configured limit must stay a limit.
CONNECTIONS_CEILING = 16384
HANDSHAKES_CEILING = 1024


class LimitsError(ValueError):
    """A [limits] value is out of its bounds; str() is the one-line reason."""


@dataclass
class AdmissionLimits:
    """How many inbound QUIC connections and handshakes this agent admits, in total
    and per source IP address.

    Why configurable: the per-source limit exists so that one address cannot take
    every slot, but a local mesh of more than 64 agents on one loopback address (or
    many agents behind one NAT) is one "source" by design, and would be refused
    past the 64th. The totals stay bounded (CONNECTIONS_CEILING,
    HANDSHAKES_CEILING) and a per-source limit can never exceed its total.
    """

    connections: int = MAX_CONNECTIONS
    connections_per_source: int = MAX_CONNECTIONS_PER_HOST
    handshakes: int = MAX_HANDSHAKES
    handshakes_per_source: int = MAX_HANDSHAKES_PER_HOST

    BOUNDS: ClassVar[dict[str, int]] = {
        "connections": CONNECTIONS_CEILING, "connections_per_source": CONNECTIONS_CEILING,
        "handshakes": HANDSHAKES_CEILING, "handshakes_per_source": HANDSHAKES_CEILING}

    @classmethod
    def from_table(cls, table: dict[str, Any], where: str,
                   base: AdmissionLimits | None = None) -> AdmissionLimits:
        """Values from a TOML table (unknown keys, wrong types and out-of-range values
        are refused with one line naming `where` and the key), over `base`."""
        limits = AdmissionLimits(**vars(base)) if base is not None else AdmissionLimits()
        for key, value in table.items():
            ceiling = cls.BOUNDS.get(str(key))
            if ceiling is None:
                raise LimitsError(f"{where}: unknown key 'limits.{str(key)[:40]}'")
            setattr(limits, key, bounded_int(value, f"{where}: limits.{key}", ceiling))
        limits.check(where)
        return limits

    def check(self, where: str) -> None:
        for key, ceiling in self.BOUNDS.items():
            bounded_int(getattr(self, key), f"{where}: limits.{key}", ceiling)
        if self.connections_per_source > self.connections:
            raise LimitsError(f"{where}: limits.connections_per_source "
                              f"({self.connections_per_source}) exceeds limits.connections "
                              f"({self.connections})")
        if self.handshakes_per_source > self.handshakes:
            raise LimitsError(f"{where}: limits.handshakes_per_source "
                              f"({self.handshakes_per_source}) exceeds limits.handshakes "
                              f"({self.handshakes})")


# QUIC's minimum datagram size (RFC 9000 §14) and the largest keepmesh sends (below
# aioquic's 2-byte packet length field and macOS's 16,384-byte loopback MTU).
MIN_DATAGRAM_SIZE = 1200
MAX_DATAGRAM_SIZE = 16000


@dataclass
class TransportSettings:
    """[transport] max_datagram_size: the UDP payload size an operator vouches for on
    the paths between its agents (a known LAN, e.g. 1472 on 1500-byte Ethernet).

    Why an operator's word: aioquic does no path-MTU discovery, so a size above QUIC's
    1200 is safe only where the whole path is known to carry it; a router further on
    with a smaller MTU would drop the packets and stall the connection. Unset: 1200 to
    every peer that is not on a loopback address (specs/wire.md "Datagram size").
    """

    max_datagram_size: int | None = None

    @classmethod
    def from_table(cls, table: dict[str, Any], where: str) -> TransportSettings:
        settings = TransportSettings()
        for key, value in table.items():
            if key != "max_datagram_size":
                raise LimitsError(f"{where}: unknown key 'transport.{str(key)[:40]}'")
            if not isinstance(value, int) or isinstance(value, bool) or \
                    not MIN_DATAGRAM_SIZE <= value <= MAX_DATAGRAM_SIZE:
                raise LimitsError(f"{where}: transport.max_datagram_size: expected an integer "
                                  f"in [{MIN_DATAGRAM_SIZE}, {MAX_DATAGRAM_SIZE}]")
            settings.max_datagram_size = value
        return settings


def bounded_int(value: object, where: str, ceiling: int) -> int:
    """An integer in [1, ceiling] (a digit string is accepted, for flags); else LimitsError."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 9:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= ceiling:
        raise LimitsError(f"{where}: expected an integer in [1, {ceiling}]")
    return value


class Budget:
    """A byte (or slot) count with a ceiling, optionally nested in a parent budget.

    `take` either takes the whole amount from this budget and every parent, or
    nothing; `give` returns it. Keeping the count exact is the caller's job:
    every take has one give (tests check the counters return to zero).
    """

    def __init__(self, limit: int, parent: Budget | None = None) -> None:
        self.limit = limit
        self.parent = parent
        self.used = 0

    def fits(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        return self.parent is None or self.parent.fits(n)

    def take(self, n: int) -> bool:
        if not self.fits(n):
            return False
        budget: Budget | None = self
        while budget is not None:
            budget.used += n
            budget = budget.parent
        return True

    def close(self) -> None:
        """Return everything to the parents and detach (the owner is gone): later
        gives from its stragglers then touch only this budget."""
        if self.parent is not None:
            self.parent.give(self.used)
        self.parent = None

    def give(self, n: int) -> None:
        budget: Budget | None = self
        while budget is not None:
            budget.used = max(0, budget.used - n)
            budget = budget.parent


@dataclass
class _Record:
    failures: deque[float] = field(default_factory=deque)
    banned_until: float = 0.0


class BanList:
    """Source addresses that keep violating the protocol are ignored for a while.

    Only failures on *validated* paths count (a completed QUIC handshake proves
    the source address), so nobody can get a third party banned by spoofing its
    address. Bans expire; the table is bounded (oldest entries go first).
    """

    def __init__(self, threshold: int, window_s: float, ban_s: float,
                 max_entries: int = 4096) -> None:
        self.threshold = threshold
        self.window_s = window_s
        self.ban_s = ban_s
        self.max_entries = max_entries
        self._table: dict[str, _Record] = {}

    def banned(self, host: str, now: float) -> bool:
        rec = self._table.get(host)
        if rec is None or rec.banned_until <= now:
            return False
        return True

    def failure(self, host: str, now: float) -> bool:
        """Count one violation; True when it starts a ban."""
        rec = self._table.pop(host, None) or _Record()
        self._table[host] = rec  # most recent last: eviction drops the stalest
        while rec.failures and rec.failures[0] < now - self.window_s:
            rec.failures.popleft()
        rec.failures.append(now)
        while len(self._table) > self.max_entries:
            del self._table[next(iter(self._table))]
        if len(rec.failures) >= self.threshold and rec.banned_until <= now:
            rec.banned_until = now + self.ban_s
            rec.failures.clear()
            return True
        return False


class RateLimitedLog:
    """At most `burst` lines per interval for one kind of event, then one summary line.

    A flood of failures (garbage handshakes, rejected channels) must not turn
    into a flood of log lines: the operator sees the first few reasons and a
    count of the rest, once per interval.
    """

    def __init__(self, logger: logging.Logger, *, interval_s: float = 10.0,
                 burst: int = 5) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.burst = burst
        self._clock = time.monotonic
        self._window_start = -1e18
        self._logged = 0
        self._suppressed = 0
        self._last = ""

    def warning(self, msg: str, *args: object) -> None:
        now = self._clock()
        if now - self._window_start >= self.interval_s:
            if self._suppressed:
                self.logger.warning("%d more like this in the last %.0f s (last: %s)",
                                    self._suppressed, self.interval_s, self._last)
            self._window_start = now
            self._logged = 0
            self._suppressed = 0
        if self._logged < self.burst:
            self._logged += 1
            self.logger.warning(msg, *args)
        else:
            self._suppressed += 1
            self._last = (msg % args) if args else msg


class RateWindow:
    """Events in the last second (two fixed one-second buckets, linearly blended):
    cheap enough to consult for every datagram."""

    def __init__(self) -> None:
        self._start = 0.0
        self._current = 0
        self._previous = 0

    def rate(self, now: float) -> float:
        self._roll(now)
        weight = max(0.0, 1.0 - (now - self._start))
        return self._previous * weight + self._current

    def hit(self, now: float) -> None:
        self._roll(now)
        self._current += 1

    def _roll(self, now: float) -> None:
        elapsed = now - self._start
        if elapsed >= 1.0:
            adjacent = elapsed < 2.0
            self._previous = self._current if adjacent else 0
            self._current = 0
            self._start = now - (elapsed % 1.0) if adjacent else now
