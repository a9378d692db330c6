"""Where each keep runs, and the fencing rule that leaves one copy.

A `Location` (keep -> host, address, epoch, standbys, last checkpoint) is
signed by the host it names, so only a member can claim to run a keep, and
spreads by gossip. The epoch is the keep's fencing token: every move
(failover, drain, trust loss) raises it by one.

Order between two records for one keep (`supersedes`):

1. higher epoch wins;
2. same epoch, different hosts (two successors promoted concurrently from
   views that briefly disagreed): the host with the higher rendezvous score
   for the keep wins, the same ranking every member uses to pick the
   successor, so the copy most members expected survives;
3. same epoch and host: the higher `version` (the host's own refreshes).

The rule: a host that learns a record superseding its own for a keep it runs
stops its copy. It does not merge: the losing copy's state since the fork is
kept aside as a fenced checkpoint (reported to the owner), never folded into
the survivor. Any member can evaluate the order, so the two copies of a
split converge as soon as the winner's record reaches the loser.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import ProtocolError, VerificationError
from ..membership.signing import RecordSigner, RecordVerifier
from ..wire import decode_payload, encode_payload
from .messages import Location, LocationStatement
from .successor import hrw_score


class StaleEpoch(ProtocolError):
    """A message addressed to a keep at an epoch that is not the one running here
    (RPC code `stale_epoch`): the keep moved (or this copy was fenced). The sender
    re-resolves where the keep runs (`migrate.where`, or the location it is sent)
    and retries there; nothing was served."""

    code = "stale_epoch"


MAX_KEEPS_TRACKED = 100_000
"""Bound on the location table (a hostile member cannot grow it without limit)."""


def sign_location(signer: RecordSigner, statement: LocationStatement) -> Location:
    """Sign `statement` as its host; refuses to sign for another host."""
    if statement.host != signer.node_id:
        raise ProtocolError("migrate.location: a host signs only its own location")
    statement.validate()
    sig = signer.sign(encode_payload(statement))
    return Location(
        keep=statement.keep, owner=statement.owner, host=statement.host, address=statement.address,
        epoch=statement.epoch, version=statement.version, standbys=statement.standbys,
        checkpoint_seq=statement.checkpoint_seq, checkpoint_at=statement.checkpoint_at,
        state=statement.state, signature=sig)


def verify_location(verifier: RecordVerifier, loc: Location) -> None:
    """Raise VerificationError unless the record is signed by the host it names."""
    if not verifier.verify(loc.host, encode_payload(loc.statement()), loc.signature):
        raise VerificationError("migrate.location: signature does not verify for its host")


def decode_location(data: bytes, verifier: RecordVerifier) -> Location:
    """Decode and verify a gossiped location (bounded, typed, signed)."""
    msg = decode_payload(data, 4096, (Location,))
    assert isinstance(msg, Location)
    verify_location(verifier, msg)
    return msg


def order_key(loc: Location) -> tuple[int, int, bytes, int]:
    """Total order of records for one keep; see the module docstring."""
    return (loc.epoch, hrw_score(loc.keep, loc.host), loc.host, loc.version)


def supersedes(a: Location, b: Location) -> bool:
    """True when `a` wins over `b` (same keep)."""
    if a.keep != b.keep:
        raise ValueError("records of different keeps are not ordered")
    return order_key(a) > order_key(b)


@dataclass(frozen=True)
class Learned:
    """The outcome of learning one record: did it change the best-known location?"""

    location: Location
    previous: Location | None
    changed: bool

    @property
    def moved(self) -> bool:
        """The keep now runs on a different host or at a different epoch."""
        p = self.previous
        return self.changed and (p is None or p.host != self.location.host
                                 or p.epoch != self.location.epoch)


class LocationTable:
    """This member's view of where every keep runs (best record per keep).

    Indexed by host as well (`_by_host`, kept in step with `_best` by `learn` and
    `forget`): why: a send to a member membership does not know is addressed from a
    record it signed, and that lookup ran on every such send; scanning the whole table
    (up to MAX_KEEPS_TRACKED records) let an attested non-member make each send to it
    cost O(table). `address_of` is O(1); `hosted_by` costs the host's own records.
    """

    def __init__(self, max_keeps: int = MAX_KEEPS_TRACKED) -> None:
        self._best: dict[str, Location] = {}
        # host -> {keep: order of first insertion into _best}; hosted_by lists a host's
        # records in table order (as the scan it replaces did), so outputs stay the same
        self._by_host: dict[bytes, dict[str, int]] = {}
        self._order: dict[str, int] = {}
        self._next = 0
        self.max_keeps = max_keeps

    def learn(self, loc: Location) -> Learned:
        """Keep `loc` if it supersedes what we hold; the caller verified its signature."""
        prev = self._best.get(loc.keep)
        if prev is not None and not supersedes(loc, prev):
            return Learned(prev, prev, False)
        if prev is None and len(self._best) >= self.max_keeps:
            raise ProtocolError(f"migrate: location table full ({self.max_keeps} keeps)")
        self._best[loc.keep] = loc
        if prev is None:
            self._order[loc.keep] = self._next
            self._next += 1
        elif prev.host != loc.host:
            self._unindex(prev)
        self._by_host.setdefault(loc.host, {})[loc.keep] = self._order[loc.keep]
        return Learned(loc, prev, True)

    def _unindex(self, loc: Location) -> None:
        mine = self._by_host.get(loc.host)
        if mine is not None:
            mine.pop(loc.keep, None)
            if not mine:
                del self._by_host[loc.host]

    def get(self, keep: str) -> Location | None:
        return self._best.get(keep)

    def forget(self, keep: str) -> None:
        loc = self._best.pop(keep, None)
        if loc is not None:
            self._unindex(loc)
            del self._order[keep]

    def hosted_by(self, host: bytes) -> Iterator[Location]:
        """The records naming `host`, in table order (O(its records), not O(table))."""
        mine = self._by_host.get(host)
        if not mine:
            return iter(())
        return iter([self._best[k] for k in sorted(mine, key=mine.__getitem__)])

    def address_of(self, host: bytes) -> str | None:
        """The address one of `host`'s own records gives (None: it signed none), O(1)."""
        mine = self._by_host.get(host)
        if not mine:
            return None
        return self._best[next(iter(mine))].address

    def __iter__(self) -> Iterator[Location]:
        return iter(list(self._best.values()))

    def __len__(self) -> int:
        return len(self._best)

    def is_current(self, keep: str, epoch: int) -> bool:
        """Is a message addressed to `keep` at `epoch` for the current copy?

        Messages carrying an older epoch are answered with `migrate.fenced`
        (the current location) instead of being served.
        """
        best = self._best.get(keep)
        return best is None or epoch >= best.epoch
