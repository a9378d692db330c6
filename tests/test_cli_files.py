"""Files a user names on the command line: a FIFO nothing writes to, /dev/zero or a pipe.

Every verb that reads a file (config, key, root, policy, evidence, topology, sweep)
answers in one line instead of waiting forever on a FIFO with no writer or reading
/dev/zero until memory runs out; a pipe with a writer (`<(...)`) is still read.
(Found by the CLI contract sweep: each of these hung or died with MemoryError.)
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from pathlib import Path

import pytest
from keepmesh.agent.cli import main

from keepmesh.files import NoWriter, read_at_most


def _run(argv: list[str], fifo: Path, timeout: float = 5.0) -> tuple[int, str]:
    """main(argv) in a thread; if it is still blocked after `timeout`, open the FIFO for
    writing (which releases a reader blocked in open()) and fail."""
    result: list[object] = []
    err = io.StringIO()

    def target() -> None:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                result.append(main(argv))
            except SystemExit as exit_:
                result.append(exit_.code)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail(f"{argv[:3]} blocked on a FIFO with no writer")
    code = result[0]
    return (code if isinstance(code, int) else 1), err.getvalue()


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path, 0o600)
    return path


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "owner.key"
    assert main(["keygen", str(path), "--json"]) == 0
    return path


def _argvs(fifo: Path, key: Path, sim_root: Path, tmp: Path) -> dict[str, list[str]]:
    f = str(fifo)
    agent = ["--tee", "sim", "--sim-root", str(sim_root), "--data-dir", str(tmp / "data"),
             "--listen", "127.0.0.1:0"]
    client = ["--agent", "127.0.0.1:9", "--key", str(key)]
    return {
        "attest evidence": ["attest", "verify", f],
        "attest --policy": ["attest", "verify", str(key), "--policy", f],
        "keygen --public": ["keygen", "--public", f],
        "client --key": ["status", "--agent", "127.0.0.1:9", "--key", f],
        "client --root": ["status", *client, "--root", f],
        "agent --config": ["agent", "--config", f, *agent],
        "agent --policy": ["agent", "--policy", f, *agent],
        "simulate": ["simulate", f],
        "sweep": ["sweep", f, "--workers", "1"],
    }


CASES = ["attest evidence", "attest --policy", "keygen --public", "client --key",
         "client --root", "agent --config", "agent --policy", "simulate", "sweep"]


@pytest.mark.parametrize("case", CASES)
def test_fifo_with_no_writer_is_one_line_not_a_hang(case: str, fifo: Path, key: Path,
                                                    sim_root: Path, tmp_path: Path) -> None:
    argv = _argvs(fifo, key, sim_root, tmp_path)[case]
    code, err = _run(argv, fifo)
    assert code == 1, err
    assert err.count("\n") == 1 and "nothing writing to it" in err, err


@pytest.mark.parametrize("argv", [["keygen", "--public", "/dev/zero"],
                                  ["agent", "--config", "/dev/zero"],
                                  ["simulate", "/dev/zero"]])
def test_dev_zero_is_refused_as_too_large(argv: list[str], fifo: Path) -> None:
    code, err = _run(argv, fifo)
    assert code == 1 and err.count("\n") == 1, err
    assert "large" in err, err


def test_read_at_most(tmp_path: Path, fifo: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 10)
    assert read_at_most(f, 100) == b"x" * 10
    assert read_at_most(f, 4) == b"x" * 5  # limit + 1: the caller sees it is too large
    with pytest.raises(IsADirectoryError):
        read_at_most(tmp_path, 10)
    with pytest.raises(FileNotFoundError):
        read_at_most(tmp_path / "missing", 10)
    with pytest.raises(NoWriter):
        read_at_most(fifo, 10)
    # a FIFO something writes to is read to its end (as `<(...)` is)
    r, w = os.pipe()
    os.write(w, b"hello")
    os.close(w)
    try:
        assert read_at_most(f"/proc/self/fd/{r}", 100) == b"hello"
    finally:
        os.close(r)
    # a writer that has not written yet is waited for
    w_fd = os.open(fifo, os.O_RDWR)  # Linux: a writer end that does not block to open

    def write_later() -> None:
        threading.Event().wait(0.2)
        os.write(w_fd, b"late")
        os.close(w_fd)

    threading.Thread(target=write_later, daemon=True).start()
    assert read_at_most(fifo, 100) == b"late"
