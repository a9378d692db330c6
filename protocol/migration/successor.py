"""Who acts for an orphaned keep: rendezvous (highest random weight) hashing.

Why HRW: every member must name the same successor without talking, from a
view that may differ briefly from its neighbours'. With rendezvous hashing a
candidate's score depends only on (keep, candidate), never on the rest of
the set, so two views that agree on the top-scoring eligible candidate agree
on the successor whatever else differs, and a change to the set only moves
the keeps whose top choice joined or left (minimal disruption). Remaining
disagreement (one view still thinks the top choice is alive) is resolved by
the fencing rule in `location`, not here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

_DOMAIN = b"keepmesh-migration-hrw-v1\x00"


def hrw_score(keep: str, node_id: bytes) -> int:
    """The weight of `node_id` for `keep`: a 64-bit hash of both, nothing else."""
    h = hashlib.blake2b(_DOMAIN + keep.encode() + b"\x00" + node_id, digest_size=8).digest()
    return int.from_bytes(h, "big")


def rank(keep: str, candidates: Iterable[bytes]) -> list[bytes]:
    """Candidates ordered best first (score descending, node id as the final tie-break)."""
    return sorted(set(candidates), key=lambda n: (hrw_score(keep, n), n), reverse=True)


def choose_successor(keep: str, candidates: Iterable[bytes]) -> bytes | None:
    """The one member that should restore `keep`, or None when no candidate is eligible.

    `candidates` must already be filtered by the caller's view: live, trusted,
    satisfying the deployment's policy and holding a checkpoint (a standby).
    """
    ranked = rank(keep, candidates)
    return ranked[0] if ranked else None


def choose_standbys(keep: str, candidates: Iterable[bytes], k: int,
                    exclude: Iterable[bytes] = ()) -> list[bytes]:
    """The `k` best-ranked eligible candidates, never the host itself (`exclude`).

    Standbys chosen by the same ranking as successors means the next
    successor is the standby most members already expect.
    """
    banned = set(exclude)
    return [n for n in rank(keep, candidates) if n not in banned][:max(0, k)]
