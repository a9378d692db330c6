"""Offence scores per sender that decay, and bans that expire (sans-IO, bounded).

Why scores rather than counts: some offences are proof of malice (a forged
signature, a message claiming another sender: weight 1), others are usually
malice but can happen to an honest member in a race (a `ping_req` for a member
we have not heard of yet, a malformed record from an older version: smaller
weights). A score that decays by one point per `decay_s` lets the rare honest
slip fade while a sustained attack crosses `threshold` and is banned. Bans
expire (`ban_s`, doubling for each repeat up to 8x) so a member that recovers,
or an address that is reused, is not shut out for ever. The table is keyed
by peer input (identities, addresses), so it is bounded: the least recently
offending key is forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict

FORGERY = 1.0          # bad signature on a record, leave or accusation; spoofed sender
INVALID_RECORD = 0.5   # a record that does not decode (malformed, non-canonical address)
UNFOUNDED = 0.25       # ping_req for a member we do not hold, or at another address
MAX_BAN_DOUBLINGS = 3


class _Entry:
    __slots__ = ("score", "at", "offences", "banned_until", "bans")

    def __init__(self, now: float) -> None:
        self.score = 0.0
        self.at = now
        self.offences = 0
        self.banned_until: float | None = None
        self.bans = 0


class Penalties:
    """Scores keyed by sender (an identity, or an address when there is none)."""

    def __init__(self, threshold: float, decay_s: float, ban_s: float,
                 max_keys: int = 4096) -> None:
        self.threshold = threshold
        self.decay_s = decay_s
        self.ban_s = ban_s
        self.max_keys = max_keys
        self._table: OrderedDict[bytes | str, _Entry] = OrderedDict()
        # No key is banned at or after this time (the latest ban's end ever set). Why:
        # every received message and gossip item asks `banned`; with no ban running the
        # answer needs no lookup.
        self.no_bans_from = 0.0

    def __len__(self) -> int:
        return len(self._table)

    def _decayed(self, entry: _Entry, now: float) -> None:
        if now > entry.at:
            entry.score = max(0.0, entry.score - (now - entry.at) / self.decay_s)
            entry.at = now

    def add(self, key: bytes | str, weight: float, now: float) -> float | None:
        """Count an offence; returns the ban's end if this offence started a ban."""
        entry = self._table.get(key)
        if entry is None:
            if len(self._table) >= self.max_keys:
                self._table.popitem(last=False)
            entry = self._table[key] = _Entry(now)
        else:
            self._table.move_to_end(key)
        self._decayed(entry, now)
        entry.score += weight
        entry.offences += 1
        if entry.score + 1e-9 >= self.threshold and not self.banned(key, now):
            entry.bans += 1
            entry.banned_until = now + self.ban_s * 2 ** min(entry.bans - 1, MAX_BAN_DOUBLINGS)
            entry.score = 0.0
            self.no_bans_from = max(self.no_bans_from, entry.banned_until)
            return entry.banned_until
        return None

    def banned(self, key: bytes | str, now: float) -> bool:
        if now >= self.no_bans_from:
            return False
        entry = self._table.get(key)
        return (entry is not None and entry.banned_until is not None
                and now < entry.banned_until)

    def banned_until(self, key: bytes | str) -> float | None:
        entry = self._table.get(key)
        return None if entry is None else entry.banned_until

    def offences(self, key: bytes | str) -> int:
        entry = self._table.get(key)
        return 0 if entry is None else entry.offences

    def score(self, key: bytes | str, now: float) -> float:
        entry = self._table.get(key)
        if entry is None:
            return 0.0
        self._decayed(entry, now)
        return entry.score
