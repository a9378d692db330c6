"""SWIM + Lifeguard membership with subject-signed, attestation-gated records (sans-IO).

See specs/membership.md. The simulator and the agent use only the names
re-exported here.
"""

from .awareness import Awareness
from .broadcast import BroadcastQueue
from .config import MembershipConfig
from .messages import (
    Ack,
    Alive,
    Dead,
    Gossip,
    Leave,
    Nack,
    Ping,
    PingReq,
    PushPull,
    PushPullEntry,
    Suspect,
    decode_swim,
)
from .records import (
    MAX_RECORD_BYTES,
    NO_CAPACITY,
    NO_CLAIMS,
    Capacity,
    Claims,
    NodeRecord,
    decode_record,
    make_record,
)
from .signing import (
    Address,
    CachingVerifier,
    Ed25519Signer,
    Ed25519Verifier,
    NodeId,
    RecordSigner,
    RecordVerifier,
)
from .state import MemberEvent, Membership, MemberView, Outgoing
from .suspicion import Suspicion, remaining_suspicion_time
from .table import MemberBase, MemberState, Trust

__all__ = [
    "Ack", "Address", "Alive", "Awareness", "BroadcastQueue", "CachingVerifier", "Capacity",
    "Claims", "Dead", "Ed25519Signer", "Ed25519Verifier", "Gossip", "Leave",
    "MAX_RECORD_BYTES", "MemberBase", "MemberEvent", "MemberState", "MemberView", "Membership",
    "MembershipConfig", "NO_CAPACITY", "NO_CLAIMS", "Nack", "NodeId", "NodeRecord", "Outgoing",
    "Ping", "PingReq", "PushPull", "PushPullEntry", "RecordSigner", "RecordVerifier",
    "Suspect", "Suspicion",
    "Trust", "decode_record", "decode_swim", "make_record", "remaining_suspicion_time",
]
