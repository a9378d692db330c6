"""Attested channel: binds a QUIC session to an identity key and that key to TEE evidence.

Runs on the control stream right after the QUIC handshake, once each side
knows the other's Ed25519 identity from its TLS certificate. Two bindings
(specs/channel.md):

* Evidence binds the identity key: report_data = SHA-512(EVIDENCE_LABEL ||
  identity || issued_at || nonce), nonce empty unless the verifier demanded
  freshness. Verified evidence is cached per identity key until it reaches the
  policy's maximum age, because real TEEs produce reports slowly.
* Every session binds to the identity key: each side signs the peer's fresh
  nonce and the session's RFC 9266 tls-exporter value, so a proof or evidence
  relayed from another session fails.

States (per side): START → AWAIT_HELLO → AWAIT_PROOF → AWAIT_ACCEPT →
ESTABLISHED, or CLOSED from anywhere on the first failure. The machine is
sans-IO: the caller feeds messages and `now` (Unix seconds), collects messages
to send and events (EvidenceNeeded, Established, Failed).
"""

from __future__ import annotations

import enum
import hashlib
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from .attestation.certs import ChainCache, TrustStore
from .attestation.evidence import Evidence, VerifiedEvidence, verify_evidence_record
from .attestation.policy import Policy, PolicyError, appraise
from .errors import ProtocolError, VerificationError
from .wire import Message, Spec, b, message, rec, s, u

EVIDENCE_LABEL = b"keepmesh-evidence-v1\x00"
PROOF_LABEL = b"keepmesh-channel-v1\x00"
NONCE_LEN = 32
CLOCK_SKEW_S = 120.0
DEFAULT_MAX_EVIDENCE_AGE_S = 3600.0  # when the policy sets none: bounds the evidence cache

ROLES = ("agent", "client")
WANTS = ("none", "any", "fresh")


def evidence_report_data(identity: bytes, issued_at: int, nonce: bytes = b"") -> bytes:
    """The 64 bytes a TEE report must carry to vouch for `identity`."""
    if len(identity) != 32:
        raise ValueError("identity must be a 32-byte Ed25519 public key")
    return hashlib.sha512(EVIDENCE_LABEL + identity + issued_at.to_bytes(8, "big") + nonce).digest()


def proof_payload(initiator: bool, exporter: bytes, peer_nonce: bytes) -> bytes:
    """What a side signs: its role (no reflection), the session, the peer's nonce."""
    return PROOF_LABEL + (b"I" if initiator else b"R") + exporter + peer_nonce


# ------------------------------------------------------------------ messages


@message
class ChannelHello(Message):
    TYPE: ClassVar[str] = "chan.hello"
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "role": s(16, choices=ROLES),
        "nonce": b(exact=NONCE_LEN),
        "want": s(8, choices=WANTS),
    }
    role: str
    nonce: bytes
    want: str


@message
class ChannelProof(Message):
    TYPE: ClassVar[str] = "chan.proof"
    SCHEMA: ClassVar[dict[str, Spec]] = {
        "signature": b(exact=64),
        "evidence": rec(Evidence, optional=True),
        "issued_at": u(63, optional=True),
    }
    signature: bytes
    evidence: Evidence | None = None
    issued_at: int | None = None

    def validate(self) -> None:
        if (self.evidence is None) != (self.issued_at is None):
            raise ProtocolError("chan.proof: evidence and issued_at go together")


@message
class ChannelAccept(Message):
    TYPE: ClassVar[str] = "chan.accept"
    SCHEMA: ClassVar[dict[str, Spec]] = {"cached": u(1)}
    cached: int  # 1 when the acceptor used cached evidence (informational)


@message
class ChannelReject(Message):
    TYPE: ClassVar[str] = "chan.reject"
    SCHEMA: ClassVar[dict[str, Spec]] = {"reason": s(200)}
    reason: str


CHANNEL_MESSAGES: tuple[type[Message], ...] = (ChannelHello, ChannelProof, ChannelAccept,
                                               ChannelReject)

# -------------------------------------------------------------------- events


