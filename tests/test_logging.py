"""Agent logs: JSON lines that parse, no duplicated lines, libraries quiet, -v adds events."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_proc import AgentProc
from keepmesh.agent import logs


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """logs.setup() configures the process; put pytest's logging back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quic = logging.getLogger("quic").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("quic").setLevel(quic)
    logging.captureWarnings(False)


def capture(fmt: str, verbose: bool) -> io.StringIO:
    buf = io.StringIO()
    logs.setup(fmt, verbose, stream=buf)
    return buf


def test_json_lines_carry_time_level_event_fields() -> None:
    buf = capture("json", False)
    logging.getLogger("keepmesh.agent").info("peer %s at %s", "ab", "1.2.3.4:1\nx",
                                             extra={"event": "peer.attested",
                                                    "fields": {"peer": "ab"}})
    logging.getLogger("keepmesh.rpc").warning("no event given")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert {"time", "level", "event", "message"} <= first.keys()
    assert first["event"] == "peer.attested" and first["peer"] == "ab"
    assert first["level"] == "info" and first["time"].endswith("Z")
    assert "\n" not in first["message"]  # a newline in a value cannot forge a second line
    assert second["event"] == "rpc.log" and second["level"] == "warning"


def test_library_warnings_are_debug_and_hidden_without_v() -> None:
    buf = capture("text", False)
    logging.getLogger("quic").warning("[abc] packet from a stranger")
    logging.getLogger("keepmesh.agent").info("ours")
    assert "stranger" not in buf.getvalue() and "ours" in buf.getvalue()
    buf = capture("text", True)
    logging.getLogger("quic").warning("[abc] packet from a stranger")
    assert "DEBUG quic: [abc] packet from a stranger" in buf.getvalue()


def test_records_are_not_changed_for_other_handlers() -> None:
    """Demotion is in our output only: another handler still sees a library's WARNING."""
    seen: list[int] = []

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.levelno)

    capture("text", False)
    logging.getLogger().addHandler(Spy())
    logging.getLogger("some.library").warning("careful")
    assert seen == [logging.WARNING]


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError):
        logs.setup("xml")


@pytest.mark.slow
def test_real_agent_json_logs(tmp_path: Path, sim_root: Path) -> None:
    from walkthrough import free_port

    dead = f"127.0.0.1:{free_port()}"  # a seed nobody answers on
    a = AgentProc(tmp_path / "a", sim_root, "--log-format", "json")
    b = AgentProc(tmp_path / "b", sim_root, "--join", a.address, dead, "-v")
    try:
        a.wait_for('"event": "member.join"')
        b.wait_for("rpc swim.stream")  # -v shows protocol events (RPCs served)
        b.wait_for(f"cannot reach {dead}")  # unreachable is not an attestation failure
    finally:
        b.stop()
        a.stop()
    lines = a.log().splitlines()
    docs = [json.loads(line) for line in lines]  # every line is one JSON object
    events = [d["event"] for d in docs]
    assert events.count("agent.started") == 1
    assert events.count("peer.attested") == 1  # both sides dialled: still one line
    assert "agent.insecure_tee" in events
    assert len(set(lines)) == len(lines)
    blog = b.log()
    assert sum("INFO" in line and "listening on" in line for line in blog.splitlines()) == 1
    assert "DEBUG channel: channel with" in blog
    assert "cannot attest" not in blog
