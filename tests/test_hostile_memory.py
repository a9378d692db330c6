"""Memory stays bounded whatever peers send: frames that declare 24 MiB on many
streams and connections, and floods of connections. The agent runs in its own
process so its RSS is measured alone (target: <= 150 MB)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import trio
from agent_proc import AgentProc
from hostile import (
    attacker_endpoint,
    attacker_session,
    good_client_served,
    make_agent,
    request_frame,
)
from keepmesh.agent.session import ChannelFailed
from keepmesh.agent.transport.limits import AdmissionLimits
from keepmesh.agent.transport.quic import ConnectionClosed, QuicEndpoint, QuicStream
from keepmesh.protocol.channel import EvidenceCache

pytestmark = pytest.mark.slow

RSS_LIMIT_MB = 150.0
PER_HOST_IN_TEST = 8


class RssSampler:
    def __init__(self, agent: AgentProc) -> None:
        self.agent = agent
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and self.agent.alive:
            self.peak = max(self.peak, self.agent.rss_mb())
            time.sleep(0.1)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(5)
        return self.peak


async def test_large_frames_on_many_streams_keep_rss_bounded(tmp_path: Path,
                                                            sim_root: Path) -> None:
    agent = AgentProc(tmp_path / "victim", sim_root)
    try:
        base = agent.rss_mb()
        sampler = RssSampler(agent)
        # keeps.deploy takes large bodies from any client (its handler checks the
        # deployment's owner), so these frames pass the method check: only the
        # buffer budgets stand between them and the agent's memory.
        frame = request_frame("keeps.deploy", {"junk": b"\0" * (24 * 1024 * 1024 - 512)})
        replies: list[bytes] = []
        async with trio.open_nursery() as nursery:
            ep = await attacker_endpoint(nursery)
            sessions = [await attacker_session(ep, agent.address, sim_root) for _ in range(3)]

            async def one(stream: QuicStream) -> None:
                try:
                    replies.append(await stream.receive_some())
                except ConnectionClosed:
                    replies.append(b"reset")

            with trio.fail_after(90):
                async with trio.open_nursery() as calls:
                    for s in sessions:
                        for _ in range(4):
                            stream = s.conn.open_stream()
                            stream.send(frame, end=True)
                            calls.start_soon(one, stream)
                    await trio.sleep(2)
                    await good_client_served(agent.address, sim_root, tmp_path / "good.key")
            nursery.cancel_scope.cancel()
        peak = sampler.stop()
        print(f"agent RSS: {base:.0f} MB at rest, {peak:.0f} MB peak under attack")
        assert agent.alive
        assert len(replies) == 12
        assert any(b"busy" in r or b"budget" in r for r in replies), replies
        assert peak <= RSS_LIMIT_MB, f"agent RSS peaked at {peak:.0f} MB (from {base:.0f})"
        await good_client_served(agent.address, sim_root, tmp_path / "good.key")
    finally:
        agent.stop()


async def test_connection_flood_from_one_source(nursery: trio.Nursery, tmp_path: Path,
                                               sim_root: Path) -> None:
    """One source opens attested client connections until refused: it gets at most
    the per-source limit, and a good client on another address is served. (In
    process, with the limit lowered to keep the test short: the rule, not the
    number, is under test; the number is in specs/wire.md.)"""
    agent = make_agent(tmp_path, sim_root, "a",
                       limits=AdmissionLimits(connections_per_source=PER_HOST_IN_TEST))
    addr = await nursery.start(agent.run)
    ep = await attacker_endpoint(nursery)
    ep.handshake_timeout = 3.0  # refused Initials are dropped: the dial times out (a real
    # handshake on a loaded 2-core machine can take over 0.5 s: it must not count as refused)
    opened = refused = 0
    with trio.fail_after(120):
        for _ in range(PER_HOST_IN_TEST + 4):
            try:
                await attacker_session(ep, addr, sim_root)
                opened += 1
            except (ChannelFailed, ConnectionClosed):
                refused += 1
        took = await good_client_served(addr, sim_root, tmp_path / "good.key")
    assert (opened, refused) == (PER_HOST_IN_TEST, 4)
    assert agent.endpoint.counters["connections_refused"] >= 4
    assert took < 5.0


IDLE_SAFE_S = 45.0  # well inside the 60 s QUIC idle timeout of a held, idle session


async def open_sessions(ep: QuicEndpoint, addr: str, root: Path, n: int) -> tuple[int, int]:
    """Open n attested client sessions one after another, all held open (an unattested
    connection would be closed by the agent after its channel timeout and free its
    slot); (opened, refused)."""
    opened = refused = 0
    cache = EvidenceCache()
    for _ in range(n):
        try:
            await attacker_session(ep, addr, root, cache)
            opened += 1
        except (ChannelFailed, ConnectionClosed):
            refused += 1
    return opened, refused


async def test_per_source_limit_is_configuration(nursery: trio.Nursery, tmp_path: Path,
                                                 sim_root: Path) -> None:
    """The default admits 64 connections from one source and refuses the 65th; an
    agent whose config raises `[limits] connections_per_source` (a local mesh of more
    than 64 agents on one loopback address) admits more from that one source, and
    still refuses past its own limit."""
    from keepmesh.agent.config import load_config
    from keepmesh.agent.startup import build_agent
    default = make_agent(tmp_path, sim_root, "default")
    conf = tmp_path / "raised.toml"
    conf.write_text('listen = "127.0.0.1:0"\ntee = "sim"\n'
                    f'sim_root = "{sim_root}"\ndata_dir = "{tmp_path / "raised"}"\n'
                    "[limits]\nconnections_per_source = 70\n")
    raised = build_agent(load_config(conf))
    assert raised.endpoint.max_connections_per_host == 70
    ep = await attacker_endpoint(nursery)
    ep.handshake_timeout = 1.5  # a refused Initial is dropped: the dial times out (an
    # accepted attested handshake on loopback takes ~0.1 s; 4 refusals wait 6 s, not 12)
    with trio.fail_after(300):
        for agent, n, want in ((default, 66, (64, 2)), (raised, 72, (70, 2))):
            addr = await nursery.start(agent.run)
            t0 = trio.current_time()
            got = await open_sessions(ep, addr, sim_root, n)
            if trio.current_time() - t0 > IDLE_SAFE_S:
                pytest.skip("machine too loaded: opening the sessions outlasted the QUIC idle "
                            "timeout, so the first ones were closed and freed their slots")
            assert got == want
    assert default.endpoint.counters["connections_refused"] >= 2
    assert raised.endpoint.counters["connections_refused"] >= 2


async def test_full_table_evicts_from_the_heaviest_source_only_for_a_real_client(
        nursery: trio.Nursery, tmp_path: Path, sim_root: Path) -> None:
    """Connections in total: when the table is full, a newcomer from a light source
    gets in by closing the newest connection of the heaviest source; garbage
    Initials never evict anyone."""
    from hostile import Flooder
    agent = make_agent(tmp_path, sim_root, "a")
    agent.endpoint.max_connections = 6
    addr = await nursery.start(agent.run)
    ep = await attacker_endpoint(nursery)
    held = [await attacker_session(ep, addr, sim_root) for _ in range(6)]
    flooder = Flooder(addr, seconds=1.0, rate=200.0, mode="garbage")
    await trio.to_thread.run_sync(flooder.wait)
    assert not any(s.conn.closed.is_set() for s in held)  # garbage evicted nobody
    await good_client_served(addr, sim_root, tmp_path / "good.key")
    await trio.sleep(0.5)
    assert sum(s.conn.closed.is_set() for s in held) == 1  # the attacker's newest went
    assert held[-1].conn.closed.is_set()
