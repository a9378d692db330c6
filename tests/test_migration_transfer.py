"""Chunked transfers: reassembly in order, digest checked, bounded."""

from __future__ import annotations

import pytest
from keepmesh.protocol.errors import ProtocolError
from keepmesh.protocol.migration.messages import Transfer
from keepmesh.protocol.migration.transfer import Reassembler, split
from keepmesh.protocol.wire import decode_payload, encode_payload

KEEP = "12" * 16


def test_roundtrip_through_the_wire() -> None:
    data = bytes(range(256)) * 40
    r = Reassembler()
    chunks = split(KEEP, 3, "checkpoint", 7, 12.5, data, chunk_size=1000)
    assert len(chunks) == 11
    out = None
    for c in chunks:
        c2 = decode_payload(encode_payload(c))
        assert isinstance(c2, Transfer)
        out = r.feed(b"s", c2)
    assert out is not None and out.data == data and out.seq == 7 and out.epoch == 3
    assert r.held == 0
    [empty] = split(KEEP, 1, "checkpoint", 1, 0.0, b"")
    assert r.feed(b"s", empty) is not None


def test_out_of_order_tampered_and_oversized_chunks_fail() -> None:
    data = b"x" * 100
    c = split(KEEP, 1, "checkpoint", 1, 0.0, data, chunk_size=40)
    r = Reassembler()
    with pytest.raises(ProtocolError):
        r.feed(b"s", c[1])                      # no start
    r.feed(b"s", c[0])
    with pytest.raises(ProtocolError):
        r.feed(b"s", c[2])                      # gap
    assert r.held == 0
    bad = Transfer(**{**c[2].__dict__, "chunk": b"y" * 20})
    r.feed(b"s", c[0])
    r.feed(b"s", c[1])
    with pytest.raises(ProtocolError, match="digest"):
        r.feed(b"s", bad)
    small = Reassembler(max_inflight=50)
    with pytest.raises(ProtocolError, match="in flight"):
        small.feed(b"s", c[0])
    with pytest.raises(ProtocolError):          # chunk past the declared total
        Transfer.from_fields({**c[0].to_fields(), "total": 10})
    with pytest.raises(ProtocolError):          # total above the bound
        Transfer.from_fields({**c[0].to_fields(), "total": 1 << 31})


def test_interleaved_object_is_refused_and_newer_start_replaces() -> None:
    a = split(KEEP, 1, "checkpoint", 1, 0.0, b"a" * 100, chunk_size=40)
    b = split(KEEP, 1, "checkpoint", 2, 0.0, b"b" * 100, chunk_size=40)
    r = Reassembler()
    r.feed(b"s", a[0])
    with pytest.raises(ProtocolError, match="interleaved"):
        r.feed(b"s", b[1])
    r.feed(b"s", a[0])
    r.feed(b"s", b[0])                          # a newer object restarts the slot
    r.feed(b"s", b[1])
    done = r.feed(b"s", b[2])
    assert done is not None and done.seq == 2


def test_chunk_past_the_declared_total_is_refused() -> None:
    data = b"a" * 100
    [first, second] = split(KEEP, 1, "checkpoint", 1, 0.0, data, chunk_size=60)
    r = Reassembler()
    assert r.feed(b"s", first) is None
    longer = Transfer(**{**second.__dict__, "chunk": b"a" * 41})  # 101 bytes, total says 100
    with pytest.raises(ProtocolError, match="past the object's total"):
        r.feed(b"s", longer)
    assert r.held == 0
    assert r.feed(b"s", first) is None  # the object can start over
    done = r.feed(b"s", second)
    assert done is not None and done.data == data and r.held == 0


def test_objects_whose_sender_stopped_give_their_budget_back() -> None:
    """Found checking the sweep's bounds: a partial object whose sender stopped sending
    (the keep moved or stopped, the standby was replaced) kept its declared total in the
    256 MiB in-flight budget for as long as the sender lived; four abandoned 64 MiB
    checkpoints and every later transfer was refused. Stalled ones now expire; one still
    receiving chunks does not."""
    r = Reassembler(max_inflight=100)
    stuck = split(KEEP, 1, "checkpoint", 1, 0.0, b"a" * 60, chunk_size=10)
    moving = split(KEEP, 1, "package", 0, 0.0, b"b" * 30, chunk_size=10)
    r.feed(b"s1", stuck[0])
    r.feed(b"s2", moving[0])
    with pytest.raises(ProtocolError, match="in flight"):
        r.feed(b"s3", split(KEEP, 1, "checkpoint", 1, 0.0, b"c" * 20)[0])
    assert r.expire_stalled() == 0  # first look: both new
    r.feed(b"s2", moving[1])
    assert r.expire_stalled() == 0  # s1 idle once; s2 moved on
    assert r.expire_stalled() == 1  # s1 idle twice: dropped; s2 idle once
    assert r.held == 30
    assert r.feed(b"s2", moving[2]) is not None  # the live one completes
    assert r.feed(b"s3", split(KEEP, 1, "checkpoint", 1, 0.0, b"c" * 20)[0]) is not None
    assert r.held == 0
