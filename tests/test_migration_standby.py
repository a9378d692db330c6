"""Standby replication: attest before sealing, explicit link states, epoch-guarded holdings."""

from __future__ import annotations

import hashlib
import math
import random

import pytest
from keepmesh.protocol.attestation.policy import load_policy
from keepmesh.protocol.errors import ProtocolError
from keepmesh.protocol.migration import effects as fx
from keepmesh.protocol.migration.location import LocationTable, sign_location
from keepmesh.protocol.migration.messages import Ack, LocationStatement, Replicate
from keepmesh.protocol.migration.settings import MigrationSettings, parse_migration
from keepmesh.protocol.migration.standby import Holdings, LinkState, Replication
from keepmesh.protocol.migration.transfer import split
from keepmesh.protocol.migration.triggers import Attested
from keepmesh.protocol.deployment import deployment_id
from keepmesh.protocol.wire import encode_payload
from migration_net import BASE_POLICY, deployment, evidence

DEPLOYMENT = deployment("standby-test")
KEEP = deployment_id(DEPLOYMENT)
STRICT = load_policy(BASE_POLICY + "[snp]\nmin_tcb = { microcode = 210 }\n")


class View:
    def __init__(self, nodes: dict[bytes, int]) -> None:
        self.nodes = nodes  # node -> microcode
        self.dead: set[bytes] = set()

    def is_live(self, node: bytes) -> bool:
        return node not in self.dead

    def attested(self, node: bytes) -> Attested | None:
        mc = self.nodes.get(node)
        return None if mc is None else Attested(evidence(node, microcode=mc), 0.0)


def _ids(n: int) -> list[bytes]:
    return [hashlib.sha256(bytes([i])).digest() for i in range(n)]


def _rep(k: int = 1) -> tuple[Replication, list[bytes], View]:
    host, *others = _ids(5)
    view = View({n: 213 for n in [host, *others]})
    rep = Replication(KEEP, 1, host, STRICT, MigrationSettings(standbys=k, checkpoint_s=5), 0.0)
    return rep, others, view


def _fresh(node: bytes, nonce: bytes, now: float, microcode: int = 213) -> Attested:
    return Attested(evidence(node, microcode=microcode, nonce=nonce, issued_at=int(now)),
                    float(int(now)))


def test_link_walks_attesting_shipping_ready_and_checkpoints() -> None:
    rep, others, view = _rep()
    [att] = rep.reconcile(view, others, 0.0, random.Random(1))
    assert isinstance(att, fx.AttestStandby)
    node = att.node
    assert rep.links[node].state is LinkState.ATTESTING and rep.ready() == ()
    [send] = rep.attested(node, att.nonce, _fresh(node, att.nonce, 1.0), 1.0)
    assert isinstance(send, fx.SendReplicate) and rep.links[node].state is LinkState.SHIPPING
    ok = dict(keep=KEEP, epoch=1, seq=0, ok=True, reason="")
    assert rep.acked(node, Ack(kind="replicate", **ok), 1.5) == []
    assert rep.links[node].state is LinkState.SHIPPING
    rep.acked(node, Ack(kind="package", **ok), 1.6)
    assert rep.ready() == (node,)
    assert rep.checkpoint_due(5.0)
    seq = rep.request_seq()
    [ck] = rep.checkpoint_taken(seq, 5.0, 5.0)
    assert isinstance(ck, fx.SendCheckpoint) and ck.seq == 1
    assert rep.last_checkpoint() == (0, 0.0)            # not acked yet
    rep.acked(node, Ack(keep=KEEP, epoch=1, kind="checkpoint", seq=1, ok=True, reason=""), 5.1)
    assert rep.last_checkpoint() == (1, 5.0)


