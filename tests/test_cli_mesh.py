"""The mesh verbs through the command line, as users and hidden tests drive them."""

from __future__ import annotations

import json
from typing import Any
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_thread import AgentThread
from keepmesh.agent.cli import main
from keepmesh.agent.config import AgentConfig
from keepmesh.agent.startup import build_agent


@pytest.fixture
def two_agents(tmp_path: Path, sim_root: Path) -> Iterator[list[AgentThread]]:
    a = AgentThread(build_agent(AgentConfig(listen="127.0.0.1:0", tee="sim", sim_root=sim_root,
                                            data_dir=tmp_path / "a")))
    b = AgentThread(build_agent(AgentConfig(listen="127.0.0.1:0", tee="sim", sim_root=sim_root,
                                            data_dir=tmp_path / "b", join=[a.address])))
    yield [a, b]
    b.stop()
    a.stop()


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> object:
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_peers_members_status_json(two_agents: list[AgentThread], tmp_path: Path,
                                   sim_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = two_agents
    flags = ["--agent", a.address, "--root", str(sim_root / "ark.pem"),
             "--key", str(tmp_path / "op.key"), "--json"]
    deadline = time.monotonic() + 20
    while True:
        peers = run_json(capsys, ["peers", *flags])
        members = run_json(capsys, ["members", *flags])
        assert isinstance(peers, list) and isinstance(members, list)
        alive = [m for m in members if m["state"] == "alive"]
        if (len(peers) == 1 and len(alive) == 2) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert peers[0]["identity"] == b.agent.identity.public_bytes.hex()
    assert {"fingerprint", "address", "tee", "measurement", "verified_at"} <= set(peers[0])
    assert peers[0]["tee"] == "sim" and peers[0]["address"] == b.address
    assert sorted(m["address"] for m in alive) == sorted([a.address, b.address])
    assert [m["self"] for m in members].count(True) == 1
    for m in members:
        assert {"name", "address", "state", "incarnation", "claims", "labels"} <= set(m)
        assert m["claims"]["tee"] == "sim"
    status = run_json(capsys, ["status", *flags])
    assert isinstance(status, dict) and status["tee"] == "sim"
    assert status["attested"]["verified"] is True


def test_client_verbs_fail_with_one_line(two_agents: list[AgentThread], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = two_agents
    capsys.readouterr()
    # No --root: the sim evidence does not chain to a pinned vendor root.
    assert main(["peers", "--agent", a.address, "--key", str(tmp_path / "op.key")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("keepmesh peers:")
    # join/leave need an admitted owner key.
    assert main(["leave", "--agent", a.address, "--key", str(tmp_path / "op.key"),
                 "--root", str(Path(a.agent.backend.root_dir) / "ark.pem")]) == 1  # type: ignore[attr-defined]
    assert "not an admitted owner of the agent" in capsys.readouterr().err
    assert main(["peers", "--agent", "not-an-address"]) == 1
    assert "HOST:PORT" in capsys.readouterr().err


@pytest.mark.parametrize("text, reason", [
    ('listen = 5\n', "key 'listen' must be str"),
    ('colour = "blue"\n', "unknown key 'colour'"),
    ('tee = "tpm"\n', "key 'tee' must be one of"),
    ('owners = ["abcd"]\n', "public key must be 32 bytes"),
    ('join = [1]\n', "list of strings"),
    ('not toml', "not valid TOML"),
    ('limits = 3\n', "key 'limits' must be dict"),
    ('[limits]\nbogus = 1\n', "unknown key 'limits.bogus'"),
    ('[limits]\nconnections_per_source = 0\n',
     "limits.connections_per_source: expected an integer in [1, 16384]"),
    ('[limits]\nconnections_per_source = true\n', "expected an integer"),
    ('[limits]\nhandshakes = 5000\n', "limits.handshakes: expected an integer in [1, 1024]"),
    ('[limits]\nconnections = 100\nconnections_per_source = 200\n',
     "limits.connections_per_source (200) exceeds limits.connections (100)"),
    ('[limits]\nhandshakes_per_source = 200\n', "exceeds limits.handshakes (128)"),
])
def test_agent_config_errors(tmp_path: Path, text: str, reason: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(text)
    assert main(["agent", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err.strip()
    assert reason in err and str(cfg) in err and len(err.splitlines()) == 1


def test_agent_refuses_bad_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "--tee", "sim", "--data-dir", str(tmp_path / "d"),
                 "--listen", "127.0.0.1:0"]) == 1
    assert "--sim-root" in capsys.readouterr().err
    assert main(["agent", "--listen", "nonsense"]) == 1
    assert "HOST:PORT" in capsys.readouterr().err


def test_limit_flags_and_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """[limits] from the file, --max-connections[-per-source] over it, with the same
    bounds either way; good values reach the agent's endpoint."""
    from keepmesh.agent.cli import build_parser
    from keepmesh.agent.cli.agent import config_from_args
    from keepmesh.agent.identity import Identity
    from keepmesh.agent.startup import apply_limits
    from keepmesh.agent.transport.quic import QuicEndpoint
    conf = tmp_path / "agent.toml"
    conf.write_text("[limits]\nconnections = 1000\nhandshakes_per_source = 32\n")

    def cfg(*flags: str):  # type: ignore[no-untyped-def]
        return config_from_args(build_parser().parse_args(["agent", "--config", str(conf),
                                                           *flags]))

    limits = cfg("--max-connections-per-source", "300").limits
    assert (limits.connections, limits.connections_per_source, limits.handshakes,
            limits.handshakes_per_source) == (1000, 300, 128, 32)
    ep = QuicEndpoint(Identity.generate())
    apply_limits(ep, limits)
    assert (ep.max_connections, ep.max_connections_per_host, ep.handshakes.limit,
            ep.max_handshakes_per_host) == (1000, 300, 128, 32)
    assert cfg("--max-connections", "2000", "--max-connections-per-source",
               "1500").limits.connections_per_source == 1500
    for flags, reason in [
        (["--max-connections-per-source", "1001"], "exceeds limits.connections (1000)"),
        (["--max-connections", "10"], "limits.connections_per_source (64) exceeds"),
        (["--max-connections-per-source", "abc"], "expected an integer in [1, 16384]"),
        (["--max-connections", "99999"], "expected an integer in [1, 16384]"),
        (["--max-connections-per-source", "-5"], "expected an integer"),
    ]:
        capsys.readouterr()
        assert main(["agent", "--config", str(conf), *flags]) == 1, flags
        err = capsys.readouterr().err.strip()
        assert reason in err and len(err.splitlines()) == 1, (flags, err)
        assert "--max-connections" in err, err


def _owner(tmp_path: Path) -> tuple[Path, bytes]:
    from keepmesh.agent.identity import read_private_key
    key = tmp_path / "owner.key"
    assert main(["keygen", str(key)]) == 0
    return key, read_private_key(key).public_key().public_bytes_raw()


def test_join_without_address_rejoins_through_the_configured_seeds(
        tmp_path: Path, sim_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The agent lost its mesh (its seed restarted): `keepmesh join --agent B` with no
    address makes B try the seeds it was started with again."""
    key, pub = _owner(tmp_path)

    def agent(name: str, listen: str = "127.0.0.1:0", join: list[str] | None = None
              ) -> AgentThread:
        return AgentThread(build_agent(AgentConfig(
            listen=listen, tee="sim", sim_root=sim_root, data_dir=tmp_path / name,
            owners=[pub], join=join or [])))

    a = agent("a")
    seed = a.address
    a.stop()  # the seed is gone when B starts...
    b = agent("b", join=[seed])
    a = agent("a", listen=seed)  # ...and back on the same address
    try:
        flags = ["--agent", b.address, "--root", str(sim_root / "ark.pem"), "--key", str(key)]
        assert run_json(capsys, ["join", *flags, "--json"]) == {"joined": [seed]}
        assert main(["join", *flags]) == 0
        assert capsys.readouterr().out.strip() == f"joined via {seed}"
        deadline = time.monotonic() + 20
        while True:
            members = run_json(capsys, ["members", *flags, "--json"])
            assert isinstance(members, list)
            if [m["state"] for m in members] == ["alive", "alive"] \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert sorted(m["address"] for m in members) == sorted([seed, b.address])
        assert all(m["state"] == "alive" for m in members)
    finally:
        b.stop()
        a.stop()


def test_join_without_address_and_nothing_to_join_through(
        tmp_path: Path, sim_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No seeds and no discovery: one line, exit 1, and the typed `not_found` on the
    RPC side; addresses that are given are still checked strictly, and an unknown field
    (a misspelt `addresses` used to re-join through the seeds) is `invalid`. Once discovery has
    found an agent, that is where a re-join goes."""
    import trio
    from keepmesh.agent import discovery
    from keepmesh.agent.client import open_client
    from keepmesh.agent.rpc import RpcError, call
    key, pub = _owner(tmp_path)
    a = AgentThread(build_agent(AgentConfig(listen="127.0.0.1:0", tee="sim",
                                            sim_root=sim_root, data_dir=tmp_path / "a")))
    b = AgentThread(build_agent(AgentConfig(listen="127.0.0.1:0", tee="sim",
                                            sim_root=sim_root, data_dir=tmp_path / "b",
                                            owners=[pub])))
    try:
        flags = ["--agent", b.address, "--root", str(sim_root / "ark.pem"), "--key", str(key)]
        capsys.readouterr()
        assert main(["join", *flags]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("keepmesh join:") and len(err.splitlines()) == 1
        assert "no seeds" in err

        async def codes() -> list[str]:
            client = await open_client(b.address, roots=[sim_root / "ark.pem"], key_path=key)
            assert client.session is not None
            out = []
            try:
                for body in ({}, {"addresses": []}, {"addresses": None},
                             {"addresses": a.address}, {"addresses": ["nonsense"]},
                             {"addresses": [a.address] * 17}, {"addresses": [7]},
                             {"address": [a.address]}, {"addresses": [a.address], "x": 1}):
                    try:
                        await call(client.session, "agent.join", body)
                        out.append("ok")
                    except RpcError as e:
                        out.append(e.code)
            finally:
                await client.aclose()
            return out
        assert trio.run(codes) == ["not_found", "not_found"] + ["invalid"] * 7
        found = discovery.attach(b.agent)  # what --discover wires (its run is not started)
        found.found["nowhere"] = "00" * 16  # fails (a fast stand-in for a dead agent)
        found.found[a.address] = a.agent.identity.fingerprint
        assert run_json(capsys, ["join", *flags, "--json"]) == {"joined": [a.address]}
    finally:
        b.stop()
        a.stop()


@pytest.mark.parametrize("joined", [None, "10.0.0.1:7400", [1, 2], [{"a": 1}]])
def test_join_reply_that_is_not_a_list_of_addresses_is_one_line(
        joined: object, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """An agent is untrusted input too: a malformed `joined` is one line, not a traceback."""
    import trio
    from keepmesh.agent.cli import main, mesh

    class _Client:
        async def call(self, method: str, body: dict[str, object]) -> dict[str, object]:
            return {"joined": joined}

    def fake_run_call(args: object, go: Any) -> int:
        return int(trio.run(go, _Client()))

    monkeypatch.setattr(mesh, "run_call", fake_run_call)
    assert main(["join", "127.0.0.1:7400"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "malformed joined list" in err and "internal" not in err
