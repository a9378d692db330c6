"""`keepmesh --version` and `keepmesh version [--json]` say exactly what is running."""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from keepmesh import __version__
from keepmesh.agent.cli import main
from keepmesh.protocol.wire import PROTOCOL_VERSION


def test_dash_dash_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out.strip()
    assert re.fullmatch(rf"keepmesh {re.escape(__version__)}( \([0-9a-f]{{12}}\))? "
                        rf"protocol {PROTOCOL_VERSION}", out), out


def test_version_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == __version__ and doc["protocol"] == PROTOCOL_VERSION
    assert doc["python"] == platform.python_version()
    assert doc["aioquic"] == "1.7.2" and doc["wasmtime"]
    commit = doc["commit"]
    repo = Path(__file__).resolve().parent.parent
    if (repo / ".git").exists():
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        assert commit == head
    else:
        assert commit is None or re.fullmatch("[0-9a-f]{40}", commit)


def test_version_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    out = capsys.readouterr().out
    for key in ("version", "commit", "protocol", "python", "aioquic", "wasmtime"):
        assert re.search(rf"^{key}\s+\S", out, re.M), key


def test_zipapp_reports_its_build_commit(tmp_path: Path) -> None:
    """The .pyz `make dist` builds carries the commit it was built from."""
    repo = Path(__file__).resolve().parent.parent
    out = tmp_path / "keepmesh.pyz"
    subprocess.run([sys.executable, str(repo / "packaging" / "build_zipapp.py"), str(out)],
                   check=True, capture_output=True)
    run = subprocess.run([sys.executable, str(out), "version", "--json"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=60)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["version"] == __version__
    if (repo / ".git").exists():
        assert doc["commit"] and re.fullmatch("[0-9a-f]{40}", doc["commit"])