@pytest.mark.parametrize("case", ["ok", "wrong_nonce", "other_node", "stale", "low_tcb", "none"])
def test_key_is_only_shipped_after_fresh_bound_evidence_meets_the_policy(case: str) -> None:
    rep, others, view = _rep()
    [att] = rep.reconcile(view, others, 100.0, random.Random(1))
    node, nonce = att.node, att.nonce
    ev: Attested | None = {
        "ok": _fresh(node, nonce, 100.0),
        "wrong_nonce": _fresh(node, b"\x00" * 32, 100.0),
        "other_node": _fresh(others[0] if others[0] != node else others[1], nonce, 100.0),
        "stale": _fresh(node, nonce, 0.0),
        "low_tcb": _fresh(node, nonce, 100.0, microcode=200),
        "none": None,
    }[case]
    out = rep.attested(node, nonce, ev, 100.0)
    if case == "ok":
        assert out and isinstance(out[0], fx.SendReplicate)
    else:
        assert out == [] and rep.links[node].state is LinkState.FAILED
        # the failed candidate is replaced by another one, never retried at once
        again = rep.reconcile(view, others, 101.0, random.Random(2))
        assert again and again[0].node != node  # type: ignore[union-attr]


def test_candidates_failing_the_policy_are_never_attested() -> None:
    rep, others, view = _rep(k=4)
    for n in others[:2]:
        view.nodes[n] = 200  # below min_tcb per their gossiped evidence
    view.dead.add(others[2])
    out = rep.reconcile(view, others, 0.0, random.Random(1))
    assert [e.node for e in out] == [others[3]]  # type: ignore[union-attr]


def test_silent_standby_is_dropped_after_timeout() -> None:
    rep, others, view = _rep()
    [att] = rep.reconcile(view, others, 0.0, random.Random(1))
    assert not rep.expire(10.0)
    assert rep.expire(16.0)
    assert rep.links[att.node].state is LinkState.FAILED



@pytest.mark.parametrize("since", [0.0, 62.0, 0.1, 1e5 + 0.7])
def test_a_link_deadline_is_a_time_at_which_expire_acts(since: float) -> None:
    """deadline() said waiting_since + timeout, but expire() wanted strictly more than the
    timeout (and `now - since` can round below it): a driver called handle_timer at the
    deadline, nothing changed and the same past deadline came back, for ever in virtual
    time (found by the placement/migration sweep, a link waiting since t = 62.0)."""
    rep, others, view = _rep()
    [att] = rep.reconcile(view, others, since, random.Random(1))
    rep.next_checkpoint = math.inf  # the link's deadline is the only one
    t = rep.deadline()
    assert t == since + 15.0
    assert rep.expire(t)
    assert rep.links[att.node].state is LinkState.FAILED and rep.deadline() > t


def _replicate(epoch: int = 1) -> Replicate:
    return Replicate(keep=KEEP, epoch=epoch, deployment=encode_payload(DEPLOYMENT), package_size=3,
                     package_digest=hashlib.sha256(b"pkg").digest())


def test_holdings_accept_current_host_and_refuse_stale_or_foreign() -> None:
    me, host, other = _ids(3)
    h = Holdings(me)
    table = LocationTable()
    out = h.on_replicate(host, _replicate(), table)
    assert isinstance(out[0], fx.StoreStandby) and out[1].message.ok  # type: ignore[union-attr]
    [pkg] = split(KEEP, 1, "package", 0, 0.0, b"pkg")
    stored = h.on_transfer(host, pkg, table)
    assert isinstance(stored[0], fx.StoreStandby) and h.restorable(KEEP) is not None
    # another member may not feed this keep at the same epoch
    [refused] = h.on_transfer(other, split(KEEP, 1, "checkpoint", 1, 0.0, b"c")[0], table)
    assert not refused.message.ok  # type: ignore[union-attr]
    # a wrong package is refused
    [bad] = h.on_transfer(host, split(KEEP, 1, "package", 0, 0.0, b"PKG")[0], table)
    assert not bad.message.ok  # type: ignore[union-attr]
    # checkpoints must increase
    h.on_transfer(host, split(KEEP, 1, "checkpoint", 2, 0.0, b"c2")[0], table)
    [old] = h.on_transfer(host, split(KEEP, 1, "checkpoint", 1, 0.0, b"c1")[0], table)
    assert not old.message.ok and h.held[KEEP].seq == 2  # type: ignore[union-attr]
    # once the keep is known to run at epoch 2 elsewhere, epoch 1 is stale
    from keepmesh.protocol.membership.signing import Ed25519Signer
    s = Ed25519Signer(b"\x05" * 32)
    table.learn(sign_location(s, LocationStatement(
        keep=KEEP, owner=bytes(32), host=s.node_id, address="x:1", epoch=2, version=0,
        standbys=(),
        checkpoint_seq=0, checkpoint_at=0.0, state="running")))
    [stale] = h.on_replicate(host, _replicate(1), table)
    assert not stale.message.ok and "stale" in stale.message.reason  # type: ignore[union-attr]
    assert Holdings(me, max_held=0).on_replicate(host, _replicate(), LocationTable())[0] \
        .message.reason == "standby full"  # type: ignore[union-attr]


