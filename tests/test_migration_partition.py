"""A partition and heal between real agents leaves exactly one running copy.

Three agents in three network namespaces joined by a bridge (made and removed
here, as root). The keep's host is cut off; the majority's standby takes the
keep over at epoch 2 while the host still runs epoch 1 (a split brain, as
designed: availability on both sides). After the heal the epoch-1 copy is
fenced: exactly one copy runs, and the loser's state is kept aside.
Where namespaces cannot be made, the test fails and says why (it never
passes silently).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_keeps_e2e import owner_key
from test_migration_agents import POLICY, wait_for

pytestmark = pytest.mark.slow
SUBNET = "10.231.{}.{}"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


class Netns:
    """n namespaces ns_i with veth ns_i <-> a bridge in the root namespace."""

    def __init__(self, n: int) -> None:
        if os.geteuid() != 0:
            pytest.fail("partition test needs root to create network namespaces "
                        "(ip netns); run the suite as root")
        tag = uuid.uuid4().hex[:5]
        self.net = int(tag, 16) % 200 + 20
        self.bridge = f"kmbr{tag}"
        self.names = [f"km{tag}{i}" for i in range(n)]
        self.made: list[tuple[str, str]] = []
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self.made.append(("link", self.bridge))
            _ip("addr", "add", SUBNET.format(self.net, 254) + "/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, ns in enumerate(self.names):
                _ip("netns", "add", ns)
                self.made.append(("netns", ns))
                host_end = f"kv{tag}{i}"
                _ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0",
                    "netns", ns)
                self.made.append(("link", host_end))
                _ip("link", "set", host_end, "master", self.bridge)
                _ip("link", "set", host_end, "up")
                _ip("-n", ns, "addr", "add", self.address(i) + "/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except (subprocess.CalledProcessError, FileNotFoundError, OSError) as err:
            detail = getattr(err, "stderr", "") or str(err)
            self.close()
            pytest.fail(f"cannot build network namespaces for the partition test: {detail}")

    def address(self, i: int) -> str:
        return SUBNET.format(self.net, i + 1)

    def veth(self, i: int) -> str:
        return f"kv{self.bridge[4:]}{i}"

    def cut(self, i: int) -> None:
        _ip("link", "set", self.veth(i), "down")

    def heal(self, i: int) -> None:
        _ip("link", "set", self.veth(i), "up")

    def close(self) -> None:
        for kind, name in reversed(self.made):
            args = ["netns", "del", name] if kind == "netns" else ["link", "del", name]
            subprocess.run(["ip", *args], capture_output=True, timeout=10)
        self.made.clear()


class NsAgent:
    def __init__(self, ns: str, address: str, data_dir: Path, root: Path, cfg: Path,
                 join: list[str], owner: str) -> None:
        self.address = address
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "keepmesh.agent.cli", "agent",
               "--config", str(cfg), "--tee", "sim", "--sim-root", str(root),
               "--data-dir", str(data_dir), "--listen", address, "--owner", owner]
        for seed in join:
            cmd += ["--join", seed]
        self.log_path = data_dir.with_name(data_dir.name + ".log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._log)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@pytest.fixture
def netns() -> Iterator[Netns]:
    ns = Netns(3)
    yield ns
    ns.close()


def test_partition_then_heal_leaves_exactly_one_copy(netns: Netns, tmp_path: Path,
                                                     sim_root: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from keepmesh.agent.cli import main
    from test_migration_agents import Mesh

    key, pub = owner_key(tmp_path)
    cfg = tmp_path / "agent.toml"
    cfg.write_text('profile = "local"\n')
    addrs = [f"{netns.address(i)}:7946" for i in range(3)]
    agents = [NsAgent(netns.names[i], addrs[i], tmp_path / f"n{i}", sim_root, cfg,
                      [addrs[0]] if i else [], pub) for i in range(3)]
    mesh = Mesh.__new__(Mesh)
    mesh.tmp, mesh.root, mesh.key, mesh.procs = tmp_path, sim_root, key, agents  # type: ignore[assignment]
    try:
        for a in agents:
            wait_for(lambda a=a: mesh._up(a), 60, f"agent {a.address}")  # type: ignore[arg-type]
        host = agents[0]
        keep = mesh.deploy(capsys, host, POLICY)  # type: ignore[arg-type]
        for _ in range(2):
            mesh.call(capsys, host, keep, "inc")  # type: ignore[arg-type]

        def ready() -> Any:
            w = mesh.where(agents[1], keep)  # type: ignore[arg-type]
            return w and w["host"] == host.address and w["standbys"] and \
                w["last_checkpoint"]["seq"] >= 1 and w

        wait_for(ready, 40, "a standby with a checkpoint")

        def running_copies() -> list[str]:
            out = []
            for a in agents:
                capsys.readouterr()
                rc = main(["keeps", "--json", *mesh.flags(a)])  # type: ignore[arg-type]
                got = capsys.readouterr()
                if rc != 0:
                    continue
                for k in json.loads(got.out)["keeps"]:
                    # a copy running on `a` (keeps.list also lists the keep where it
                    # runs elsewhere, with its name and kind when `a` has a copy)
                    if k["keep"] == keep and k.get("host") == a.address and \
                            k["state"] == "running":
                        out.append(a.address)
            return out

        netns.cut(0)
        moved = wait_for(lambda: (w := mesh.where(agents[1], keep))  # type: ignore[arg-type]
                         and w["host"] != host.address and w["state"] == "running" and w,
                         60, "the majority to take the keep over")
        assert moved["epoch"] == 2
        netns.heal(0)
        healed = time.monotonic()
        wait_for(lambda: running_copies() == [moved["host"]], 90, "exactly one running copy")
        print(f"duplicate gone {time.monotonic() - healed:.1f} s after the heal")
        fenced = list((host.data_dir / "migration" / "fenced").glob(f"{keep}-e1.ckpt"))
        assert fenced, "the losing copy's state was not kept aside"
        capsys.readouterr()
        rc = main(["status", "--json", *mesh.flags(host)])  # type: ignore[arg-type]
        events = json.loads(capsys.readouterr().out)["events"]
        assert rc == 0 and any(e["event"] == "KeepFenced" for e in events)
    finally:
        for a in agents:
            a.stop()
