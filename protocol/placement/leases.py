"""A host's lease table: the only authority on what this host has promised.

Why leases: an entry agent reserves capacity before the owner ships the
package (late binding), and may crash between the two. A reservation that is
not committed within its lease expires and its memory and slot return, so a
crashed entry strands nothing. Records only advertise capacity; this table
decides, so two entry agents racing for the last slot cannot both win.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ProtocolError

MAX_LEASES = 4096  # reservations + running keeps one host tracks (bounded state)


class Refused(ProtocolError):
    """A reservation this host cannot honour; the reason names what is missing."""


@dataclass
class Lease:
    lease_id: int
    keep_id: str
    memory_mb: int
    expires_at: float | None  # None once committed (a running keep holds it until stopped)
    epoch: int = 0
    holder: bytes = b""  # the member that reserved it over the wire (b"": this agent)

    @property
    def committed(self) -> bool:
        return self.expires_at is None


class LeaseTable:
    """Capacity in MiB and keep slots; reservations expire, commitments do not."""

    def __init__(self, memory_mb: int, max_keeps: int) -> None:
        self.memory_mb = memory_mb
        self.max_keeps = max_keeps
        self.leases: dict[int, Lease] = {}
        self.draining = False
        self._next = 1

    # ------------------------------------------------------------ queries
    def used_mb(self) -> int:
        return sum(lease.memory_mb for lease in self.leases.values())

    def free_mb(self) -> int:
        return self.memory_mb - self.used_mb()

    def free_slots(self) -> int:
        return self.max_keeps - len(self.leases)

    def holds(self, keep_id: str) -> Lease | None:
        for lease in self.leases.values():
            if lease.keep_id == keep_id:
                return lease
        return None

    def next_expiry(self) -> float | None:
        times = [lease.expires_at for lease in self.leases.values()
                 if lease.expires_at is not None]
        return min(times) if times else None

    def check(self) -> None:
        """Invariant: never more promised than offered (the simulator checks every step)."""
        assert self.used_mb() <= self.memory_mb and len(self.leases) <= self.max_keeps, \
            f"over-committed: {self.used_mb()}/{self.memory_mb} MiB, " \
            f"{len(self.leases)}/{self.max_keeps} keeps"

    # ------------------------------------------------------------ changes
    def reserve(self, keep_id: str, memory_mb: int, now: float, ttl: float, *,
                holder: bytes = b"") -> Lease:
        """Promise `memory_mb` for `keep_id` until now + ttl, or raise Refused. `holder`:
        the member that asked (only it may commit or release the lease over the wire)."""
        self.expire(now)
        if self.draining:
            raise Refused("draining")
        if self.holds(keep_id) is not None:
            raise Refused(f"already holds keep {keep_id[:16]}")
        if len(self.leases) >= min(self.max_keeps, MAX_LEASES):
            raise Refused(f"no keep slot free ({self.max_keeps} in use)")
        if memory_mb > self.free_mb():
            raise Refused(f"{memory_mb} MiB asked, {self.free_mb()} MiB free")
        lease = Lease(self._next, keep_id, memory_mb, now + ttl, holder=holder)
        self._next += 1
        self.leases[lease.lease_id] = lease
        return lease

    def commit(self, lease_id: int, keep_id: str, epoch: int, now: float) -> Lease:
        """Turn a live reservation into a running keep's hold; refuse an expired one."""
        self.expire(now)
        lease = self.leases.get(lease_id)
        if lease is None or lease.keep_id != keep_id:
            raise Refused(f"no live reservation {lease_id} for keep {keep_id[:16]}")
        lease.expires_at = None
        lease.epoch = epoch
        return lease

    def release(self, lease_id: int) -> Lease | None:
        return self.leases.pop(lease_id, None)

    def release_keep(self, keep_id: str) -> Lease | None:
        lease = self.holds(keep_id)
        if lease is not None:
            del self.leases[lease.lease_id]
        return lease

    def expire(self, now: float) -> list[Lease]:
        gone = [lease for lease in self.leases.values()
                if lease.expires_at is not None and lease.expires_at <= now]
        for lease in gone:
            del self.leases[lease.lease_id]
        return gone