def test_settings_defaults_and_one_line_errors() -> None:
    assert parse_migration(None) == MigrationSettings(1, 5.0)
    assert parse_migration({"standbys": 2, "checkpoint_s": 1}) == MigrationSettings(2, 1.0)
    for bad, field in [({"standbys": 9}, "migration.standbys"),
                       ({"standbys": True}, "migration.standbys"),
                       ({"checkpoint_s": 0.1}, "migration.checkpoint_s"),
                       ({"checkpoint_s": "5"}, "migration.checkpoint_s"),
                       ({"other": 1}, "migration.other"), ([], "migration")]:
        with pytest.raises(ProtocolError, match=field):
            parse_migration(bad)


def _to_ready(rep: Replication, others: list[bytes], view: View, replicate_seq: int) -> bytes:
    [att] = rep.reconcile(view, others, 0.0, random.Random(1))
    rep.attested(att.node, att.nonce, _fresh(att.node, att.nonce, 1.0), 1.0)
    rep.acked(att.node, Ack(keep=KEEP, epoch=1, kind="replicate", seq=replicate_seq, ok=True,
                            reason=""), 1.5)
    rep.acked(att.node, Ack(keep=KEEP, epoch=1, kind="package", seq=0, ok=True, reason=""), 1.6)
    assert rep.ready() == (att.node,)
    return att.node


def test_restarted_host_numbers_checkpoints_above_what_its_standby_holds() -> None:
    """A host that restarts runs its keep at the same epoch with its numbering back at 0;
    the standby kept checkpoint 74 from it and refuses anything not newer. Its replicate
    ack says 74, so the next checkpoint is 75 and is accepted (before: 1, refused, and the
    link failed)."""
    me, host = _ids(2)
    holdings, table = Holdings(me), LocationTable()
    holdings.on_replicate(host, _replicate(), table)
    holdings.on_transfer(host, split(KEEP, 1, "package", 0, 0.0, b"pkg")[0], table)
    holdings.on_transfer(host, split(KEEP, 1, "checkpoint", 74, 0.0, b"c74")[0], table)
    # the host restarts and replicates to it again: the ack carries what it still holds
    out = holdings.on_replicate(host, _replicate(), table)
    ack = out[1].message  # type: ignore[union-attr]
    assert ack.ok and ack.seq == 74 and holdings.held[KEEP].seq == 74
    # a first replicate (nothing held) says 0
    assert Holdings(me).on_replicate(host, _replicate(), table)[1] \
        .message.seq == 0  # type: ignore[union-attr]

    rep, others, view = _rep()
    node = _to_ready(rep, others, view, replicate_seq=ack.seq)
    assert rep.newest_seq() == 74 and rep.last_checkpoint() == (0, 0.0)
    seq = rep.request_seq()
    assert seq == 75
    [send] = rep.checkpoint_taken(seq, 5.0, 5.0)
    assert isinstance(send, fx.SendCheckpoint) and send.node == node and send.seq == 75
    stored, ok = holdings.on_transfer(host, split(KEEP, 1, "checkpoint", 75, 5.0, b"c75")[0],
                                      table)
    assert isinstance(stored, fx.StoreStandby) and ok.message.ok  # type: ignore[union-attr]
    assert holdings.held[KEEP].seq == 75


