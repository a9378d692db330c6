"""Attested channel state machine, sans-IO, with real sim evidence.

Both directions of every check: the happy path, and a failure for each of
untrusted root, measurement not in policy, replayed proof, relayed evidence,
stale evidence when fresh is demanded, wrong session binding.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from keepmesh.agent.identity import Identity
from keepmesh.agent.tee.sim import SimTee, read_sim_root
from keepmesh.protocol.attestation.certs import TrustStore, fingerprint
from keepmesh.protocol.attestation.evidence import Evidence
from keepmesh.protocol.attestation.policy import Policy, SnpPolicy
from keepmesh.protocol.channel import (
    AttestedChannel,
    ChannelConfig,
    ChannelProof,
    ChannelState,
    Established,
    EvidenceCache,
    EvidenceNeeded,
    Failed,
    evidence_report_data,
)
from keepmesh.protocol.wire import Message, decode_payload, encode_payload


@dataclass
class Side:
    identity: Identity
    tee: SimTee | None
    config: ChannelConfig
    cache: EvidenceCache = field(default_factory=EvidenceCache)
    # Optional tamper hook: replace the evidence this side presents.
    evidence_override: tuple[Evidence, int] | None = None
    collected: list[bytes | None] = field(default_factory=list)

    def evidence(self, nonce: bytes | None) -> tuple[Evidence, int]:
        self.collected.append(nonce)
        if self.evidence_override is not None:
            return self.evidence_override
        assert self.tee is not None
        issued = int(time.time())
        return self.tee.collect(evidence_report_data(self.identity.public_bytes, issued,
                                                     nonce or b"")), issued


def make_agent(tmp: Path, root: Path, name: str, *, trust_roots: list[Path] | None = None,
               policy: Policy | None = None, fresh: bool = False) -> Side:
    roots = trust_roots if trust_roots is not None else [root]
    certs = [read_sim_root(r) for r in roots]
    pol = policy or Policy(allow_sim=True, sim_roots=tuple(fingerprint(c) for c in certs))
    return Side(Identity.generate(), SimTee(root, tmp / name),
                ChannelConfig(role="agent", trust=TrustStore(certs), policy=pol,
                              demand_fresh=fresh))


def make_client(root: Path, fresh: bool = True) -> Side:
    cert = read_sim_root(root)
    return Side(Identity.generate(), None, ChannelConfig(
        role="client", trust=TrustStore([cert]),
        policy=Policy(allow_sim=True, sim_roots=(fingerprint(cert),)),
        demand_fresh=fresh, expect_peer_role="agent"))


def run(a: Side, b: Side, exporter: bytes | None = None,
        a_exporter: bytes | None = None, tap: list[Message] | None = None,
        inject_to_a: list[Message] | None = None) -> tuple[AttestedChannel, AttestedChannel]:
    """Drive both channels to completion over an in-memory 'control stream'."""
    exporter = exporter or os.urandom(32)
    rng = random.Random(os.urandom(8))
    ca = AttestedChannel(initiator=True, local_identity=a.identity.public_bytes,
                         sign=a.identity.sign, peer_identity=b.identity.public_bytes,
                         exporter=a_exporter or exporter, config=a.config, cache=a.cache, rng=rng)
    cb = AttestedChannel(initiator=False, local_identity=b.identity.public_bytes,
                         sign=b.identity.sign, peer_identity=a.identity.public_bytes,
                         exporter=exporter, config=b.config, cache=b.cache, rng=rng)
    now = time.time()
    ca.start(now)
    cb.start(now)
    for _ in range(20):
        moved = False
        for src, dst, side in ((ca, cb, a), (cb, ca, b)):
            while (ev := src.next_event()) is not None:
                if isinstance(ev, EvidenceNeeded):
                    evidence, issued = side.evidence(ev.nonce)
                    src.provide_evidence(evidence, issued, now)
                else:
                    src.__dict__.setdefault("seen", []).append(ev)
            msgs = src.messages_to_send()
            if src is cb and inject_to_a:
                msgs = [inject_to_a.pop(0) if isinstance(m, ChannelProof) else m for m in msgs]
            for m in msgs:
                moved = True
                if tap is not None:
                    tap.append(m)
                dst.receive(decode_payload(encode_payload(m)), now)  # through the real codec
        if not moved:
            break
    return ca, cb


def events(ch: AttestedChannel) -> list[object]:
    out = ch.__dict__.pop("seen", [])
    while (ev := ch.next_event()) is not None:
        out.append(ev)
    return out


def failed_reason(ch: AttestedChannel) -> str:
    evs = [e for e in events(ch) if isinstance(e, Failed)]
    assert evs, f"channel did not fail (state {ch.state})"
    return evs[0].reason


def test_two_agents_establish_and_cache(tmp_path: Path, sim_root: Path) -> None:
    a = make_agent(tmp_path, sim_root, "a")
    b = make_agent(tmp_path, sim_root, "b")
    ca, cb = run(a, b)
    assert ca.state is ChannelState.ESTABLISHED and cb.state is ChannelState.ESTABLISHED
    assert ca.peer and ca.peer.identity == b.identity.public_bytes
    assert ca.peer.evidence and ca.peer.evidence.tee == "sim"
    assert cb.peer and cb.peer.evidence and not cb.peer.from_cache
    # Second session: both sides have cached evidence, so no evidence is produced or sent.
    a.collected.clear()
    b.collected.clear()
    tap: list[Message] = []
    ca2, cb2 = run(a, b, tap=tap)
    assert ca2.established and cb2.established
    assert ca2.peer and ca2.peer.from_cache
    assert a.collected == [] and b.collected == []
    assert all(getattr(m, "evidence", None) is None for m in tap)


def test_fresh_demand_binds_nonce(tmp_path: Path, sim_root: Path) -> None:
    a = make_agent(tmp_path, sim_root, "a", fresh=True)
    b = make_agent(tmp_path, sim_root, "b")
    run(a, b)  # warm caches
    b.collected.clear()
    ca, cb = run(a, b)
    assert ca.established and cb.established
    assert b.collected and b.collected[0] == ca.nonce  # b had to produce evidence for a's nonce


def test_untrusted_sim_root_rejected(tmp_path: Path, sim_root: Path,
                                     other_sim_root: Path) -> None:
    a = make_agent(tmp_path, sim_root, "a")
    b = make_agent(tmp_path, other_sim_root, "b", trust_roots=[other_sim_root])
    ca, cb = run(a, b)
    assert not ca.established and not cb.established
    assert "chain" in failed_reason(ca) or "issuer" in failed_reason(ca)


def test_root_trusted_but_not_in_policy_rejected(tmp_path: Path, sim_root: Path,
                                                 other_sim_root: Path) -> None:
    """Trusting a root is not enough: policy must allow sim evidence from it."""
    certs = [read_sim_root(sim_root), read_sim_root(other_sim_root)]
    pol = Policy(allow_sim=True, sim_roots=(fingerprint(certs[0]),))
    a = Side(Identity.generate(), SimTee(sim_root, tmp_path / "a"),
             ChannelConfig(role="agent", trust=TrustStore(certs), policy=pol))
    b = make_agent(tmp_path, other_sim_root, "b", trust_roots=[sim_root, other_sim_root])
    ca, _ = run(a, b)
    assert "sim_roots" in failed_reason(ca)
    pol_nosim = Policy(allow_sim=False)
    a.config = ChannelConfig(role="agent", trust=TrustStore(certs), policy=pol_nosim)
    a.cache = EvidenceCache()
    ca, _ = run(a, b)
    assert "allow_sim" in failed_reason(ca)


def test_measurement_not_in_policy_rejected(tmp_path: Path, sim_root: Path) -> None:
    cert = read_sim_root(sim_root)
    pol = Policy(allow_sim=True, sim_roots=(fingerprint(cert),),
                 snp=SnpPolicy(measurements=(b"\x11" * 48,)))
    a = make_agent(tmp_path, sim_root, "a", policy=pol)
    b = make_agent(tmp_path, sim_root, "b")
    ca, cb = run(a, b)
    reason = failed_reason(ca)
    assert "snp.measurements" in reason and "11111111" in reason
    assert not cb.established


def test_replayed_proof_from_earlier_session_rejected(tmp_path: Path, sim_root: Path) -> None:
    a = make_agent(tmp_path, sim_root, "a")
    b = make_agent(tmp_path, sim_root, "b")
    tap: list[Message] = []
    run(a, b, tap=tap)
    old_proofs = [m for m in tap if isinstance(m, ChannelProof) and m.evidence is not None]
    # b's proof (to a) from the earlier session replayed into a new session.
    replay = [old_proofs[-1]]
    a2 = make_agent(tmp_path, sim_root, "a")  # no cache: wants evidence
    a2.identity = a.identity
    ca, _ = run(a2, b, inject_to_a=replay)
    assert "session proof signature invalid" in failed_reason(ca)


def test_other_agents_evidence_rejected(tmp_path: Path, sim_root: Path) -> None:
    """A peer presenting evidence bound to someone else's key (relay) fails."""
    a = make_agent(tmp_path, sim_root, "a")
    b = make_agent(tmp_path, sim_root, "b")
    victim = make_agent(tmp_path, sim_root, "victim")
    b.evidence_override = victim.evidence(None)  # genuine evidence, but for victim's key
    ca, _ = run(a, b)
    assert "does not commit to the peer's identity" in failed_reason(ca)


