"""Handshake floods: garbage Initials and half-open ClientHellos from one source
must not lock good clients out (a good client's `agent.peers` is answered
within 5 s during and after), nor flood the log."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from hostile import Flooder, good_client_served, make_agent

pytestmark = pytest.mark.slow  # a flooding process beside the agent

HANDSHAKES_PER_HOST = 16  # specs/wire.md "Limits"


@pytest.mark.parametrize("mode,rate", [("garbage", 800.0), ("half-open", 250.0)])
async def test_initial_flood_does_not_lock_out_good_clients(
        nursery: trio.Nursery, tmp_path: Path, sim_root: Path, mode: str, rate: float,
        caplog: pytest.LogCaptureFixture) -> None:
    agent = make_agent(tmp_path, sim_root, "a")
    addr = await nursery.start(agent.run)
    flooder = Flooder(addr, seconds=8.0, rate=rate, mode=mode)
    await trio.sleep(2.0)  # let the flood fill whatever it can
    for _ in range(3):
        took = await good_client_served(addr, sim_root, tmp_path / "good.key")
        assert took < 5.0
        inbound = [c for c in agent.endpoint.connections if not c.is_client]
        assert len(inbound) <= HANDSHAKES_PER_HOST + 2
        await trio.sleep(0.5)
    sent = await trio.to_thread.run_sync(flooder.wait)
    assert sent > 300  # the flood really ran (half-open ClientHellos are costly to make)
    await good_client_served(addr, sim_root, tmp_path / "good.key")
    c = getattr(agent.endpoint, "counters", {})
    # No state for them: answered with a stateless Retry (address validation under
    # load) or ignored once found not to hold a ClientHello.
    assert c["initials_ignored"] + c["retries_sent"] > sent // 2
    assert c["retries_sent"] > 0
    flood_lines = [r for r in caplog.records if "127.0.0.2" in r.getMessage()]
    assert len(flood_lines) < 40  # rate-limited: a few lines and summaries, not thousands


async def test_retry_path_admits_a_real_client(nursery: trio.Nursery, tmp_path: Path,
                                               sim_root: Path) -> None:
    """With address validation always on, a real client completes through Retry."""
    agent = make_agent(tmp_path, sim_root, "a")
    agent.endpoint.retry_threshold = 0
    addr = await nursery.start(agent.run)
    await good_client_served(addr, sim_root, tmp_path / "good.key")
    assert agent.endpoint.counters["retries_sent"] >= 1
