"""The README's walk-through works as written: every command, literally, in order.

Only the ports (free ones instead of 7401/7402) and the working directory
(a temp dir) differ from what a newcomer types. See tests/walkthrough.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from walkthrough import REPO, commands, free_port, run_page, sh_blocks

README = (REPO / "README.md").read_text()


def walkthrough_section() -> str:
    start = README.index("## Walk-through")
    end = README.index("\n## ", start + 1)
    return README[start:end]


def test_walkthrough_is_extracted() -> None:
    """The extraction sees the commands the page shows (guards the parser, not the agent)."""
    cmds = [c for b in sh_blocks(walkthrough_section()) for c in commands(b)]
    assert any(c.startswith("keepmesh agent --config agent-a.toml") for c in cmds)
    assert any(c.startswith("cat > agent-a.toml <<EOF") and c.endswith("\nEOF") for c in cmds)
    assert any(c.startswith("KEEP=$(keepmesh deploy examples/counter -q") for c in cmds)
    deploy = next(c for c in cmds if c.startswith("KEEP="))
    assert "\\" not in deploy and "--root sim-root/ark.pem)" in deploy


@pytest.mark.slow
def test_readme_walkthrough_runs(tmp_path: Path) -> None:
    ports = {"7401": str(free_port()), "7402": str(free_port())}
    walk = run_page(walkthrough_section(), tmp_path, ports)
    try:
        by_cmd = {r.command: r for r in walk.results}
        calls = [r for r in walk.results if r.command.startswith('keepmesh call "$KEEP" inc')]
        assert [r.stdout.strip() for r in calls] == ["1", "2"]
        peers = next(r for c, r in by_cmd.items() if c.startswith("keepmesh peers"))
        assert isinstance(json.loads(peers.stdout), list)
        version = next(r for c, r in by_cmd.items() if c == "keepmesh --version")
        assert version.stdout.startswith("keepmesh ")
        verify = next(r for c, r in by_cmd.items() if c.startswith("keepmesh attest verify"))
        assert "verified:     yes (sev-snp" in verify.stdout
        members = next(r for c, r in by_cmd.items() if c.startswith("keepmesh members"))
        assert "zone=edge-1" in members.stdout and "zone=edge-2" in members.stdout and members.stdout.splitlines()[0].startswith("NAME")
        keeps = next(r for c, r in by_cmd.items() if c.startswith("keepmesh keeps"))
        assert keeps.stdout.splitlines()[0].split()[:2] == ["KEEP", "NAME"]
        assert "trace_hash" in next(r for c, r in by_cmd.items()
                                    if c.startswith("keepmesh simulate")).stdout
        # The sim TEE is labelled loudly at start.
        assert "INSECURE" in walk.agent_log(0)
    finally:
        walk.close()