def test_stale_evidence_rejected_when_fresh_demanded(tmp_path: Path, sim_root: Path) -> None:
    a = make_agent(tmp_path, sim_root, "a", fresh=True)
    b = make_agent(tmp_path, sim_root, "b")
    b.evidence_override = b.evidence(None)  # generic evidence, not bound to a's nonce
    ca, _ = run(a, b)
    assert "not fresh" in failed_reason(ca)


def test_evidence_past_max_age_rejected(tmp_path: Path, sim_root: Path) -> None:
    cert = read_sim_root(sim_root)
    pol = Policy(allow_sim=True, sim_roots=(fingerprint(cert),), max_evidence_age_s=60)
    a = make_agent(tmp_path, sim_root, "a", policy=pol)
    b = make_agent(tmp_path, sim_root, "b")
    issued = int(time.time()) - 3600
    b.evidence_override = (b.tee.collect(evidence_report_data(b.identity.public_bytes, issued)),
                           issued)  # type: ignore[union-attr]
    ca, _ = run(a, b)
    assert "exceeds max_evidence_age_s" in failed_reason(ca)


def test_cached_evidence_expires(tmp_path: Path, sim_root: Path) -> None:
    a = make_agent(tmp_path, sim_root, "a")
    b = make_agent(tmp_path, sim_root, "b")
    run(a, b)
    entry = a.cache.get(b.identity.public_bytes, time.time())
    assert entry is not None
    assert a.cache.get(b.identity.public_bytes, entry.expires_at + 1) is None


