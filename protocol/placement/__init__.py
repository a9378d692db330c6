"""Peer-to-peer keep placement (sans-IO): specs/placement.md.

One file per idea: spec.py (the signed [placement] table), requirements.py
(what a candidate must offer), leases.py (a host's lease table, the only
authority on its capacity), messages.py (wire), machine.py (the MeshNode
sub-machine: entry negotiation, host side, location gossip).
"""

from .leases import Lease, LeaseTable, Refused
from .machine import PlacementConfig, PlacementMachine
from .requirements import Requirements, requirements_for
from .spec import DEFAULT_PLACEMENT, PlacementSpec, parse_placement_table

__all__ = ["DEFAULT_PLACEMENT", "Lease", "LeaseTable", "PlacementConfig", "PlacementMachine",
           "PlacementSpec", "Refused", "Requirements", "parse_placement_table",
           "requirements_for"]
