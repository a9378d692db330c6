"""Membership authority (specs/membership.md §5): nobody but a member itself can get it
declared dead faster than the suspicion timeout, and nobody but itself can make it leave.

Each rule is tested both ways: the valid accusation counts, the forged one does not.
"""

from __future__ import annotations

from keepmesh.protocol.membership import (
    Alive,
    CachingVerifier,
    Dead,
    Ed25519Verifier,
    Gossip,
    Leave,
    MemberState,
    PushPull,
    PushPullEntry,
    Suspect,
    make_record,
)
from keepmesh.protocol.membership.messages import LeaveStatement, accusation_signed_bytes
from keepmesh.protocol.wire import encode_payload

from tests.membership_cluster import LAN, Cluster, address

N = 5
LO = LAN.suspicion_min(N)                       # 4 s: the floor, with k confirmations
HI = LAN.suspicion_max_timeout_mult * LO        # 24 s: one accuser alone


def accusation(c: Cluster, accuser: int, victim: int, kind: type[Suspect] | type[Dead] = Suspect,
               incarnation: int | None = None, signer: int | None = None) -> bytes:
    inc = c.record(victim).incarnation if incarnation is None else incarnation
    unsigned = kind(node=c.id(victim), incarnation=inc, accuser=c.id(accuser), signature=b"")
    sig = c.signers[accuser if signer is None else signer].sign(accusation_signed_bytes(unsigned))
    return encode_payload(kind(node=c.id(victim), incarnation=inc, accuser=c.id(accuser),
                               signature=sig))


def gossip(c: Cluster, sender: int, *items: bytes) -> bytes:
    return encode_payload(Gossip(sender=c.id(sender), gossip=items))


def send(c: Cluster, sender: int, to: int, data: bytes, now: float) -> None:
    c.nodes[to].receive(data, address(sender), now, src_id=c.id(sender))


def test_gossiped_dead_is_only_a_suspicion() -> None:
    c = Cluster(N)
    send(c, 1, 0, gossip(c, 1, accusation(c, 1, 2, Dead)), 0.5)
    assert c.nodes[0].state_of(c.id(2)) is MemberState.SUSPECT  # not DEAD
    assert ("dead", c.id(2)) not in c.events(0)


def test_one_member_cannot_get_a_live_member_declared_dead_before_the_timeout() -> None:
    """Member 1 accuses member 2 over and over (suspect and dead, with forged accusers
    too). Member 2 is unreachable (down) so it cannot refute: still, nobody declares it
    dead before the one-accuser timeout (HI, and never before LO)."""
    c = Cluster(N)
    t0 = 0.5
    forged_accusers = [accusation(c, a, 2, Dead, signer=1) for a in (3, 4)]
    for step in range(int(HI)):
        now = t0 + step
        send(c, 1, 0, gossip(c, 1, accusation(c, 1, 2, Suspect), accusation(c, 1, 2, Dead),
                             *forged_accusers), now)
    assert c.nodes[0].penalties(c.id(1)) >= 1  # the forged confirmations cost member 1
    # Member 0 on its own: nobody else's view matters here. Run only it, member 2 down.
    down = {1, 2, 3, 4}
    c.run(t0 + LO - 0.01, down=down)
    assert c.nodes[0].state_of(c.id(2)) is MemberState.SUSPECT


def test_distinct_accusers_shorten_to_the_minimum_never_below() -> None:
    c = Cluster(N)
    t0 = 0.5
    for accuser in (1, 3):  # k = suspicion_mult - 2 = 2 independent confirmations
        send(c, accuser, 0, gossip(c, accuser, accusation(c, accuser, 2)), t0)
    m = c.nodes[0]
    c.run(t0 + LO - 0.01, down={2})
    assert m.state_of(c.id(2)) is MemberState.SUSPECT       # never below LO
    # LO, plus at most the verification probe (2 periods) as member 0 only heard of it
    c.run(t0 + LO + 3 * LAN.probe_interval, down={2}, start=t0 + LO - 0.01)
    assert m.state_of(c.id(2)) is MemberState.DEAD           # ...so LO, not HI


def test_forged_accusation_is_rejected_and_counts_against_the_sender() -> None:
    c = Cluster(N)
    forged = accusation(c, 3, 2, signer=1)  # member 1 signs in member 3's name
    send(c, 1, 0, gossip(c, 1, forged), 0.5)
    assert c.nodes[0].state_of(c.id(2)) is MemberState.ALIVE
    assert c.nodes[0].penalties(c.id(1)) == 1
    assert c.nodes[0].stats["rejected.signature"] == 1
    # the same accusation, really signed by member 3 and relayed by member 1, counts
    send(c, 1, 0, gossip(c, 1, accusation(c, 3, 2)), 0.6)
    assert c.nodes[0].state_of(c.id(2)) is MemberState.SUSPECT
    assert c.nodes[0].penalties(c.id(1)) == 1


