"""Build dist/keepmesh.pyz: keepmesh's own code as one executable file (`make dist`).

Why a zipapp and not a frozen binary: keepmesh's dependencies (cryptography,
aioquic, wasmtime, pynacl, msgpack) carry compiled code per platform, which
a zip cannot import from. The .pyz holds only keepmesh (protocol/, agent/,
simulations/ mapped under `keepmesh.`, with its pinned roots and topologies)
and runs with any Python 3.11+ that has the dependencies installed (a venv,
distro packages, or `pip install -r` of pyproject's list). For a self-
contained install use pipx with the wheel `make dist` also builds
(docs/edge-install.md). The source commit is recorded in
keepmesh/_build_info.py so `keepmesh version` can report it.

Usage: python packaging/build_zipapp.py OUT.pyz
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipapp
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"protocol": "protocol", "agent": "agent", "simulations": "simulations"}
DATA = ("*.pem", "*.toml")


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=False)
    except OSError:
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def build(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pkg = Path(tmp) / "keepmesh"
        # copyfile, not copy2: zip entries need mtimes after 1980, and build time is
        # what a reader of the archive expects anyway.
        shutil.copytree(ROOT / "keepmesh", pkg, ignore=shutil.ignore_patterns("__pycache__"),
                        copy_function=shutil.copyfile)
        for name, folder in FOLDERS.items():
            shutil.copytree(ROOT / folder, pkg / name, copy_function=shutil.copyfile,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (pkg / "_build_info.py").write_text(
            '"""Written by packaging/build_zipapp.py."""\n\n'
            f"COMMIT = {commit()!r}\n")
        (Path(tmp) / "__main__.py").write_text(
            "import sys\n\nfrom keepmesh.agent.cli import main\n\nsys.exit(main())\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        zipapp.create_archive(tmp, out, interpreter="/usr/bin/env python3", compressed=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: build_zipapp.py OUT.pyz")
    build(Path(sys.argv[1]))
