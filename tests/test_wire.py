"""Wire format: typed records, frame limits, one error type for garbage."""

from __future__ import annotations

import struct
from typing import ClassVar

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keepmesh.protocol.channel import ChannelHello, ChannelProof
from keepmesh.protocol.errors import ProtocolError
from keepmesh.protocol.rpc import RpcRequest
from keepmesh.protocol.wire import (
    PROTOCOL_VERSION,
    FrameDecoder,
    Message,
    Spec,
    decode_payload,
    encode_frame,
    encode_payload,
    i,
    message,
    s,
)


def test_roundtrip_and_streaming_reassembly() -> None:
    hello = ChannelHello(role="agent", nonce=b"n" * 32, want="fresh")
    req = RpcRequest(method="agent.peers", body=b"\x80")
    data = encode_frame(hello) + encode_frame(req)
    dec = FrameDecoder()
    out = []
    for k in range(len(data)):  # byte by byte, as a stream may deliver it
        out += list(dec.feed(data[k:k + 1]))
    assert out == [hello, req]
    assert dec.buffered == 0


@pytest.mark.parametrize("payload, reason", [
    (b"\xc1", "malformed msgpack"),
    (msgpack.packb([PROTOCOL_VERSION, "chan.hello"]), "expected [version, type, fields]"),
    (msgpack.packb([99, "chan.hello", {}]), "unsupported protocol version"),
    (msgpack.packb([PROTOCOL_VERSION, "no.such", {}]), "unknown message type"),
    (msgpack.packb([PROTOCOL_VERSION, "chan.hello",
                    {"role": "agent", "nonce": b"x" * 31, "want": "any"}]), "length 31"),
    (msgpack.packb([PROTOCOL_VERSION, "chan.hello",
                    {"role": "root", "nonce": b"x" * 32, "want": "any"}]), "not one of"),
    (msgpack.packb([PROTOCOL_VERSION, "chan.hello",
                    {"role": "agent", "nonce": "x" * 32, "want": "any"}]), "expected bytes"),
    (msgpack.packb([PROTOCOL_VERSION, "chan.hello",
                    {"role": "agent", "nonce": b"x" * 32, "want": "any", "extra": 1}]),
     "unknown field"),
    (msgpack.packb([PROTOCOL_VERSION, "chan.hello", {"role": "agent", "want": "any"}]),
     "missing"),
    (msgpack.packb([PROTOCOL_VERSION, "chan.proof", {"signature": b"s" * 64, "issued_at": 5}]),
     "go together"),
])
def test_malformed_payloads_rejected_with_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode_payload(payload)
    assert reason in str(err.value)
    assert "\n" not in str(err.value)


def test_oversized_frame_rejected_before_buffering() -> None:
    dec = FrameDecoder(max_size=1024)
    with pytest.raises(ProtocolError, match="exceeds limit"):
        list(dec.feed(struct.pack(">I", 1025)))
    with pytest.raises(ProtocolError, match="exceeds limit"):
        encode_frame(RpcRequest(method="x", body=b"a" * 2000), max_size=1024)


def test_unexpected_type_rejected() -> None:
    dec = FrameDecoder(expect=(ChannelHello,))
    with pytest.raises(ProtocolError, match="unexpected message type"):
        list(dec.feed(encode_frame(RpcRequest(method="x", body=b""))))


def test_ranges_and_nested_records() -> None:
    @message
    class Probe(Message):
        TYPE: ClassVar[str] = "test.probe"
        SCHEMA: ClassVar[dict[str, Spec]] = {"n": i(0, 10), "name": s(4)}
        n: int
        name: str

    assert decode_payload(encode_payload(Probe(n=3, name="ab"))) == Probe(n=3, name="ab")
    for bad in ({"n": 11, "name": "a"}, {"n": True, "name": "a"}, {"n": 1, "name": "abcde"}):
        with pytest.raises(ProtocolError):
            decode_payload(msgpack.packb([PROTOCOL_VERSION, "test.probe", bad]))
    proof = ChannelProof(signature=b"s" * 64)
    assert decode_payload(encode_payload(proof)) == proof


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_garbage_only_raises_protocol_error(data: bytes) -> None:
    try:
        decode_payload(data)
    except ProtocolError:
        pass
    dec = FrameDecoder(max_size=4096)
    try:
        list(dec.feed(data))
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.integers(0, 199))
def test_fuzz_mutated_valid_frames(noise: bytes, pos: int) -> None:
    data = bytearray(encode_payload(ChannelHello(role="agent", nonce=b"n" * 32, want="any")))
    pos %= len(data)
    data[pos:pos + len(noise)] = noise
    try:
        msg = decode_payload(bytes(data))
    except ProtocolError:
        return
    assert isinstance(msg, Message)


