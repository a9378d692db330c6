"""`python -m keepmesh.agent.cli` is the `keepmesh` command (used when no script is on PATH)."""

import sys

from keepmesh.agent.cli import main

sys.exit(main())
