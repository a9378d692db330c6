"""An agent running in its own thread (its own trio run), so CLI code can be
driven from the test thread exactly as a user would."""

from __future__ import annotations

import threading

import trio
from keepmesh.agent.node import Agent


class AgentThread:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.address = ""
        self.bytes_in = 0
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        orig = agent.endpoint._datagram_received

        def counting(data: bytes, addr: tuple[str, int]) -> None:
            self.bytes_in += len(data)
            orig(data, addr)

        agent.endpoint._datagram_received = counting  # type: ignore[method-assign]
        self.thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self.thread.start()
        assert self._ready.wait(30)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self.address = await nursery.start(self.agent.run)
            self._ready.set()

    def stop(self) -> None:
        assert self._token is not None
        trio.from_thread.run_sync(self.agent.shutdown, trio_token=self._token)
        self.thread.join(10)