def test_accuser_must_be_a_trusted_member() -> None:
    from keepmesh.protocol.membership import Ed25519Signer
    c = Cluster(N)
    outsider = Ed25519Signer(b"\x77" * 32)
    inc = c.record(2).incarnation
    unsigned = Suspect(node=c.id(2), incarnation=inc, accuser=outsider.node_id, signature=b"")
    item = encode_payload(Suspect(node=c.id(2), incarnation=inc, accuser=outsider.node_id,
                                  signature=outsider.sign(accusation_signed_bytes(unsigned))))
    send(c, 1, 0, gossip(c, 1, item), 0.5)
    assert c.nodes[0].state_of(c.id(2)) is MemberState.ALIVE
    assert c.nodes[0].stats["accusation.ignored"] == 1
    c.nodes[0].set_trust(c.id(3), False, 0.6, reason="test")
    send(c, 1, 0, gossip(c, 1, accusation(c, 3, 2)), 0.7)  # accuser no longer trusted
    assert c.nodes[0].state_of(c.id(2)) is MemberState.ALIVE
    send(c, 1, 0, gossip(c, 1, accusation(c, 4, 2)), 0.8)  # a trusted accuser counts
    assert c.nodes[0].state_of(c.id(2)) is MemberState.SUSPECT


def test_accused_member_refutes_and_unfounded_accusers_are_ignored() -> None:
    c = Cluster(N)
    m, victim = c.nodes[0], c.nodes[2]
    now = 0.5
    for _ in range(LAN.max_unfounded):
        send(c, 1, 0, gossip(c, 1, accusation(c, 1, 2)), now)
        assert m.state_of(c.id(2)) is MemberState.SUSPECT
        # the victim hears it too and refutes with a higher incarnation
        send(c, 1, 2, gossip(c, 1, accusation(c, 1, 2)), now)
        refutation = encode_payload(Alive(record=victim.record.encoded))
        send(c, 2, 0, gossip(c, 2, refutation), now)  # same instant: no decay in between
        assert m.state_of(c.id(2)) is MemberState.ALIVE
    assert m.stats["accusation.unfounded"] == LAN.max_unfounded
    send(c, 1, 0, gossip(c, 1, accusation(c, 1, 2)), now)
    assert m.state_of(c.id(2)) is MemberState.ALIVE  # member 1 is not believed for a while
    assert m.stats["accusation.discredited"] == 1
    send(c, 3, 0, gossip(c, 3, accusation(c, 3, 2)), now)  # others still are
    assert m.state_of(c.id(2)) is MemberState.SUSPECT
    # credibility comes back as the count decays
    later = now + LAN.ban_s + LAN.max_unfounded * LAN.penalty_decay_s
    newer = make_record(c.signers[2], address(2), victim.record.incarnation + 1)
    send(c, 2, 0, gossip(c, 2, encode_payload(Alive(record=newer.encoded))), later)
    send(c, 1, 0, gossip(c, 1, accusation(c, 1, 2, incarnation=newer.incarnation)), later + 0.1)
    assert m.state_of(c.id(2)) is MemberState.SUSPECT


def test_push_pull_dead_entries_are_the_senders_suspicions() -> None:
    c = Cluster(N)
    entries = [PushPullEntry(c.record(i).encoded, "dead" if i == 2 else "alive",
                             c.record(i).incarnation, None) for i in range(N) if i != 0]
    data = encode_payload(PushPull.build(c.id(1), False, True, False, entries))
    send(c, 1, 0, data, 0.5)
    assert c.nodes[0].state_of(c.id(2)) is MemberState.SUSPECT
    assert c.nodes[0].member(c.id(2)).liveness is MemberState.SUSPECT  # type: ignore[union-attr]


def test_only_the_member_itself_can_declare_it_left() -> None:
    c = Cluster(N)
    inc = c.record(2).incarnation
    statement = encode_payload(LeaveStatement(node=c.id(2), incarnation=inc))
    by_other = Leave(node=c.id(2), incarnation=inc, signature=c.signers[1].sign(statement))
    send(c, 1, 0, gossip(c, 1, encode_payload(by_other)), 0.5)
    assert c.nodes[0].state_of(c.id(2)) is MemberState.ALIVE
    assert c.nodes[0].penalties(c.id(1)) == 1
    by_self = Leave(node=c.id(2), incarnation=inc, signature=c.signers[2].sign(statement))
    send(c, 1, 0, gossip(c, 1, encode_payload(by_self)), 0.6)
    assert c.nodes[0].state_of(c.id(2)) is MemberState.LEFT


def test_accusation_about_us_is_refuted_only_when_genuine() -> None:
    c = Cluster(N)
    me = c.nodes[2]
    inc = me.record.incarnation
    send(c, 1, 2, gossip(c, 1, accusation(c, 3, 2, signer=1)), 0.5)  # forged
    assert me.record.incarnation == inc and me.penalties(c.id(1)) == 1
    send(c, 1, 2, gossip(c, 1, accusation(c, 1, 2, Dead)), 0.6)      # genuine
    assert me.record.incarnation == inc + 1