@dataclass(frozen=True)
class PeerInfo:
    identity: bytes
    role: str
    evidence: VerifiedEvidence | None
    evidence_issued_at: int | None
    verified_at: float
    from_cache: bool


@dataclass(frozen=True)
class EvidenceNeeded:
    """Produce evidence for our identity; `nonce` set when the peer demands freshness."""

    nonce: bytes | None


@dataclass(frozen=True)
class Established:
    peer: PeerInfo


@dataclass(frozen=True)
class Failed:
    reason: str
    local: bool  # True: we rejected the peer; False: the peer rejected us
    # Why typed: the shell tells an operator what to do (e.g. "pass --root") from the
    # kind, never from the text. "verification": the peer's evidence or chain did not
    # verify against our roots; "policy": it verified but our policy refused it;
    # "protocol": malformed or out-of-order messages, or a local abort.
    kind: str = "protocol"


ChannelEvent = EvidenceNeeded | Established | Failed


class ChannelState(enum.Enum):
    START = "start"
    AWAIT_HELLO = "await-hello"
    AWAIT_PROOF = "await-proof"
    AWAIT_ACCEPT = "await-accept"
    ESTABLISHED = "established"
    CLOSED = "closed"


# ----------------------------------------------------------- evidence cache


@dataclass(frozen=True)
class CachedEvidence:
    verified: VerifiedEvidence
    issued_at: int
    expires_at: float


