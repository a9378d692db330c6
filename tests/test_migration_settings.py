"""`[migration] standbys, checkpoint_s`: parsed from keepmesh.toml, signed inside the
manifest, bounded on the wire, and actually used by the engine (specs/migration.md §1)."""

from __future__ import annotations

import dataclasses

import pytest
from keepmesh.protocol.deployment import (
    Deployment,
    parse_manifest_toml,
    verify_deployment,
)
from keepmesh.protocol.errors import ProtocolError, VerificationError
from keepmesh.protocol.migration.engine import settings_of
from keepmesh.protocol.migration.settings import MigrationSettings, MigrationSpec
from keepmesh.protocol.wire import decode_payload, encode_payload
from migration_net import Net, deployment


def _toml(body: str) -> str:
    return 'name = "counter"\n[migration]\n' + body + "\n"


def test_toml_table_is_parsed_into_the_manifest() -> None:
    m, _, _ = parse_manifest_toml(_toml("standbys = 2\ncheckpoint_s = 1.5"))
    assert m.migration == MigrationSpec(standbys=2, checkpoint_s=1.5)
    m, _, _ = parse_manifest_toml('name = "counter"\n')
    assert m.migration is None  # absent: defaults, and the same signed bytes as before
    assert "migration" not in m.to_fields()


@pytest.mark.parametrize("body, field", [
    ("standbys = 9", "migration.standbys"),
    ("standbys = -1", "migration.standbys"),
    ("standbys = true", "migration.standbys"),
    ("standbys = 1.5", "migration.standbys"),
    ("checkpoint_s = 0.1", "migration.checkpoint_s"),
    ("checkpoint_s = 7200", "migration.checkpoint_s"),
    ("checkpoint_s = nan", "migration.checkpoint_s"),
    ("checkpoint_s = \"5\"", "migration.checkpoint_s"),
    ("replicas = 2", "migration.replicas"),
])
def test_impossible_values_name_the_field(body: str, field: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_manifest_toml(_toml(body))
    assert field in err.value.reason and "\n" not in err.value.reason


def test_values_out_of_bounds_on_the_wire_are_refused() -> None:
    d = deployment("c", migration={"standbys": 2, "checkpoint_s": 1.0})
    fields = d.to_fields()
    for bad in ({"standbys": 200, "checkpoint_s": 1.0}, {"standbys": 1, "checkpoint_s": 0.0},
                {"standbys": 1}, {"standbys": 1, "checkpoint_s": 1.0, "extra": 1}):
        fields["manifest"]["migration"] = bad
        with pytest.raises(ProtocolError):
            Deployment.from_fields(fields)


def test_settings_are_signed_with_the_deployment() -> None:
    d = deployment("c", migration={"standbys": 3, "checkpoint_s": 2.0})
    verify_deployment(d, [d.owner_key])
    assert settings_of(d) == MigrationSettings(standbys=3, checkpoint_s=2.0)
    # A relay lowering the standbys (or dropping the table) breaks the owner's signature.
    for spec in (MigrationSpec(standbys=0, checkpoint_s=2.0), None):
        forged = dataclasses.replace(d, manifest=dataclasses.replace(d.manifest,
                                                                     migration=spec))
        with pytest.raises(VerificationError):
            verify_deployment(forged, [d.owner_key])
    again = decode_payload(encode_payload(d), 1 << 20, (Deployment,))
    assert isinstance(again, Deployment) and again.manifest.migration == d.manifest.migration


def test_defaults_without_the_table() -> None:
    assert settings_of(deployment("c")) == MigrationSettings(standbys=1, checkpoint_s=5.0)


def test_engine_keeps_k_standbys_and_checkpoints_at_the_signed_period() -> None:
    net = Net(5)
    host = net.nodes[0]
    keep = net.deploy(host, "counter", migration={"standbys": 3, "checkpoint_s": 1.0})
    net.call(keep)
    net.run(3.5)
    r = host.engine.running[keep]
    assert len(r.replication.ready()) == 3
    loc = net.nodes[4].engine.locations.get(keep)
    assert loc is not None and len(loc.standbys) == 3
    assert r.replication.last_checkpoint()[0] >= 2     # a checkpoint every 1 s, not 5 s
    # and with the default table: one standby, no checkpoint within 3.5 s of the first
    other = net.deploy(net.nodes[1], "other")
    net.run(3.5)
    assert len(net.nodes[1].engine.running[other].replication.ready()) == 1


def test_zero_standbys_means_the_keep_cannot_move() -> None:
    net = Net(3)
    host = net.nodes[0]
    keep = net.deploy(host, "counter", migration={"standbys": 0, "checkpoint_s": 5.0})
    net.run(6.0)
    assert host.engine.running[keep].replication.ready() == ()
    net.crash(host)
    net.run(5.0)
    assert net.running(keep) == []