def test_an_accusation_in_our_name_costs_its_sender_unless_we_signed_it() -> None:
    """We never accuse ourselves, so a suspect or dead about us naming us as accuser is a
    forgery; one about another member in our name is ours only if our signature holds.
    Both used to be dropped unchecked, so a member could forge them for free. Our own
    accusation coming back by gossip (it always does) costs its relayer nothing."""
    c = Cluster(N)
    me = c.nodes[0]
    inc = me.record.incarnation
    send(c, 1, 0, gossip(c, 1, accusation(c, 0, 0, signer=1)), 0.5)        # about us
    assert me.penalties(c.id(1)) == 1 and me.record.incarnation == inc
    send(c, 1, 0, gossip(c, 1, accusation(c, 0, 1, Dead, signer=1)), 0.6)  # about itself
    assert me.penalties(c.id(1)) == 2
    assert me.state_of(c.id(1)) is MemberState.ALIVE
    # Member 0 really accuses member 2 (its probe fails) and gossips it; the echo that
    # member 3 relays back is ours, and changes nothing.
    c.run(0.5 + 3 * LAN.probe_interval, down={2})
    assert me.state_of(c.id(2)) is MemberState.SUSPECT
    mine = accusation(c, 0, 2)
    send(c, 3, 0, gossip(c, 3, mine), 3.6)
    send(c, 3, 0, gossip(c, 3, accusation(c, 0, 2, Dead)), 3.7)  # signed by us too
    assert me.penalties(c.id(3)) == 0


def _observer_alone(n: int) -> Cluster:
    """Member 0 runs no round-robin probes of its own (so it never becomes a confirmer
    itself): what it decides comes from the accusations it hears alone."""
    c = Cluster(n)
    c.nodes[0]._next_probe = 1e9
    return c


def test_corroborated_dead_spares_the_verification_probe() -> None:
    """k confirmations and another accuser's signed dead: member 0 declares dead when its
    own timer expires (LO), without the two extra periods of its verification probe."""
    c = _observer_alone(6)
    lo = LAN.suspicion_min(6)
    t0 = 0.5
    for accuser in (1, 3, 4):  # first accuser + k = 2 confirmations: the suspicion is full
        send(c, accuser, 0, gossip(c, accuser, accusation(c, accuser, 2)), t0)
    send(c, 1, 0, gossip(c, 1, accusation(c, 1, 2, Dead)), t0 + 0.1)
    c.run(t0 + lo + 0.01, down={1, 2, 3, 4, 5})
    assert c.nodes[0].state_of(c.id(2)) is MemberState.DEAD


def test_without_a_dead_the_observer_still_verifies() -> None:
    c = _observer_alone(6)
    lo = LAN.suspicion_min(6)
    t0 = 0.5
    for accuser in (1, 3, 4):
        send(c, accuser, 0, gossip(c, accuser, accusation(c, accuser, 2)), t0)
    c.run(t0 + lo + LAN.probe_interval, down={1, 2, 3, 4, 5})
    assert c.nodes[0].state_of(c.id(2)) is MemberState.SUSPECT  # waiting to verify
    # ...and a corroborating dead arriving during that wait ends it at once
    send(c, 3, 0, gossip(c, 3, accusation(c, 3, 2, Dead)), t0 + lo + LAN.probe_interval)
    assert c.nodes[0].state_of(c.id(2)) is MemberState.DEAD


def test_a_lone_accusers_dead_spares_nothing() -> None:
    """One accuser's suspect and dead (a liar, or the one member that missed a refutation):
    at its timeout (HI) member 0 still waits for its own verification probe."""
    c = _observer_alone(6)
    hi = LAN.suspicion_max_timeout_mult * LAN.suspicion_min(6)
    t0 = 0.5
    send(c, 1, 0, gossip(c, 1, accusation(c, 1, 2), accusation(c, 1, 2, Dead)), t0)
    c.run(t0 + hi + LAN.probe_interval, down={1, 2, 3, 4, 5})
    assert c.nodes[0].state_of(c.id(2)) is MemberState.SUSPECT


def test_an_accusation_verified_once_passes_the_shared_verifier_again_a_forgery_never() -> None:
    """Members sharing a CachingVerifier (one simulator process) check an accusation's
    signature once: later members answer by its exact bytes. A forged accusation is
    never remembered, so it fails at every member, and a good one still counts at each."""
    c = Cluster(N)
    shared = CachingVerifier(Ed25519Verifier())
    for m in c.nodes:
        m.verifier = shared
    good = accusation(c, 1, 2)
    forged = accusation(c, 3, 2, signer=1)
    send(c, 1, 0, gossip(c, 1, good), 0.5)
    assert c.nodes[0].state_of(c.id(2)) is MemberState.SUSPECT
    assert shared.misses == 1 and shared.hits == 0 and shared.verified_item(good)
    send(c, 1, 4, gossip(c, 1, good), 0.6)
    assert c.nodes[4].state_of(c.id(2)) is MemberState.SUSPECT
    assert shared.misses == 1  # answered by the item memo, no signature check
    for to in (0, 4):
        send(c, 3, to, gossip(c, 3, forged), 0.7)
        assert c.nodes[to].stats.get("rejected.signature") == 1
    assert shared.misses == 3 and not shared.verified_item(forged)

