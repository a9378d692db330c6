"""The simulator's driver for MeshNode: carries out effects in virtual time, decides nothing.

Why an adapter with the engine's face: simulations/engine.py pumps any object
offering ``receive(data, src, src_id, now)``, ``handle_timer``, ``get_timer``,
``next_event`` and ``datagrams_to_send`` (so it can also run a fake protocol in
its own tests). This wraps one MeshNode behind that face:

- `Send` effects are buffered and handed to the engine's network;
- `RequestAttestation` and every event go to the engine's event hook (the
  Simulation answers attestation requests from its simulated TEE world via
  `complete`, exactly as the agent answers them from its verifier);
- `StartKeep`/`StopKeep` update a simulated keep table and complete at once;
- `Persist` goes to a dict that survives a simulated crash (the disk).

Ordering is MeshNode's (see protocol/node.py), so membership-only runs keep
the trace hashes they had before the seam.

Object mode (`object_mode=True`): the driver switches on Membership's
`handover` table (id of each sent bytes object -> the message equal to decoding
them) and exposes it to the engine as `handover`; a delivery that carries such
an object passes it to `MeshNode.receive(..., decoded)`, which skips decoding.
The bytes are still built, sized and delivered as in byte mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keepmesh.protocol.effects import (
    KeepLocated,
    KeepStarted,
    KeepStopped,
    Output,
    Persist,
    PlacementDone,
    PlacementFailed,
    Send,
    StartKeep,
    StopKeep,
)
from keepmesh.protocol.node import PERSIST_INCARNATION, MeshNode


class SimDisk:
    """What a simulated agent persisted; kept by the Simulation across crashes."""

    def __init__(self) -> None:
        self.values: dict[str, int | str | bytes] = {}

    @property
    def incarnation(self) -> int:
        v = self.values.get(PERSIST_INCARNATION, 0)
        return v if isinstance(v, int) else 0


class SimMeshDriver:
    """One simulated agent's I/O shell around its MeshNode."""

    __slots__ = ("node", "disk", "keeps", "clock", "observer", "counters", "migration",
                 "_sends", "handover", "receive", "handle_timer", "get_timer")

    def __init__(self, node: MeshNode, clock: Callable[[], float],
                 disk: SimDisk | None = None, object_mode: bool = False) -> None:
        self.node = node
        # object mode: the engine pops each send's decoded twin from this table
        self.handover: dict[int, Any] | None = None
        if object_mode:
            self.handover = node.membership.handover = {}
        self.clock = clock  # the engine's virtual now
        self.disk = disk if disk is not None else SimDisk()
        # (keep_id, epoch) -> memory_mb: the keeps this simulated host runs
        self.keeps: dict[tuple[str, int], int] = {}
        # sees keep and placement outputs (the Simulation's bookkeeping and invariants)
        self.observer: Callable[[SimMeshDriver, Output], None] | None = None
        # placement messages sent ("place": negotiation, "where": location gossip),
        # shared by every driver of a run so crashes do not lose counts
        self.counters: dict[str, int] | None = None
        # carries out migration's effects in the simulated world (True: it was one)
        self.migration: Callable[[SimMeshDriver, object], bool] | None = None
        self._sends: list[Send] = []
        # The engine calls these once per event: the node's own methods, not wrappers
        # (the engine's receive face has MeshNode.receive's argument order for this).
        self.receive: Callable[..., None] = node.receive
        self.handle_timer: Callable[[float], None] = node.handle_timer
        self.get_timer: Callable[[], float | None] = node.get_timer

    # ----------------------------------------------------------- engine face

    def next_event(self) -> Any:
        """The next event (or attestation request) for the engine's hook; effects that
        need no decision from the world are carried out here on the way."""
        node = self.node
        while True:
            item: Output | None = node.next_effect()
            if item is None:
                return None
            if isinstance(item, Send):
                self._sends.append(item)
                if self.counters is not None and item.data[3:9] == b"place.":
                    key = "where" if item.data[3:14] == b"place.where" else "place"
                    self.counters[key] = self.counters.get(key, 0) + 1
            elif isinstance(item, Persist):
                self.disk.values[item.key] = item.value
            elif isinstance(item, StartKeep):
                if self.observer is not None:
                    self.observer(self, item)
                self.keeps[(item.keep_id, item.epoch)] = item.memory_mb
                node.complete(KeepStarted(item.keep_id, item.epoch), self.clock())
            elif isinstance(item, StopKeep):
                self.keeps.pop((item.keep_id, item.epoch), None)
                node.complete(KeepStopped(item.keep_id, item.epoch), self.clock())
            elif isinstance(item, PlacementDone | PlacementFailed | KeepLocated):
                if self.observer is not None:
                    self.observer(self, item)
            elif self.migration is not None and self.migration(self, item):
                continue
            else:
                return item

    def datagrams_to_send(self) -> list[Send]:
        out, self._sends = self._sends, []
        return out

    # ----------------------------------------------------------- queries

    def alive_ids(self) -> set[bytes]:
        ids: set[bytes] = self.node.alive_ids()
        return ids

    @property
    def record(self) -> Any:
        return self.node.record
