"""Budgets, bans and rate-limited logs (agent/transport/limits.py), and reading an
RPC request's method from the head of its frame (protocol/rpc.py)."""

from __future__ import annotations

import logging

import pytest
from keepmesh.agent.transport.limits import BanList, Budget, RateLimitedLog, RateWindow
from keepmesh.protocol.rpc import RpcRequest, request_method_hint
from keepmesh.protocol.wire import encode_payload


def test_budgets_nest_and_return_to_zero() -> None:
    total = Budget(100)
    a, b = Budget(60, total), Budget(60, total)
    assert a.take(60) and not a.take(1)  # its own limit
    assert not b.take(41) and b.take(40)  # the parent's limit
    assert total.used == 100 and not b.take(1)
    a.give(60)
    assert total.used == 40 and b.take(20)
    b.close()  # owner gone: everything back to the parent, later gives stay local
    assert total.used == 0
    b.give(60)
    assert total.used == 0 and b.used == 0


def test_ban_list_expires_and_is_bounded() -> None:
    bans = BanList(threshold=3, window_s=10, ban_s=30, max_entries=4)
    assert not bans.failure("10.0.0.1", 0) and not bans.failure("10.0.0.1", 1)
    assert not bans.banned("10.0.0.1", 2)
    assert bans.failure("10.0.0.1", 2)  # third in the window starts a ban
    assert bans.banned("10.0.0.1", 31) and not bans.banned("10.0.0.1", 32.1)  # expires
    bans.failure("10.0.0.2", 0)
    bans.failure("10.0.0.2", 20)
    bans.failure("10.0.0.2", 40)  # spread out: never three within 10 s
    assert not bans.banned("10.0.0.2", 40)
    for i in range(10):
        bans.failure(f"10.1.0.{i}", 50)
    assert len(bans._table) == 4  # oldest forgotten


def test_rate_limited_log_summarises(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.ratelog")
    rl = RateLimitedLog(logger, interval_s=3600, burst=3)
    with caplog.at_level(logging.WARNING, "test.ratelog"):
        for i in range(100):
            rl.warning("failure %d", i)
        assert len(caplog.records) == 3
        rl._window_start -= 3600  # next interval
        rl.warning("again")
    assert len(caplog.records) == 5
    assert "97 more like this" in caplog.records[3].getMessage()


def test_rate_window() -> None:
    w = RateWindow()
    for _ in range(50):
        w.hit(100.0)
    assert w.rate(100.5) == 50
    assert 20 <= w.rate(101.5) <= 30  # half of the previous second still counts
    assert w.rate(103.0) == 0


def test_method_hint_reads_only_method_first_heads() -> None:
    payload = encode_payload(RpcRequest(method="keeps.deploy", body=b"x" * 200_000))
    assert request_method_hint(payload[:128]) == "keeps.deploy"
    assert request_method_hint(payload[:12]) is None  # not enough bytes yet
    import msgpack
    body_first = msgpack.packb([1, "rpc.request", {"body": b"x" * 300, "method": "a.b"}],
                               use_bin_type=True)
    assert request_method_hint(body_first[:128]) is None
    for junk in (b"", b"\xff" * 128, msgpack.packb([1, "chan.hello", {"method": "x"}]),
                 msgpack.packb([2, "rpc.request", {"method": "x"}]),
                 msgpack.packb([1, "rpc.request", {"method": 5}])):
        assert request_method_hint(junk) is None


def _largest_place_body() -> dict[str, object]:
    """keeps.place's largest valid body: every field of the deployment at its maximum,
    free text in 4-byte UTF-8 characters (names are ASCII by their patterns)."""
    from keepmesh.protocol.deployment import MAX_POLICY_TEXT, Deployment
    wide = "\U0001F512"
    refs = [{"name": f"S{i:02d}" + "x" * 61, "digest": b"d" * 32, "as_env": True}
            for i in range(64)]
    data = [{"name": f"D{i:02d}" + "x" * 61, "digest": b"d" * 32} for i in range(64)]
    manifest = {
        "name": "k" * 64, "args": [wide * 1024] * 64,
        "env": {f"E{i:02d}" + "x" * 125: wide * 4096 for i in range(64)},
        "memory_limit": 4 << 30, "fuel": (1 << 63) - 1, "timeout_ms": 3_600_000,
        "stateful": True,
        "placement": {"replicas": 16, "labels": {f"l{i:02d}" + "x" * 61: wide * 128
                                                 for i in range(16)}, "spread": "s" * 64},
        "migration": {"standbys": 8, "checkpoint_s": 1e-3 + 1.5}}
    fields = {"package_digest": b"p" * 32, "package_size": 16 << 20, "manifest": manifest,
              "policy": wide * MAX_POLICY_TEXT, "owner_key": b"o" * 32,
              "created_at": 1.5e9 + 0.25, "nonce": b"n" * 16, "signature": b"s" * 64,
              "secrets": refs, "data": data}
    Deployment.from_fields(fields)  # valid (but for its signature)
    return {"deployment": fields}


def test_bounded_methods_limits_fit_their_schema() -> None:
    """keeps.place, keeps.secret_set and migrate.attest each carry one record bounded by
    its schema: their body limit admits the largest body the schema allows, and not
    much more (they used to fall under MAX_BODY, 24 MiB). specs/wire.md lists them."""
    from keepmesh.protocol.deployment import Deployment
    from keepmesh.protocol.rpc import MAX_BODY, SMALL_BODY, body_limit, pack_body
    from keepmesh.protocol.secrets import MAX_UPDATE_CIPHERTEXT, SecretUpdate
    from keepmesh.protocol.wire import b, max_fields_size, rec
    place = max_fields_size({"deployment": rec(Deployment)})
    largest = len(pack_body(_largest_place_body()))
    # the bound is real, and nearly reached (it counts ASCII-only names at 4 bytes a char)
    assert place - 64 * 1024 <= largest <= place
    assert place <= body_limit("keeps.place") <= place + 64 * 1024 < MAX_BODY // 8
    update = {"keep": "a" * 32, "name": "N" * 64, "serial": (1 << 63) - 1,
              "digest": b"d" * 32, "ciphertext": b"c" * MAX_UPDATE_CIPHERTEXT,
              "signature": b"s" * 64}
    SecretUpdate.from_fields(update)
    secret_set = max_fields_size({"update": rec(SecretUpdate)})
    assert len(pack_body({"update": update})) <= secret_set
    assert secret_set <= body_limit("keeps.secret_set") <= secret_set + 4096
    attest = max_fields_size({"nonce": b(exact=32)})
    assert len(pack_body({"nonce": b"n" * 32})) <= attest <= body_limit("migrate.attest")
    assert body_limit("migrate.attest") == SMALL_BODY  # as agent.status and its siblings
