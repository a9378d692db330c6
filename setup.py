"""Map the repository's folders under one import root, `keepmesh`.

The layout keeps protocol/, agent/ and simulations/ at the top of the tree
(DESIGN.md), but installing them as top-level `protocol`/`agent` would clash
with other distributions, so each folder becomes `keepmesh.<folder>`.
The package list is computed so new subpackages need no edit here.
"""

from setuptools import find_namespace_packages, setup

ROOTS = {"keepmesh": "keepmesh", "keepmesh.protocol": "protocol",
         "keepmesh.agent": "agent", "keepmesh.simulations": "simulations"}

packages = ["keepmesh"]
package_dir = dict(ROOTS)
for pkg, folder in ROOTS.items():
    if pkg == "keepmesh":
        continue
    packages.append(pkg)
    # Namespace-aware, so data-only folders (attestation/roots, topologies) are
    # packages too and their files ship as package data without warnings.
    packages += [f"{pkg}.{sub}" for sub in find_namespace_packages(
        folder, exclude=["*__pycache__*"])]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"keepmesh.protocol.attestation.roots": ["*.pem"],
                  "keepmesh.simulations.topologies": ["*.toml"]},
    include_package_data=False,
)
