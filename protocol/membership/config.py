"""Timing profiles for SWIM/Lifeguard membership.

Why profiles: the right probe and gossip periods depend on the network's
round-trip time and loss, not on the code. The values mirror HashiCorp
memberlist's DefaultLANConfig / DefaultWANConfig / DefaultLocalConfig, which
are tuned by years of production use; keepmesh adds only the knobs its signed
records and penalties need.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..errors import ProtocolError


@dataclass(frozen=True)
class MembershipConfig:
    """All durations are seconds of the caller's clock (virtual in the simulator)."""

    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_checks: int = 3
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    retransmit_mult: int = 4
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    push_pull_interval: float = 30.0
    awareness_max_multiplier: int = 8
    max_packet: int = 1400
    dead_reclaim_s: float = 3600.0
    gossip_to_the_dead_time: float = 30.0
    # keepmesh additions
    penalty_threshold: int = 3          # bad signatures / spoofed senders before a sender is banned
    max_stream_message: int = 1024 * 1024  # one push-pull chunk (matches wire.DEFAULT_MAX_FRAME)
    max_broadcasts: int = 4096          # bound on the piggyback queue
    join_retry_interval: float = 5.0    # re-contact seeds while we know nobody
    max_members: int = 65536            # refuse to learn more members than this
    # issue 9 (hostile input, local health); specs/membership.md §5-§6
    ban_s: float = 300.0                # a ban's length (doubling per repeat, up to 8x)
    penalty_decay_s: float = 60.0       # one penalty point is forgiven per this many seconds
    max_unfounded: int = 4              # refuted accusations (decaying) before we ignore one
    max_pending: int = 1024             # members learned but not yet attested
    attest_timeout: float = 120.0       # a member still unattested after this is forgotten
    late_timer_slack: float = 0.25      # x probe_timeout: a timer run later = we are slow
    fallback_ping: bool = True          # memberlist's TCP fallback: a stream ping with ping_reqs

    def __post_init__(self) -> None:
        positive = ("probe_interval", "probe_timeout", "gossip_interval", "join_retry_interval",
                    "ban_s", "penalty_decay_s", "attest_timeout", "late_timer_slack")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ProtocolError(f"membership config: {name} must be > 0")
        if self.probe_timeout > self.probe_interval:
            raise ProtocolError("membership config: probe_timeout exceeds probe_interval")
        if self.push_pull_interval < 0:
            raise ProtocolError("membership config: push_pull_interval must be >= 0 (0 disables)")
        for name in ("indirect_checks", "gossip_nodes"):
            if getattr(self, name) < 0:
                raise ProtocolError(f"membership config: {name} must be >= 0")
        for name in ("suspicion_mult", "suspicion_max_timeout_mult", "retransmit_mult",
                     "awareness_max_multiplier", "penalty_threshold", "max_unfounded",
                     "max_pending"):
            if getattr(self, name) < 1:
                raise ProtocolError(f"membership config: {name} must be >= 1")
        if self.max_packet < 512:
            raise ProtocolError("membership config: max_packet below 512 bytes")

    @classmethod
    def profile(cls, name: str) -> MembershipConfig:
        """Named timing profile: "lan", "wan" or "local"."""
        if name == "lan":
            return cls()
        if name == "wan":
            return cls(probe_interval=5.0, probe_timeout=3.0, suspicion_mult=6,
                       gossip_interval=0.5, gossip_nodes=4, push_pull_interval=60.0,
                       gossip_to_the_dead_time=60.0)
        if name == "local":
            return cls(probe_interval=1.0, probe_timeout=0.2, suspicion_mult=3,
                       retransmit_mult=2, gossip_interval=0.1, push_pull_interval=15.0,
                       gossip_to_the_dead_time=15.0)
        raise ProtocolError(f"unknown membership profile {name[:20]!r} (lan, wan, local)")

    def replace(self, **changes: float | int) -> MembershipConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    # ------------------------------------------------ derived (memberlist util.go)

    def suspicion_min(self, n: int) -> float:
        """suspicionTimeout(): mult * max(1, log10(n)) * probe_interval."""
        node_scale = max(1.0, math.log10(max(1.0, float(n))))
        return self.suspicion_mult * node_scale * self.probe_interval

    def retransmit_limit(self, n: int) -> int:
        """retransmitLimit(): mult * ceil(log10(n + 1))."""
        return self.retransmit_mult * int(math.ceil(math.log10(float(n) + 1.0)))

    def push_pull_scaled(self, n: int) -> float:
        """pushPullScale(): beyond 32 nodes, back off with log2 of the cluster size."""
        threshold = 32
        if n <= threshold:
            return self.push_pull_interval
        multiplier = math.ceil(math.log2(n) - math.log2(threshold)) + 1.0
        return self.push_pull_interval * multiplier
