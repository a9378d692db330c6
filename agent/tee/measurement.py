"""The measurement a simulated TEE reports: a digest of the agent's own code.

Why: real SEV-SNP/TDX measure the launched image; the sim TEE has no
launcher, so it measures what it is actually running (the installed keepmesh
Python sources). Two agents built from the same tree report the same value,
and any edit to the code changes it, so policies that list accepted
measurements behave as they would on hardware.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

PACKAGES = ("keepmesh", "keepmesh.protocol", "keepmesh.agent")


def _package_dirs() -> list[tuple[str, Path]]:
    out = []
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            out.append((name, Path(location)))
    return out


def measure_sources(dirs: list[tuple[str, Path]]) -> bytes:
    """SHA-384 over (label/relative path, length, content) of every .py file, sorted.

    Subpackages that live in another listed package dir are walked under
    their own label only once, because each dir is walked on its own and the
    keepmesh root dir holds none of the mapped folders.
    """
    entries: list[tuple[str, Path]] = []
    for label, root in dirs:
        for path in root.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            entries.append((f"{label}/{path.relative_to(root).as_posix()}", path))
    entries.sort(key=lambda e: e[0])
    digest = hashlib.sha384()
    for rel, path in entries:
        content = path.read_bytes()
        name = rel.encode()
        digest.update(len(name).to_bytes(4, "big") + name)
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.digest()


@functools.lru_cache(maxsize=1)
def code_measurement() -> bytes:
    """48-byte SHA-384 measurement of the installed keepmesh sources (cached)."""
    return measure_sources(_package_dirs())