def test_session_binding_mismatch_rejected(tmp_path: Path, sim_root: Path) -> None:
    """Proofs computed over a different tls-exporter (another session / a relay) fail."""
    a = make_agent(tmp_path, sim_root, "a")
    b = make_agent(tmp_path, sim_root, "b")
    ca, cb = run(a, b, exporter=os.urandom(32), a_exporter=os.urandom(32))
    assert not ca.established and not cb.established
    assert "signature invalid" in failed_reason(ca) or "signature invalid" in failed_reason(cb)


def test_wrong_identity_key_rejected(tmp_path: Path, sim_root: Path) -> None:
    """The TLS certificate says key X, but proofs are signed by key Y."""
    a = make_agent(tmp_path, sim_root, "a")
    b = make_agent(tmp_path, sim_root, "b")
    impostor = ed25519.Ed25519PrivateKey.generate()
    b_real = b.identity
    b.identity = Identity.from_private_key(impostor)
    exporter = os.urandom(32)
    rng = random.Random(1)
    ca = AttestedChannel(initiator=True, local_identity=a.identity.public_bytes,
                         sign=a.identity.sign, peer_identity=b_real.public_bytes,
                         exporter=exporter, config=a.config, cache=a.cache, rng=rng)
    cb = AttestedChannel(initiator=False, local_identity=b_real.public_bytes,
                         sign=impostor.sign, peer_identity=a.identity.public_bytes,
                         exporter=exporter, config=b.config, cache=b.cache, rng=rng)
    now = time.time()
    ca.start(now)
    cb.start(now)
    for m in ca.messages_to_send():
        cb.receive(m, now)
    for ev in events(cb):
        if isinstance(ev, EvidenceNeeded):
            evd, issued = b.evidence(ev.nonce)
            cb.provide_evidence(evd, issued, now)
    for m in cb.messages_to_send():
        ca.receive(m, now)
    assert "signature invalid" in failed_reason(ca)


