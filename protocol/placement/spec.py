"""The `[placement]` table of keepmesh.toml: what the owner signs about where replicas go.

Why signed with the deployment: the entry agent and every host read the
requirements from the owner's signature, not from whoever relays them, so a
broker cannot relax "zone = factory-3" or the replica count.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from ..errors import ProtocolError
from ..wire import Message, Spec, mapping, message, s, u

MAX_REPLICAS = 16
MAX_LABELS = 16
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}\Z")  # \Z: "$" allows a final newline
_KEYS = {"replicas", "labels", "spread"}


@message
class PlacementSpec(Message):
    """replicas on distinct hosts; hard label constraints; optional spread label."""

    TYPE: ClassVar[str] = ""
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "replicas": u(8),
        "labels": mapping(s(64), s(128), max_len=MAX_LABELS),
        "spread": s(64, optional=True),
    }
    replicas: int
    labels: dict[str, str]
    spread: str | None = None

    def validate(self) -> None:
        if not 1 <= self.replicas <= MAX_REPLICAS:
            raise ProtocolError(f"field 'placement.replicas': {self.replicas} outside "
                                f"[1, {MAX_REPLICAS}]")
        for k in self.labels:
            if not _LABEL_KEY.match(k):
                raise ProtocolError(f"field 'placement.labels': bad label name {k[:40]!r}")
        if self.spread is not None and not _LABEL_KEY.match(self.spread):
            raise ProtocolError(f"field 'placement.spread': bad label name "
                                f"{self.spread[:40]!r}")
        if self.spread is not None and self.spread in self.labels:
            raise ProtocolError(f"field 'placement.spread': {self.spread!r} is pinned by "
                                "placement.labels, replicas cannot spread over it")


DEFAULT_PLACEMENT = PlacementSpec(replicas=1, labels={}, spread=None)


def parse_placement_table(value: Any, source: str = "keepmesh.toml") -> PlacementSpec:
    """Parse the TOML table; one line naming the field on anything wrong."""
    if not isinstance(value, dict):
        raise ProtocolError(f"{source}: field 'placement': expected a table")
    unknown = sorted(set(value) - _KEYS)
    if unknown:
        raise ProtocolError(f"{source}: unknown key 'placement.{str(unknown[0])[:40]}'")
    replicas = value.get("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool):
        raise ProtocolError(f"{source}: field 'placement.replicas': expected an integer")
    labels = value.get("labels", {})
    if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ProtocolError(f"{source}: field 'placement.labels': expected a table of strings")
    spread = value.get("spread")
    if spread is not None and not isinstance(spread, str):
        raise ProtocolError(f"{source}: field 'placement.spread': expected a label name")
    if replicas < 1 or replicas > MAX_REPLICAS:
        raise ProtocolError(f"{source}: field 'placement.replicas': {replicas} outside "
                            f"[1, {MAX_REPLICAS}]")
    fields: dict[str, Any] = {"replicas": replicas, "labels": dict(labels)}
    if spread is not None:
        fields["spread"] = spread
    try:
        return PlacementSpec.from_fields(fields, where=source)
    except ProtocolError as err:
        raise ProtocolError(err.reason) from None