def test_plain_messages_encode_exactly_as_their_fields() -> None:
    """The encoder skips Spec.dump for messages of scalars (Message._PLAIN): the bytes
    must equal encoding to_fields() for every registered type, with and without
    optional fields."""
    from keepmesh.protocol.membership.messages import Ack, Ping, PushPull

    cases = [Ping(seq=7, sender=b"s" * 32, target=b"t" * 32, gossip=(b"g1", b"g2")),
             Ack(seq=1, sender=b"s" * 32, gossip=()),
             PushPull(sender=b"s" * 32, join=False, reply=True, more=False, records=(b"r",),
                      states=b"\x00", incarnations=(3,), leave_sigs=(b"",)),
             PushPull(sender=b"s" * 32, join=False, reply=True, more=False, records=(b"r",),
                      states=b"\x00", incarnations=(3,), leave_sigs=(b"",), buckets=5),
             RpcRequest(method="m", body=b"x")]
    for msg in cases:
        full = msgpack.packb([PROTOCOL_VERSION, msg.TYPE, msg.to_fields()], use_bin_type=True)
        assert encode_payload(msg) == full
        assert decode_payload(full) == msg
    assert Ping._PLAIN is not None and ChannelProof._PLAIN is None  # nested: dumped


def test_fast_checks_accept_exactly_what_the_full_checks_accept() -> None:
    """Spec.check's fast paths (lists of bytes, bools, absent optionals) must return
    what the full checks return, and anything else must still fail with a reason."""
    items = Spec("list", item=Spec("bytes", max_len=4), max_len=3)
    for value in ([b"ab", b"abcd"], (b"x",), []):
        assert items.check("g", value) == items._check_slow("g", value) == tuple(value)
        assert type(items.check("g", value)) is tuple
    assert items.check("g", [bytearray(b"ab")]) == (b"ab",)  # converted by the full path
    for bad, why in (([b"abcde"], "exceeds 4"), ([b"a"] * 4, "exceeds 3"),
                     ([b"a", "s"], "expected bytes"), ([b"a", None], "missing")):
        with pytest.raises(ProtocolError, match=why):
            items.check("g", bad)
    flag_spec = Spec("bool")
    assert flag_spec.check("f", True) is True and flag_spec.check("f", False) is False
    for bad in (1, 0, None, "true"):
        with pytest.raises(ProtocolError):
            flag_spec.check("f", bad)
    assert Spec("bool", optional=True).check("f", None) is None
    assert Spec("bytes", optional=True).check("b", None) is None


def test_message_init_fills_fields_and_stays_frozen() -> None:
    """@message installs a direct __init__ (and from_fields fills __dict__ directly):
    same parameters, defaults, equality and hash as the dataclass one; still frozen."""
    import dataclasses

    from keepmesh.protocol.membership.messages import Ping

    p = Ping(7, b"s" * 32, b"t" * 32, (b"g",))
    assert p == Ping(seq=7, sender=b"s" * 32, target=b"t" * 32, gossip=(b"g",), stream=None)
    assert p.stream is None and hash(p) == hash(dataclasses.replace(p))
    assert decode_payload(encode_payload(p)) == p
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.seq = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        Ping(7, b"s" * 32)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Ping(7, b"s" * 32, b"t" * 32, (), None, 1)  # type: ignore[call-arg]

    @message
    class WithInit(Message):
        TYPE: ClassVar[str] = ""
        SCHEMA: ClassVar[dict[str, Spec]] = {"n": i(0, 9)}
        n: int

        def __init__(self, n: int) -> None:  # its own __init__ is kept and used
            object.__setattr__(self, "n", n + 1)

    assert WithInit(1).n == 2 and WithInit.from_fields({"n": 1}).n == 2
    assert Ping._DIRECT and not WithInit._DIRECT