@pytest.mark.parametrize("claimed", [0, 1 << 53, (1 << 53) + 1, (1 << 63) - 1])
def test_a_standby_cannot_push_the_numbering_off_the_wire(claimed: int) -> None:
    rep, others, view = _rep()
    _to_ready(rep, others, view, replicate_seq=claimed)
    expected = claimed + 1 if claimed <= 1 << 53 else 1
    assert rep.request_seq() == expected


def test_a_newer_epoch_replaces_a_replica_only_with_its_hosts_record() -> None:
    """Found by the placement/migration sweep: a replicate at an epoch above the best
    record, from a member no record names, replaced the replica held for the keep's real
    host (its transfers then refused as older, a crash of the host finding no replica).
    A newer epoch is proven by its host's signed record, sent ahead of the replicate."""
    from keepmesh.protocol.membership.signing import Ed25519Signer
    me = _ids(1)[0]
    host, other = Ed25519Signer(b"\x05" * 32), Ed25519Signer(b"\x06" * 32)

    def record(s: Ed25519Signer, epoch: int) -> None:
        table.learn(sign_location(s, LocationStatement(
            keep=KEEP, owner=bytes(32), host=s.node_id, address="x:1", epoch=epoch,
            version=0, standbys=(me,), checkpoint_seq=0, checkpoint_at=0.0,
            state="running")))

    h, table = Holdings(me), LocationTable()
    record(host, 1)
    assert h.on_replicate(host.node_id, _replicate(1), table)[-1].message.ok  # type: ignore[union-attr]
    [refused] = h.on_replicate(other.node_id, _replicate(2), table)
    assert not refused.message.ok and "no record of epoch 2" in refused.message.reason  # type: ignore[union-attr]
    assert (h.held[KEEP].host, h.held[KEEP].epoch) == (host.node_id, 1)
    [pkg] = split(KEEP, 1, "package", 0, 0.0, b"pkg")
    assert isinstance(h.on_transfer(host.node_id, pkg, table)[0], fx.StoreStandby)
    record(other, 2)  # the keep moved: its new host's record proves epoch 2
    assert h.on_replicate(other.node_id, _replicate(2), table)[-1].message.ok  # type: ignore[union-attr]
    assert (h.held[KEEP].host, h.held[KEEP].epoch) == (other.node_id, 2)


def test_a_re_replicate_at_the_same_epoch_keeps_the_held_checkpoint_on_disk(
        tmp_path: object) -> None:
    """A host that restarted re-replicates at the same epoch; its standby keeps checkpoint
    n and says so (ack seq = n), and the host numbers on above it (§4). But the agent
    dropped checkpoint.bin on every StoreStandby("deployment"): a crash of the host
    before its next checkpoint then failed the restore of n (no file), an orphaned keep.
    Found reading the replicate path while sweeping replayed replicates. StoreStandby
    now carries the kept seq; the agent drops the checkpoint only when it is 0."""
    from pathlib import Path
    from keepmesh.agent.migration_service import MigrationService
    me, host, other = _ids(3)
    h, table = Holdings(me), LocationTable()
    h.on_replicate(host, _replicate(), table)
    h.on_transfer(host, split(KEEP, 1, "package", 0, 0.0, b"pkg")[0], table)
    stored = h.on_transfer(host, split(KEEP, 1, "checkpoint", 4, 9.0, b"c4")[0], table)
    svc = MigrationService.__new__(MigrationService)
    svc.root = Path(str(tmp_path))
    first = Holdings(me).on_replicate(host, _replicate(), LocationTable())[0]
    assert isinstance(first, fx.StoreStandby) and first.seq == 0
    svc._store_standby(first)
    for out in stored:
        if isinstance(out, fx.StoreStandby):
            svc._store_standby(out)
    d = svc.root / "standby" / KEEP
    assert (d / "checkpoint.bin").read_bytes() == b"c4"
    # the same host at the same epoch again (it restarted): n = 4 is kept, file and all
    again = h.on_replicate(host, _replicate(), table)
    assert isinstance(again[0], fx.StoreStandby) and again[0].seq == 4
    assert again[1].message.seq == 4  # type: ignore[union-attr]
    svc._store_standby(again[0])
    assert (d / "checkpoint.bin").read_bytes() == b"c4" and not (d / "package.bin").exists()
    # another host (or epoch): nothing of the old replica is kept
    fresh = Holdings(me).on_replicate(other, _replicate(), LocationTable())[0]
    assert isinstance(fresh, fx.StoreStandby) and fresh.seq == 0
    svc._store_standby(fresh)
    assert not (d / "checkpoint.bin").exists()