def test_client_and_agent(tmp_path: Path, sim_root: Path, other_sim_root: Path) -> None:
    client = make_client(sim_root)
    agent = make_agent(tmp_path, sim_root, "a")
    cc, ca = run(client, agent)
    assert cc.established and ca.established
    assert ca.peer and ca.peer.role == "client" and ca.peer.evidence is None
    assert cc.peer and cc.peer.evidence is not None
    # A client trusting another root refuses the agent.
    wrong = make_client(other_sim_root)
    cc, _ = run(wrong, agent)
    assert not cc.established


def test_client_cannot_pose_as_agent_without_evidence(tmp_path: Path, sim_root: Path) -> None:
    """A peer claiming the agent role must present evidence; a client-role peer cannot
    satisfy an agent that expects agents."""
    a = make_agent(tmp_path, sim_root, "a")
    a.config.expect_peer_role = "agent"
    client = make_client(sim_root)
    ca, _ = run(a, client)
    assert "expected 'agent'" in failed_reason(ca)


@pytest.mark.parametrize("bad", ["reflect", "accept-early"])
def test_protocol_violations_fail(tmp_path: Path, sim_root: Path, bad: str) -> None:
    from keepmesh.protocol.channel import ChannelAccept, ChannelHello
    a = make_agent(tmp_path, sim_root, "a")
    ch = AttestedChannel(initiator=True, local_identity=a.identity.public_bytes,
                         sign=a.identity.sign, peer_identity=os.urandom(32),
                         exporter=os.urandom(32), config=a.config, cache=a.cache,
                         rng=random.Random(2))
    ch.start(time.time())
    if bad == "reflect":
        ch.receive(ChannelHello(role="agent", nonce=ch.nonce, want="any"), time.time())
    else:
        ch.receive(ChannelAccept(cached=0), time.time())
    assert ch.state is ChannelState.CLOSED
    assert any(type(m).__name__ == "ChannelReject" for m in ch.messages_to_send())
    assert not [e for e in events(ch) if isinstance(e, Established)]


# ------------------------------------------------ fail-closed trust (issue 9)


def _crl_by_sim_ask(root: Path, serials: list[int]) -> object:
    """Collateral holding a CRL signed by the sim ASK (as AMD's KDS CRL is) and the ASK."""
    from keepmesh.protocol.attestation.certs import load_certificates
    from keepmesh.protocol.attestation.collateral import Collateral

    from tests.sim_crl import sim_ask_crl
    ask = load_certificates((root / "ask.pem").read_bytes())[0]
    return Collateral(crls=(sim_ask_crl(root, serials),), certs=(ask,))


