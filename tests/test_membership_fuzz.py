"""Hostile bytes never escape Membership.receive as exceptions."""

from __future__ import annotations

import dataclasses
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keepmesh.protocol.membership import (
    Alive,
    Gossip,
    Membership,
    MembershipConfig,
    Ping,
    PushPull,
    PushPullEntry,
    Suspect,
    make_record,
)
from keepmesh.protocol.membership.messages import Sync, accusation_signed_bytes
from keepmesh.protocol.wire import encode_payload
from keepmesh.simulations.keyring import SimulationKeyring

KEYRING = SimulationKeyring(b"fuzz")
SIGNER = KEYRING.signer(b"\x01" * 32)
PEER = KEYRING.signer(b"\x02" * 32)
PEER_RECORD = make_record(PEER, "peer:7946", 3)


def fresh() -> Membership:
    return Membership(MembershipConfig.profile("lan"), make_record(SIGNER, "me:7946", 0), SIGNER,
                      KEYRING.verifier(), random.Random(0), 0.0, require_attestation=False)


def valid_packets() -> list[bytes]:
    alive = encode_payload(Alive(record=PEER_RECORD.encoded))
    unsigned = Suspect(node=SIGNER.node_id, incarnation=0, accuser=PEER.node_id, signature=b"")
    sus = encode_payload(dataclasses.replace(
        unsigned, signature=PEER.sign(accusation_signed_bytes(unsigned))))
    return [
        encode_payload(Ping(seq=7, sender=PEER.node_id, target=SIGNER.node_id, gossip=(alive,))),
        encode_payload(Gossip(sender=PEER.node_id, gossip=(alive, sus))),
        encode_payload(PushPull.build(PEER.node_id, True, False, False,
                                      [PushPullEntry(PEER_RECORD.encoded, "alive", 3, None)])),
        encode_payload(PushPull.build(PEER.node_id, False, False, False,
                                      [PushPullEntry(PEER_RECORD.encoded, "alive", 3, None)],
                                      buckets=(1 << 64) - 1)),
        encode_payload(Sync(sender=PEER.node_id, digest=bytes(range(256)) * 2)),
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_dropped(data: bytes) -> None:
    node = fresh()
    node.receive(data, "x", 1.0)
    node.handle_timer(2.0)
    assert node.alive_ids() == {SIGNER.node_id}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 4), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                   min_size=1, max_size=6),
       st.integers(0, 50))
def test_mutated_valid_packets_never_raise(which: int, flips: list[tuple[int, int]],
                                           cut: int) -> None:
    node = fresh()
    data = bytearray(valid_packets()[which])
    for pos, val in flips:
        data[pos % len(data)] = val
    blob = bytes(data[: len(data) - cut if cut < len(data) else len(data)])
    node.receive(blob, "x", 1.0)
    node.handle_timer(5.0)
    node.datagrams_to_send()
    # a mutated record can only be accepted if its signature still verifies
    view = node.member(PEER.node_id)
    if view is not None:
        assert view.record.encoded == PEER_RECORD.encoded


def test_valid_packets_accepted_and_garbage_counted() -> None:
    node = fresh()
    for pkt in valid_packets():
        node.receive(pkt, "peer", 1.0)
    assert node.member(PEER.node_id) is not None
    node.receive(b"\x93\x01\xa9swim.ping\x80", "x", 1.0)
    node.receive(b"\xc1", "x", 1.0)
    node.receive(encode_payload(Ping(seq=1, sender=PEER.node_id, target=SIGNER.node_id,
                                     gossip=(b"garbage",))), "peer", 1.0)
    assert node.stats["malformed"] == 3
    assert node.last_error
    # oversized datagram (not push-pull) is refused
    big = encode_payload(Gossip(sender=PEER.node_id, gossip=(b"x" * 1000, b"y" * 1000)))
    node.receive(big, "peer", 1.0)
    assert node.stats["malformed"] == 4