def test_a_refused_chunk_gives_its_objects_budget_back() -> None:
    """A keep that moves mid-transfer: its next chunk is refused (stale epoch), and the
    partial object is dropped with it instead of holding the in-flight budget."""
    from keepmesh.protocol.membership.signing import Ed25519Signer
    me, host = _ids(2)
    h, table = Holdings(me), LocationTable()
    h.on_replicate(host, _replicate(), table)
    chunks = split(KEEP, 1, "package", 0, 0.0, b"pkg", chunk_size=1)
    h.on_transfer(host, chunks[0], table)
    assert h.reassembler.held == 3
    s = Ed25519Signer(b"\x05" * 32)
    table.learn(sign_location(s, LocationStatement(
        keep=KEEP, owner=bytes(32), host=s.node_id, address="x:1", epoch=2, version=0,
        standbys=(), checkpoint_seq=0, checkpoint_at=0.0, state="running")))
    assert h.on_transfer(host, chunks[1], table) == []  # refused once, at the start
    assert h.reassembler.held == 0


def test_a_replicate_whose_deployment_is_another_keeps_is_refused() -> None:
    """The held deployment is what the standby reserves and appraises for the keep until
    a takeover: a replicate pairing one keep's id with another deployment (or with bytes
    that are no deployment) is refused at once, not first at restore. Both ways."""
    me, host = _ids(2)
    other = deployment("another-keep")
    for body, why in [(encode_payload(other), "deployment is not this keep's"),
                      (b"\x93garbage", "deployment undecodable")]:
        h = Holdings(me)
        bad = Replicate(keep=KEEP, epoch=1, deployment=body, package_size=3,
                        package_digest=hashlib.sha256(b"pkg").digest())
        [refusal] = h.on_replicate(host, bad, LocationTable())
        assert isinstance(refusal, fx.Send) and isinstance(refusal.message, Ack)
        assert not refusal.message.ok and refusal.message.reason == why
        assert KEEP not in h.held
    h = Holdings(me)
    out = h.on_replicate(host, _replicate(), LocationTable())  # its own deployment: taken
    assert out[-1].message.ok and KEEP in h.held  # type: ignore[union-attr]


