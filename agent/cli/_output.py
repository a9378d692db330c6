"""How every verb prints: one JSON format, tables with headers, one-line errors.

Why one module: operators script against `--json` and read tables by eye;
both break when each verb formats its own way. JSON is always one document,
indented by 2, keys sorted. Tables go through rich, which adds colour and
box drawing only when stdout is a terminal (pipes get plain aligned text).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any


def print_json(doc: Any) -> None:
    """One JSON document on stdout, the same formatting for every verb."""
    print(json.dumps(doc, indent=2, sort_keys=True, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *,
                empty: str = "") -> None:
    """A table with a header row; `empty` is printed instead when there are no rows."""
    if not rows and empty:
        print(empty)
        return
    cells = [["-" if v is None else str(v) for v in row] for row in rows]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(box=None, header_style="bold", pad_edge=False)
        for h in headers:
            table.add_column(h, overflow="fold")
        for row in cells:
            table.add_row(*row, style=None)
        Console().print(table)
        return
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = [list(headers)] + cells
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def fmt_time(ts: Any) -> str:
    """A Unix timestamp as local ISO-8601 seconds, or '-' when absent."""
    try:
        value = float(ts)
    except (TypeError, ValueError):
        return "-"
    if value <= 0:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(value))