def test_channel_applies_configured_collateral(tmp_path: Path, sim_root: Path) -> None:
    """Collateral in ChannelConfig is applied to the peer's evidence: a CRL that
    revokes the peer's VCEK fails the channel; one that does not, passes."""
    a = make_agent(tmp_path, sim_root, "a")
    b = make_agent(tmp_path, sim_root, "b")
    assert b.tee is not None
    vcek_serial = b.tee._vcek.serial_number
    a.config.collateral = _crl_by_sim_ask(sim_root, [vcek_serial + 1])
    ca, cb = run(a, b)
    assert ca.established and cb.established
    assert ca.peer and ca.peer.evidence
    assert ca.peer.evidence.claims["collateral"]["crls_checked"] == [
        "keepmesh INSECURE sim SEV-Milan"]
    a.cache = EvidenceCache()
    a.config.collateral = _crl_by_sim_ask(sim_root, [vcek_serial])
    ca, cb = run(a, b)
    assert not ca.established and "revoked" in failed_reason(ca)


def test_sim_evidence_obeys_allowed_tee(tmp_path: Path, sim_root: Path) -> None:
    fp = fingerprint(read_sim_root(sim_root))
    a = make_agent(tmp_path, sim_root, "a",
                   policy=Policy(allow_sim=True, sim_roots=(fp,), allowed_tee=("snp",)))
    b = make_agent(tmp_path, sim_root, "b")
    ca, _ = run(a, b)
    assert "allowed_tee" in failed_reason(ca)
    a = make_agent(tmp_path, sim_root, "a2",
                   policy=Policy(allow_sim=True, sim_roots=(fp,), allowed_tee=("sim",)))
    ca, _ = run(a, b)
    assert ca.established


def test_foreign_exception_fails_the_session_not_the_caller(
        tmp_path: Path, sim_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug met while handling peer input ends that channel with a reason."""
    import keepmesh.protocol.channel as channel

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(channel, "verify_evidence_record", boom)
    a = make_agent(tmp_path, sim_root, "a")
    b = make_agent(tmp_path, sim_root, "b")
    ca, cb = run(a, b)  # must not raise
    assert not ca.established and not cb.established
    assert failed_reason(ca) == "internal error (RuntimeError)"
    assert isinstance(ca.internal_error, RuntimeError)


def test_library_error_in_verifier_is_a_verification_failure(
        tmp_path: Path, sim_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The verifier's own fault boundary turns a stray library error into a reason."""
    import keepmesh.protocol.attestation.snp as snp

    def boom(*args: object, **kwargs: object) -> None:
        raise ValueError("library quirk")

    monkeypatch.setattr(snp, "cert_tcb", boom)
    a = make_agent(tmp_path, sim_root, "a")
    b = make_agent(tmp_path, sim_root, "b")
    ca, _ = run(a, b)
    assert failed_reason(ca) == "snp: unexpected ValueError (library quirk)"
    assert ca.internal_error is None


def test_failure_kind_is_typed(tmp_path: Path, sim_root: Path, other_sim_root: Path) -> None:
    """Failed.kind tells verification from policy failures (the CLI's advice uses it)."""
    a = make_agent(tmp_path, sim_root, "ka")
    b = make_agent(tmp_path, other_sim_root, "kb", trust_roots=[other_sim_root])
    ca, _ = run(a, b)
    failed = [e for e in events(ca) if isinstance(e, Failed)]
    assert failed and failed[0].kind == "verification" and failed[0].local
    pol = Policy(allow_sim=True, sim_roots=(fingerprint(read_sim_root(sim_root)),),
                 snp=SnpPolicy(measurements=(b"\x11" * 48,)))
    a = make_agent(tmp_path, sim_root, "kc", policy=pol)
    b = make_agent(tmp_path, sim_root, "kd")
    ca, cb = run(a, b)
    failed = [e for e in events(ca) if isinstance(e, Failed)]
    assert failed and failed[0].kind == "policy" and failed[0].local
    theirs = [e for e in events(cb) if isinstance(e, Failed)]
    assert all(not e.local for e in theirs)  # b was rejected by a, not the other way round
    a = make_agent(tmp_path, sim_root, "ke")
    b = make_agent(tmp_path, sim_root, "kf")
    ca, cb = run(a, b)
    assert ca.established and not [e for e in events(ca) if isinstance(e, Failed)]