def test_the_agent_deletes_a_dropped_standby_folder_and_nothing_else(tmp_path: object) -> None:
    """Found sweeping what a standby keeps: Holdings forgot a holding (keep stopped,
    moved on, taken over here) but `<data_dir>/migration/standby/<keep>/` stayed on disk
    for good. DropStandby deletes that folder, and only inside the standby dir."""
    from pathlib import Path
    from keepmesh.agent.migration_service import MigrationService
    svc = MigrationService.__new__(MigrationService)
    svc.root = Path(str(tmp_path))
    other = "0f" * 16
    for keep in (KEEP, other):
        svc._store_standby(fx.StoreStandby(keep, 1, "deployment", 0, 0.0, b"dep"))
        svc._store_standby(fx.StoreStandby(keep, 1, "checkpoint", 2, 1.0, b"ck"))
    base = svc.root / "standby"
    svc._drop_standby(KEEP)
    assert not (base / KEEP).exists()
    assert (base / other / "checkpoint.bin").read_bytes() == b"ck"  # within: kept
    svc._drop_standby(KEEP)  # already gone: nothing to do
    outside = svc.root / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"x")
    for bad in ("..", "../outside", other.upper(), other + "/", "0f" * 15):
        with pytest.raises(ProtocolError):
            svc._drop_standby(bad)
    assert (base / other).is_dir() and (outside / "precious").exists()
    link = base / ("1e" * 16)
    link.symlink_to(outside, target_is_directory=True)
    svc._drop_standby("1e" * 16)  # the link goes, never what it points at
    assert not link.exists() and not link.is_symlink() and (outside / "precious").exists()


async def test_migrate_attest_refuses_an_unknown_field() -> None:
    """migrate.attest named a field it did not know `invalid`, as every method does
    (specs/wire.md): it used to ignore it and answer with fresh evidence."""
    from types import SimpleNamespace
    from keepmesh.agent.migration_service import MigrationService
    from keepmesh.protocol.rpc import error_code

    async def fresh(nonce: bytes) -> tuple[object, int]:
        return SimpleNamespace(to_fields=dict), 1

    svc = MigrationService.__new__(MigrationService)
    svc.agent = SimpleNamespace(attester=SimpleNamespace(evidence=fresh))  # type: ignore[assignment]
    peer = SimpleNamespace(role="agent", peer_key=b"\x01" * 32)
    assert await svc._rpc_attest(peer, {"nonce": b"\0" * 32}) == {  # type: ignore[arg-type]
        "evidence": {}, "issued_at": 1}
    with pytest.raises(ProtocolError, match="migrate.attest: unknown field 'nonse'") as err:
        await svc._rpc_attest(peer, {"nonce": b"\0" * 32, "nonse": 1})  # type: ignore[arg-type]
    assert error_code(err.value) == "invalid"


def test_the_agent_sweeps_standby_folders_left_from_before_it_started(
        tmp_path: object) -> None:
    """Standby folders on disk when the agent starts were never removed: nothing reads
    them after a restart (holdings start empty), so they stayed for good. Building the
    engine now deletes those it does not hold, through `_drop_standby`: keep-id folders
    and symlinks (unlinked, never followed) directly in standby/, nothing else."""
    from pathlib import Path
    from types import SimpleNamespace
    from keepmesh.agent.migration_service import MigrationService
    svc = MigrationService.__new__(MigrationService)
    svc.root = Path(str(tmp_path)) / "migration"
    svc.agent = SimpleNamespace(identity=SimpleNamespace(seed=b"\x03" * 32),  # type: ignore[assignment]
                                address="10.0.0.9:7000", policy=STRICT)
    svc.mesh = SimpleNamespace(now=lambda: 0.0)  # type: ignore[assignment]
    old = "0f" * 16
    svc._store_standby(fx.StoreStandby(old, 1, "checkpoint", 2, 1.0, b"ck"))
    base = svc.root / "standby"
    outside = Path(str(tmp_path)) / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "precious").write_bytes(b"x")
    link = base / ("1e" * 16)
    link.symlink_to(outside / "keep", target_is_directory=True)
    for other in ("notakeep", "0F" * 16, "2d" * 15):  # not keep ids: left alone
        (base / other).mkdir()
    (base / ("3c" * 16)).write_bytes(b"a file, not a folder")
    svc._build(SimpleNamespace(machine=lambda cls: None))  # type: ignore[arg-type]
    assert svc.machine is not None
    assert not (base / old).exists()
    assert not link.is_symlink() and (outside / "keep" / "precious").exists()
    assert sorted(p.name for p in base.iterdir()) == sorted(
        ["notakeep", "0F" * 16, "2d" * 15, "3c" * 16])
