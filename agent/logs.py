"""Agent logging: a readable default, `--log-format json`, `-v`, quiet libraries.

Why one setup function: the agent, its services and its libraries all log
through `logging`; what operators see is decided once here.

- text (default): `2026-11-30T01:02:03Z INFO  agent: message` on stderr.
- json: one object per line: time (RFC 3339 UTC), level, event, logger,
  message, plus the record's structured `fields`. `event` is a stable name
  (e.g. "peer.attested") when the call site gives one (`extra={"event": ...,
  "fields": {...}}`), else "<logger>.log".
- Libraries (aioquic's "quic" logger, trio, asyncio...) are demoted to
  debug: their warnings are about one peer's packets, not the agent.
- `-v` turns on debug for keepmesh (protocol events: channels established
  and failed, RPCs served, membership changes) and for the libraries.
- Repeated failures are rate-limited where they are logged
  (agent/transport/limits.RateLimitedLog).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

FORMATS = ("text", "json")
_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {
    "message", "asctime", "event", "fields"}


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def _short(name: str) -> str:
    return name.removeprefix("keepmesh.") if name.startswith("keepmesh.") else name


def _ours(record: logging.LogRecord) -> bool:
    return record.name == "keepmesh" or record.name.startswith("keepmesh.")


def level_of(record: logging.LogRecord) -> str:
    """The level shown: a library's below-error records read as DEBUG (demoted)."""
    if not _ours(record) and record.levelno < logging.ERROR:
        return "DEBUG"
    return record.levelname


def event_of(record: logging.LogRecord) -> str:
    event = getattr(record, "event", None)
    if isinstance(event, str) and event:
        return event
    return f"{_short(record.name)}.log"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; never raises on odd field values."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _iso(record.created),
            "level": level_of(record).lower(),
            "event": event_of(record),
            "logger": record.name,
            "message": " ".join(record.getMessage().split()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                doc.setdefault(str(key), value)
        for key, value in vars(record).items():  # other `extra=` keys
            if key not in _STD_ATTRS and not key.startswith("_"):
                doc.setdefault(key, value)
        if record.exc_info and record.exc_info[0] is not None:
            doc["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = (f"{_iso(record.created)} {level_of(record):<5} {_short(record.name)}: "
                f"{' '.join(record.getMessage().split())}")
        if record.exc_info and record.exc_info[0] is not None:
            line += f" ({record.exc_info[0].__name__}: {record.exc_info[1]})"
        return line


class DemoteLibraries(logging.Filter):
    """Library records below ERROR are debug: shown (as DEBUG) only with `-v`.

    The record itself is not changed: other handlers (pytest's, an embedding
    application's) see it as the library logged it.
    """

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        return _ours(record) or self.verbose or record.levelno >= logging.ERROR


def setup(fmt: str = "text", verbose: bool = False, stream: TextIO | None = None) -> None:
    """Configure the root logger once for the agent process (replaces earlier handlers)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(DemoteLibraries(verbose))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # aioquic logs every TLS state and stream at debug through "quic": that is packet
    # tracing, not protocol events, so even -v only shows its warnings (as debug).
    logging.getLogger("quic").setLevel(logging.WARNING)
    logging.captureWarnings(True)  # warnings.warn from libraries -> "py.warnings" -> debug