class EvidenceCache:
    """Verified evidence per identity key, kept until the policy's maximum age."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._entries: OrderedDict[bytes, CachedEvidence] = OrderedDict()
        self.max_entries = max_entries

    def get(self, identity: bytes, now: float) -> CachedEvidence | None:
        entry = self._entries.get(identity)
        if entry is None:
            return None
        if entry.expires_at <= now:
            del self._entries[identity]
            return None
        self._entries.move_to_end(identity)
        return entry

    def put(self, identity: bytes, entry: CachedEvidence) -> None:
        self._entries[identity] = entry
        self._entries.move_to_end(identity)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self, identity: bytes) -> None:
        self._entries.pop(identity, None)

    def __len__(self) -> int:
        return len(self._entries)


# --------------------------------------------------------------- the machine


@dataclass
class ChannelConfig:
    """Local appraisal settings for the channel.

    role: what this side is ("agent" has a TEE and presents evidence; "client"
    is a CLI with only a key). Agents never demand evidence from clients;
    what a client may do is the RPC layer's decision.
    """

    role: str
    trust: TrustStore
    policy: Policy
    demand_fresh: bool = False
    expect_peer_role: str | None = None  # e.g. a client insists on talking to an agent
    chain_cache: ChainCache | None = None
    collateral: object | None = None
    """Collateral (a `collateral.Collateral`, or a name -> bytes map) applied to every
    peer's evidence: Intel TCB info / QE identity decide DCAP `tcb_status`, and AMD or
    Intel CRLs revoke chain certificates. None: status stays "unknown" (which the
    default policy rejects for SGX/TDX)."""


class AttestedChannel:
    """One side of the attested-channel exchange for one QUIC session."""

    def __init__(self, *, initiator: bool, local_identity: bytes, sign: Callable[[bytes], bytes],
                 peer_identity: bytes, exporter: bytes, config: ChannelConfig,
                 cache: EvidenceCache, rng: random.Random) -> None:
        if config.role not in ROLES:
            raise ValueError(f"unknown role {config.role!r}")
        self.initiator = initiator
        self.local_identity = local_identity
        self._sign = sign
        self.peer_identity = peer_identity
        self.exporter = exporter
        self.config = config
        self.cache = cache
        self.nonce = rng.getrandbits(NONCE_LEN * 8).to_bytes(NONCE_LEN, "big")
        self.state = ChannelState.START
        self.peer: PeerInfo | None = None
        self._peer_hello: ChannelHello | None = None
        self._want: str = "none"
        self._cached: CachedEvidence | None = None
        self._sent_proof = False
        self._accept_sent = False
        self._peer_accepted = False
        self._outbox: list[Message] = []
        self._events: list[ChannelEvent] = []
        self.internal_error: Exception | None = None

    # ---------------------------------------------------------------- inputs
    def start(self, now: float) -> None:
        """Send our hello: our nonce and what evidence we need from the peer."""
        if self.state is not ChannelState.START:
            raise ProtocolError("channel already started")
        if self.config.demand_fresh:
            self._want = "fresh"
        else:
            self._cached = self.cache.get(self.peer_identity, now)
            self._want = "none" if self._cached is not None else "any"
        self._outbox.append(ChannelHello(role=self.config.role, nonce=self.nonce, want=self._want))
        self.state = ChannelState.AWAIT_HELLO

    def receive(self, msg: Message, now: float) -> None:
        """Feed one decoded control-stream message."""
        if self.state is ChannelState.CLOSED:
            return
        try:
            self._receive(msg, now)
        except PolicyError as err:
            self._fail(err.reason, "policy")
        except VerificationError as err:
            self._fail(err.reason, "verification")
        except ProtocolError as err:
            self._fail(err.reason)
        except Exception as err:
            # Fault boundary: a bug met by peer input fails this session, never the
            # agent. Kept in `internal_error` so tests and fuzzers see it as the bug it is.
            self.internal_error = err
            self._fail(f"internal error ({type(err).__name__})")

    def provide_evidence(self, evidence: Evidence, issued_at: int, now: float) -> None:
        """Answer an EvidenceNeeded event with evidence the local TEE produced."""
        if self.state is ChannelState.CLOSED or self._sent_proof:
            return
        self._send_proof(evidence, issued_at)
        self._maybe_accept(now)

    def abort(self, reason: str) -> None:
        """The glue failed (e.g. could not collect evidence)."""
        self._fail(reason)

    # --------------------------------------------------------------- outputs
    def messages_to_send(self) -> list[Message]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> ChannelEvent | None:
        return self._events.pop(0) if self._events else None

    @property
    def established(self) -> bool:
        return self.state is ChannelState.ESTABLISHED

    # -------------------------------------------------------------- internal
    def _receive(self, msg: Message, now: float) -> None:
        if isinstance(msg, ChannelReject):
            self.state = ChannelState.CLOSED
            self._events.append(Failed(f"peer rejected us: {msg.reason}", local=False))
            return
        if isinstance(msg, ChannelHello):
            if self.state is not ChannelState.AWAIT_HELLO:
                raise ProtocolError(f"unexpected chan.hello in state {self.state.value}")
            self._on_hello(msg, now)
        elif isinstance(msg, ChannelProof):
            if self.state is not ChannelState.AWAIT_PROOF:
                raise ProtocolError(f"unexpected chan.proof in state {self.state.value}")
            self._on_proof(msg, now)
        elif isinstance(msg, ChannelAccept):
            if self.state not in (ChannelState.AWAIT_PROOF, ChannelState.AWAIT_ACCEPT,
                                  ChannelState.ESTABLISHED) \
                    or not self._sent_proof or self._peer_accepted:
                raise ProtocolError(f"unexpected chan.accept in state {self.state.value}")
            self._peer_accepted = True  # informational: we do not wait for it
        else:
            raise ProtocolError(f"unexpected message {msg.TYPE} on the control stream")

    def _on_hello(self, hello: ChannelHello, now: float) -> None:
        if hello.nonce == self.nonce:
            raise VerificationError("peer echoed our nonce (reflection)")
        expect = self.config.expect_peer_role
        if expect is not None and hello.role != expect:
            raise VerificationError(f"peer role is {hello.role!r}, expected {expect!r}")
        if self.config.role == "client" and hello.role == "client":
            raise VerificationError("two clients cannot form a channel")
        self._peer_hello = hello
        self.state = ChannelState.AWAIT_PROOF
        want = hello.want
        if self.config.role == "client" or want == "none":
            self._send_proof(None, None)
        elif want == "fresh":
            self._events.append(EvidenceNeeded(nonce=hello.nonce))
        else:
            self._events.append(EvidenceNeeded(nonce=None))

    def _send_proof(self, evidence: Evidence | None, issued_at: int | None) -> None:
        assert self._peer_hello is not None
        signature = self._sign(proof_payload(self.initiator, self.exporter, self._peer_hello.nonce))
        self._outbox.append(ChannelProof(signature=signature, evidence=evidence,
                                         issued_at=issued_at))
        self._sent_proof = True

    def _on_proof(self, proof: ChannelProof, now: float) -> None:
        assert self._peer_hello is not None
        payload = proof_payload(not self.initiator, self.exporter, self.nonce)
        try:
            VerifyKey(self.peer_identity).verify(payload, proof.signature)
        except (CryptoError, ValueError, TypeError):  # BadSignatureError is a CryptoError
            raise VerificationError("session proof signature invalid (wrong key, wrong session "
                                    "or replayed proof)") from None
        peer_role = self._peer_hello.role
        verified: VerifiedEvidence | None = None
        issued_at: int | None = None
        from_cache = False
        if peer_role == "agent":
            if self._want == "none" and self._cached is not None and proof.evidence is None:
                verified, issued_at, from_cache = (self._cached.verified, self._cached.issued_at,
                                                   True)
            else:
                if proof.evidence is None or proof.issued_at is None:
                    raise VerificationError("peer presented no evidence")
                verified = self._verify_evidence(proof.evidence, proof.issued_at, now)
                issued_at = proof.issued_at
        elif proof.evidence is not None:
            raise VerificationError("a client presented evidence")
        self.peer = PeerInfo(identity=self.peer_identity, role=peer_role, evidence=verified,
                             evidence_issued_at=issued_at, verified_at=now, from_cache=from_cache)
        self.state = ChannelState.AWAIT_ACCEPT
        self._maybe_accept(now)

    def _verify_evidence(self, evidence: Evidence, issued_at: int, now: float) -> VerifiedEvidence:
        policy = self.config.policy
        max_age = policy.max_evidence_age_s or DEFAULT_MAX_EVIDENCE_AGE_S
        if issued_at > now + CLOCK_SKEW_S:
            raise VerificationError(f"evidence issued_at {issued_at} is in the future")
        age = now - issued_at
        if age > max_age:
            raise VerificationError(f"evidence age {age:.0f}s exceeds max_evidence_age_s "
                                    f"{max_age:g}")
        nonce = self.nonce if self._want == "fresh" else b""
        expected = evidence_report_data(self.peer_identity, issued_at, nonce)
        at = datetime.fromtimestamp(now, tz=UTC)
        verified = verify_evidence_record(evidence, self.config.trust, at,
                                          cache=self.config.chain_cache,
                                          collateral=self.config.collateral)
        if verified.report_data != expected:
            if self._want == "fresh" and verified.report_data == evidence_report_data(
                    self.peer_identity, issued_at):
                raise VerificationError("evidence is not fresh: report_data lacks our nonce")
            raise VerificationError("evidence report_data does not commit to the peer's identity "
                                    "key (relayed or stale evidence)")
        appraise(policy, verified, evidence_issued_at=float(issued_at), now=now)
        self.cache.put(self.peer_identity, CachedEvidence(
            verified=verified, issued_at=issued_at,
            expires_at=issued_at + max_age))
        return verified

    def _maybe_accept(self, now: float) -> None:
        if self.state is ChannelState.AWAIT_ACCEPT and self._sent_proof and self.peer is not None:
            if not self._accept_sent:
                self._outbox.append(ChannelAccept(cached=int(self.peer.from_cache)))
                self._accept_sent = True
                self._maybe_established()

    def _maybe_established(self) -> None:
        """Established once we verified the peer and it has our proof.

        We do not wait for the peer's accept: a side never acts on application
        data before *it* has verified the sender, so the initiator may send
        requests right behind its proof (saving half a round trip); if the
        responder rejects it, the connection closes with the reason.
        """
        if self._accept_sent and self._sent_proof \
                and self.state is not ChannelState.ESTABLISHED and self.peer is not None:
            self.state = ChannelState.ESTABLISHED
            self._events.append(Established(self.peer))

    def _fail(self, reason: str, kind: str = "protocol") -> None:
        if self.state is ChannelState.CLOSED:
            return
        self.state = ChannelState.CLOSED
        self._outbox.append(ChannelReject(reason=reason[:200]))
        self._events.append(Failed(reason, local=True, kind=kind))
