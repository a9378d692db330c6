"""The owner's `[migration]` table in keepmesh.toml (signed with the deployment).

```toml
[migration]
standbys = 1        # k hosts holding what a restart needs, default 1, 0..8
checkpoint_s = 5    # seconds between checkpoints, default 5, 0.5..3600
```

Unknown keys or impossible values fail with one line naming the field,
before any connection is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ProtocolError
from ..wire import Message, Spec, f, message, u
from .messages import MAX_STANDBYS

DEFAULT_STANDBYS = 1
DEFAULT_CHECKPOINT_S = 5.0
MIN_CHECKPOINT_S = 0.5
MAX_CHECKPOINT_S = 3600.0


@dataclass(frozen=True)
class MigrationSettings:
    standbys: int = DEFAULT_STANDBYS
    checkpoint_s: float = DEFAULT_CHECKPOINT_S

    def __post_init__(self) -> None:
        if not 0 <= self.standbys <= MAX_STANDBYS:
            raise ProtocolError(f"field 'migration.standbys': {self.standbys} outside "
                                f"[0, {MAX_STANDBYS}]")
        if not MIN_CHECKPOINT_S <= self.checkpoint_s <= MAX_CHECKPOINT_S:
            raise ProtocolError(f"field 'migration.checkpoint_s': {self.checkpoint_s} outside "
                                f"[{MIN_CHECKPOINT_S}, {MAX_CHECKPOINT_S:g}]")


@message
class MigrationSpec(Message):
    """`[migration]` as it travels inside the signed manifest (`Manifest.migration`).

    Why signed: the number of standbys and the checkpoint period decide how much
    state a crash can lose and how many hosts hold the key; a relay or a host
    must not be able to lower them. Absent means the defaults, and a manifest
    without it signs the same bytes as before the field existed.
    """

    TYPE: ClassVar[str] = ""
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "standbys": u(8),
        "checkpoint_s": f(MIN_CHECKPOINT_S, MAX_CHECKPOINT_S),
    }
    standbys: int
    checkpoint_s: float

    def validate(self) -> None:
        self.settings()  # the bounds, one line naming the field

    def settings(self) -> MigrationSettings:
        return MigrationSettings(standbys=self.standbys, checkpoint_s=self.checkpoint_s)


def spec_of(settings: MigrationSettings) -> MigrationSpec:
    return MigrationSpec(standbys=settings.standbys, checkpoint_s=settings.checkpoint_s)


def parse_migration(table: Any, source: str = "keepmesh.toml") -> MigrationSettings:
    """Validate a `[migration]` table (None or missing means the defaults)."""
    if table is None:
        return MigrationSettings()
    if not isinstance(table, Mapping):
        raise ProtocolError(f"{source}: field 'migration': expected a table")
    unknown = sorted(set(table) - {"standbys", "checkpoint_s"})
    if unknown:
        raise ProtocolError(f"{source}: unknown key 'migration.{str(unknown[0])[:40]}'")
    k = table.get("standbys", DEFAULT_STANDBYS)
    if not isinstance(k, int) or isinstance(k, bool):
        raise ProtocolError(f"{source}: field 'migration.standbys': expected int")
    c = table.get("checkpoint_s", DEFAULT_CHECKPOINT_S)
    if not isinstance(c, (int, float)) or isinstance(c, bool) or c != c:
        raise ProtocolError(f"{source}: field 'migration.checkpoint_s': expected a number")
    try:
        return MigrationSettings(standbys=k, checkpoint_s=float(c))
    except ProtocolError as err:
        raise ProtocolError(f"{source}: {err.reason}") from None
