"""docs/ works as written: every ```sh block runs, the config reference matches the code.

Blocks fenced as ```text are shown, not run (they need root, systemd, another
host, or show a failure's output); everything in ```sh runs literally with
tests/walkthrough.py (free ports instead of the page's, a temp working dir).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from keepmesh.agent import config
from walkthrough import REPO, free_port, run_page, sh_blocks

DOCS = REPO / "docs"
PAGES = ["edge-install.md", "deploy.md", "policies.md", "operate.md", "simulate.md",
         "config.md"]


def page(name: str) -> str:
    return (DOCS / name).read_text()


def test_every_job_has_a_page_linked_from_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    for name in PAGES:
        assert (DOCS / name).is_file(), name
        assert f"(docs/{name})" in readme, name


def test_config_reference_is_the_code() -> None:
    """docs/config.md embeds exactly the table generated from agent/config.py, and that
    table covers every key the parser accepts and every AgentConfig field."""
    fields = {f.name for f in dataclasses.fields(config.AgentConfig)}
    assert set(config.KEY_DOCS) == set(config._KEYS) == fields
    assert config.reference_markdown() in page("config.md")


def test_config_defaults_match_the_reference() -> None:
    cfg = config.AgentConfig()
    assert f'"{cfg.listen}"' == config.KEY_DOCS["listen"][1]
    assert f'"{cfg.tee}"' == config.KEY_DOCS["tee"][1]
    assert f'"{cfg.profile}"' == config.KEY_DOCS["profile"][1]
    assert f'"{cfg.log_format}"' == config.KEY_DOCS["log_format"][1]
    assert str(cfg.discover).lower() == config.KEY_DOCS["discover"][1]
    expected = config.SYSTEM_DATA_DIR if os.geteuid() == 0 else \
        Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share") / "keepmesh/agent"
    assert cfg.data_dir == expected


def test_the_example_config_parses(tmp_path: Path) -> None:
    text = page("config.md").split("```toml\n", 1)[1].split("```", 1)[0]
    text = text.replace("<hex ed25519 public key>", "00" * 32)
    path = tmp_path / "agent.toml"
    path.write_text(text)
    cfg = config.load_config(path)
    assert cfg.metrics == "127.0.0.1:9400" and cfg.labels == {"zone": "edge-1"}


def test_every_page_has_commands_or_says_why() -> None:
    for name in PAGES[:-1]:
        assert sh_blocks(page(name)), f"{name} has no command a test runs"


@pytest.mark.slow
@pytest.mark.parametrize("name,ports", [
    ("deploy.md", ("7411",)),
    ("operate.md", ("7421", "9421")),
    ("policies.md", ()),
    ("simulate.md", ()),
])
def test_page_runs(tmp_path: Path, name: str, ports: tuple[str, ...]) -> None:
    if name == "operate.md" and shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    walk = run_page(page(name), tmp_path, {p: str(free_port()) for p in ports})
    try:
        if name == "operate.md":
            health = next(r for r in walk.results if "healthz" in r.command)
            assert '"status": "ok"' in health.stdout
            scraped = next(r for r in walk.results if "/metrics" in r.command)
            assert "keepmesh_up" in scraped.stdout
        if name == "deploy.md":
            logs = next(r for r in walk.results if r.command.startswith('keepmesh logs "$HELLO"'))
            assert "hello from a keep" in logs.stdout
    finally:
        walk.close()


@pytest.mark.slow
def test_edge_install_builds_and_runs(tmp_path: Path) -> None:
    """`make dist` in a copy of the tree (tracked files; the shared venv linked in and
    left untouched: the copies keep mtimes older than its install stamp)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True,
                            text=True, check=False)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the copy is made from `git ls-files`")
    files = listed.stdout.splitlines()
    tree = tmp_path / "tree"
    stamp = REPO / ".venv" / ".installed"
    if not stamp.exists():
        pytest.skip("no installed venv (make venv)")
    for rel in files:
        src = REPO / rel
        if not src.is_file():
            continue
        dst = tree / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        old = stamp.stat().st_mtime - 3600
        os.utime(dst, (old, old))  # older than the stamp: make must not reinstall the venv
    walk = run_page(page("edge-install.md"), tree, {})
    try:
        assert (tree / "dist" / "keepmesh.pyz").is_file()
        assert list((tree / "dist").glob("keepmesh-*-py3-none-any.whl"))
        version = next(r for r in walk.results if "keepmesh.pyz --version" in r.command)
        assert version.stdout.startswith("keepmesh ")
    finally:
        walk.close()


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (REPO / "packaging" / "keepmesh.service").read_text()
    for needed in ("DynamicUser=yes", "StateDirectory=keepmesh", "Restart=on-failure",
                   "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert needed in unit
    # verify checks that ExecStart exists: point it at this checkout's keepmesh.
    exe = shutil.which("keepmesh") or str(REPO / ".venv" / "bin" / "keepmesh")
    copy = tmp_path / "keepmesh.service"
    copy.write_text(unit.replace("/usr/local/bin/keepmesh", exe))
    out = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "keepmesh.service" not in out.stderr, out.stderr  # no warnings about our unit
