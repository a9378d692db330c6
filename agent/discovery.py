"""LAN discovery (`keepmesh agent --discover`): mDNS/DNS-SD, like Serf's `-discover`.

Each agent announces `_keepmesh._udp.local.` (instance name = its identity
fingerprint, TXT: fp, protocol, version) with the address it listens on, and
browses for the others. A discovered agent is joined exactly as
`keepmesh join` would: the channel attests it first (evidence verified
against our roots and policy), then SWIM joins through it. mDNS only says
*where* an agent may be; it grants no trust, so a spoofed announcement costs
one failed attestation (rate limited per address).

Why zeroconf in the base install: discovery is an edge/LAN feature, the
library is pure Python with compiled speed-ups where wheels exist (a
py3-none-any wheel everywhere else, arm64 included), and with ifaddr it is
the only extra dependency.

The announcement goes out on the interface the agent listens on (all
interfaces when it listens on 0.0.0.0), so two agents on 127.0.0.1 find
each other without touching the LAN (tests/test_discovery.py).
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, cast

import trio

if TYPE_CHECKING:
    from keepmesh.agent.node import Agent

log = logging.getLogger("keepmesh.discovery")

SERVICE_TYPE = "_keepmesh._udp.local."
MAX_PENDING = 64          # discovered addresses waiting to be dialled
REDIAL_AFTER_S = 30.0     # one attempt per address per this long (spoofed ads cost little)
MAX_TXT = 64              # characters kept from any TXT value
MAX_REJOIN = 16           # discovered addresses offered to a re-join (the newest)
# Announcements are unauthenticated and anyone on the LAN can send a new address each
# time: what is remembered of them (found, last dial) is bounded, the oldest forgotten.
MAX_REMEMBERED = 1024


def _interfaces(listen_host: str) -> list[str] | None:
    """The interface addresses to use: the listening one, or None (= all) for a wildcard."""
    try:
        ip = ipaddress.ip_address(listen_host)
    except ValueError:
        return None
    if ip.is_unspecified:
        return None
    return [str(ip)]


class Discovery:
    """Announce this agent and join the ones announced on the LAN."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.found: dict[str, str] = {}  # address -> fingerprint (what was announced)
        self._last_try: dict[str, float] = {}
        self._send: trio.MemorySendChannel[str] | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.zc: Any = None

    async def run(self, nursery: trio.Nursery) -> None:
        from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, Zeroconf

        host, _, port = self.agent.address.rpartition(":")
        host = host.strip("[]")
        interfaces = _interfaces(host)
        try:
            v6 = ipaddress.ip_address(host).version == 6
        except ValueError:
            v6 = False
        send, recv = trio.open_memory_channel[str](MAX_PENDING)
        self._send, self._token = send, trio.lowlevel.current_trio_token()
        fp = self.agent.identity.fingerprint
        try:
            self.zc = await trio.to_thread.run_sync(lambda: Zeroconf(
                interfaces=interfaces if interfaces else __import__("zeroconf").InterfaceChoice.All,
                ip_version=IPVersion.V6Only if v6 else IPVersion.V4Only))
        except OSError as err:
            log.warning("discovery off: cannot open the mDNS socket: %s", err.strerror or err,
                        extra={"event": "discovery.failed"})
            return
        try:
            addresses = [socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET,
                                          ip) for ip in (interfaces or self._local_ips(v6))]
            from keepmesh.protocol.wire import PROTOCOL_VERSION

            from keepmesh import __version__
            info = ServiceInfo(SERVICE_TYPE, f"{fp}.{SERVICE_TYPE}", addresses=addresses,
                               port=int(port), properties={
                                   "fp": fp, "protocol": str(PROTOCOL_VERSION),
                                   "version": __version__})
            await trio.to_thread.run_sync(self.zc.register_service, info)
            log.info("announcing %s on %s by mDNS", self.agent.address,
                     ", ".join(interfaces) if interfaces else "all interfaces",
                     extra={"event": "discovery.announced",
                            "fields": {"address": self.agent.address}})
            browser = ServiceBrowser(self.zc, SERVICE_TYPE, handlers=[self._on_change])
            try:
                async for address in recv:
                    nursery.start_soon(self._join, address)
            finally:
                browser.cancel()
        finally:
            zc, self.zc = self.zc, None
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(zc.close)

    def addresses(self) -> list[str]:
        """Where a re-join (`keepmesh join` with no address) may go: the newest agents
        announced, ourselves excluded. Each is still attested before it is joined."""
        newest = (a for a in reversed(self.found) if a != self.agent.address)
        return list(itertools.islice(newest, MAX_REJOIN))

    @staticmethod
    def _local_ips(v6: bool) -> list[str]:
        import ifaddr
        out = []
        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                if isinstance(ip.ip, tuple) == v6 and not (v6 and ip.ip[0].startswith("fe80")):
                    out.append(ip.ip[0] if v6 else str(ip.ip))
        return out[:16]

    # -- zeroconf thread ----------------------------------------------------
    def _on_change(self, zeroconf: Any, service_type: str, name: str,
                   state_change: Any) -> None:
        from zeroconf import ServiceStateChange
        if state_change is not ServiceStateChange.Added and \
                state_change is not ServiceStateChange.Updated:
            return
        info = zeroconf.get_service_info(service_type, name, timeout=2000)
        if info is None or not info.port:
            return
        fp = (info.properties or {}).get(b"fp", b"") or b""
        fp_text = fp[:MAX_TXT].decode("ascii", "replace")
        if fp_text == self.agent.identity.fingerprint:
            return  # ourselves
        for ip in info.parsed_addresses()[:4]:
            address = f"[{ip}]:{info.port}" if ":" in ip else f"{ip}:{info.port}"
            token, send = self._token, self._send
            if token is None or send is None:
                return
            try:
                token.run_sync_soon(self._offer, address, fp_text)
            except trio.RunFinishedError:
                return

    # -- trio thread --------------------------------------------------------
    def _offer(self, address: str, fp: str) -> None:
        found = self.found
        found.pop(address, None)
        found[address] = fp  # newest last (addresses() offers the newest)
        if len(found) > MAX_REMEMBERED:
            del found[next(iter(found))]
        now = time.monotonic()
        if now - self._last_try.get(address, -REDIAL_AFTER_S) < REDIAL_AFTER_S:
            return
        tries = self._last_try
        if len(tries) >= MAX_REMEMBERED:  # only tries within REDIAL_AFTER_S matter
            self._last_try = tries = {a: t for a, t in tries.items()
                                      if now - t < REDIAL_AFTER_S}
            while len(tries) >= MAX_REMEMBERED:
                del tries[next(iter(tries))]
        if address == self.agent.address or self.agent.session_to_address(address) is not None:
            return
        self._last_try[address] = now
        assert self._send is not None
        try:
            self._send.send_nowait(address)
        except trio.WouldBlock:
            pass  # a flood of announcements: the rest wait for the next one

    async def _join(self, address: str) -> None:
        """Attest, then join through it: the same path as `keepmesh join`."""
        join = self.agent.methods.get("agent.join")
        log.info("found agent at %s by mDNS; attesting it", address,
                 extra={"event": "discovery.found", "fields": {"address": address}})
        try:
            if join is not None:
                await join(cast(Any, None), {"addresses": [address]})  # handler ignores ctx
            else:
                await self.agent.connect(address)
        except Exception as err:  # noqa: BLE001 - one discovered address must not stop discovery
            reason = getattr(err, "reason", None) or str(err) or type(err).__name__
            log.warning("discovered %s not joined: %s", address, reason,
                        extra={"event": "discovery.rejected", "fields": {"address": address}})


def attach(agent: Agent) -> Discovery:
    """Run discovery as one of the agent's services (started once it is bound)."""
    d = Discovery(agent)
    agent.services.append(d.run)
    agent.join_sources.append(d.addresses)
    return d
