"""Migration on loopback between real agent processes, against baselines from the same run.

    python bench/migration.py [--state-mib 10] [--calls-s 20]

drain: `agent.drain` of an agent hosting one keep with STATE MiB of durable
state (final checkpoint with the keep paused, hand-over, restore). drain_s runs
from sending the drain command until (a) the keep answers a call at its new
host with its whole state intact (every value checked inside the keep) and (b)
the old host's copy is stopped. Baselines in the same run: bulk_transfer_s =
one RPC carrying the same number of bytes over an attested agent session to a
sink (bench/bulk.py's server, median of 3): what the wire alone costs;
chunked_transfer_s = the same bytes as `keeps.call` messages of one transfer
chunk (768 KiB) each, one after the other, from a client to the old host.
Target: <= 1 s for 10 MB; nothing lost.

crash: kill -9 of a counter's host while a client increments it at CALLS_S
calls/s. detection = kill -> a survivor's membership says dead (its failure
detector, the baseline), for the first survivor and for the successor (members
time out on their own, so they differ); recovery_s = kill -> a survivor reports
the keep running elsewhere (migrate.where; the successor itself, usually).
Target: recovery <= detection + 2 s.
lost = increments acknowledged before the kill minus the value read after
recovery, also in checkpoint intervals (target <= 1).

Prints one JSON document (with the load average, the machine being shared).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from keepmesh.agent.cli import main as cli_main  # noqa: E402
from keepmesh.agent.client import open_client  # noqa: E402
from keepmesh.agent.localmesh import AgentProcess  # noqa: E402
from keepmesh.agent.tee.sim import init_sim_root  # noqa: E402
from keepmesh.protocol.migration.messages import MAX_CHUNK  # noqa: E402
from keepmesh.protocol.migration.settings import DEFAULT_CHECKPOINT_S  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
POLICY = 'allow_sim = true\nallowed_tee = ["sim"]\n'
BIGSTATE_WAT = """
(module
  (import "keepmesh" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i32)))
  (import "keepmesh" "kv_put" (func $kv_put (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 16)
  (data (i32.const 0) "key-")
  (func (export "alloc") (param $len i32) (result i32) (i32.const 1024))
  ;; "f" N: write N values of 64 KiB (key "key-"+i, value starts with i+7);
  ;; "c" N: read all N back, reply "1" only if every one is whole and right; else: no-op
  (func (export "handle") (param $ptr i32) (param $len i32) (result i64)
    (local $i i32) (local $n i32) (local $op i32) (local $ok i32)
    (local.set $op (i32.load8_u (i32.const 1024)))
    (local.set $n (i32.load8_u (i32.const 1025)))
    (if (i32.eq (local.get $op) (i32.const 102))
      (then
        (loop $fill
          (i32.store (i32.const 4) (local.get $i))
          (i32.store (i32.const 65536) (i32.add (local.get $i) (i32.const 7)))
          (drop (call $kv_put (i32.const 0) (i32.const 8) (i32.const 65536) (i32.const 65536)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $fill (i32.lt_u (local.get $i) (local.get $n))))
        (return (i64.const 0))))
    (if (i32.ne (local.get $op) (i32.const 99)) (then (return (i64.const 0))))
    (local.set $ok (i32.const 1))
    (loop $check
      (i32.store (i32.const 4) (local.get $i))
      (if (i32.ne (call $kv_get (i32.const 0) (i32.const 8) (i32.const 131072) (i32.const 65536))
                  (i32.const 65536))
        (then (local.set $ok (i32.const 0))))
      (if (i32.ne (i32.load (i32.const 131072)) (i32.add (local.get $i) (i32.const 7)))
        (then (local.set $ok (i32.const 0))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $check (i32.lt_u (local.get $i) (local.get $n))))
    (i32.store8 (i32.const 310) (i32.add (i32.const 48) (local.get $ok)))
    (i64.or (i64.shl (i64.const 310) (i64.const 32)) (i64.const 1))))
"""


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "root"
        init_sim_root(self.root, key_bits=2048)
        self.key = tmp / "owner.key"
        out, _ = self.cli("keygen", str(self.key))
        self.pub = out.split("public key ")[1].split()[0]
        self.policy = tmp / "policy.toml"
        self.policy.write_text(POLICY)
        self.procs: list[AgentProcess] = []

    def cli(self, *argv: str) -> tuple[str, int]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli_main(list(argv))
        if rc != 0:
            raise RuntimeError(f"keepmesh {argv[0]}: {err.getvalue().strip()}")
        return out.getvalue() + err.getvalue(), rc

    def start(self, n: int) -> None:
        extra = ["--owner", self.pub]
        self.procs.append(AgentProcess(self.tmp / "a0", self.root, extra=extra))
        for i in range(1, n):
            self.procs.append(AgentProcess(self.tmp / f"a{i}", self.root,
                                           join=[self.procs[0].address], extra=extra))

    def stop(self) -> None:
        for p in self.procs:
            p.stop()

    async def client(self, p: AgentProcess) -> Any:
        return await open_client(p.address, roots=[self.root / "ark.pem"], key_path=self.key)

    async def call(self, p: AgentProcess, method: str, body: dict[str, Any]) -> Any:
        c = await self.client(p)
        try:
            return await c.call(method, body)
        finally:
            await c.aclose()

    def flags(self, p: AgentProcess) -> list[str]:
        return ["--agent", p.address, "--key", str(self.key), "--root",
                str(self.root / "ark.pem")]

    async def deploy(self, p: AgentProcess, workload: Path) -> str:
        out, _ = await trio.to_thread.run_sync(
            lambda: self.cli("deploy", str(workload), "--policy", str(self.policy), "--json",
                             *self.flags(p)))
        return str(json.loads(out[out.index("{"):])["keep"])

    async def where(self, p: AgentProcess, keep: str) -> dict[str, Any] | None:
        reply = await self.call(p, "migrate.where", {})
        for k in reply["keeps"]:
            if k["keep"] == keep:
                return dict(k)
        return None

    async def wait(self, pred: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = await pred()
            if got:
                return got
            await trio.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}")

    async def alive_all(self) -> None:
        async def ok() -> bool:
            for p in self.procs:
                ms = (await self.call(p, "members.list", {}))["members"]
                if sum(1 for m in ms if m["state"] == "alive") != len(self.procs):
                    self.last_view = [(m["address"], m["state"]) for m in ms]
                    return False
            return True
        try:
            await self.wait(ok, 60, "all members alive")
        except RuntimeError:
            raise RuntimeError(f"members not all alive: {self.last_view}") from None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc): on a shared machine the
    CPU a drain costs is steadier than its wall time."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bulk_baseline(b: Bench, size: int, rounds: int = 3) -> tuple[float, float]:
    """Median seconds for one RPC of `size` bytes over an attested agent session to a
    sink agent process (bench/bulk.py's server): the wire, channel and RPC framing alone;
    and the median CPU seconds both ends spent on it."""
    from bulk import SINK, _start  # bench/bulk.py
    from keepmesh.agent.config import AgentConfig
    from keepmesh.agent.rpc import call
    from keepmesh.agent.startup import build_agent

    proc, address = _start(["--serve", "attested", "--tmp", str(b.tmp)])
    try:
        agent = build_agent(AgentConfig(listen="127.0.0.1:0", tee="sim", sim_root=b.root,
                                        data_dir=b.tmp / "bulk-client"))
        payload = os.urandom(size)
        times, cpus = [], []
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            session = await agent.connect(address)
            await call(session, SINK, {"data": payload}, timeout=120.0)  # warm up
            for _ in range(rounds):
                c0, s0 = time.process_time(), cpu_seconds(proc.pid)
                t0 = time.perf_counter()
                got = await call(session, SINK, {"data": payload}, timeout=120.0)
                times.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0 + cpu_seconds(proc.pid) - s0)
                if got.get("n") != size:
                    raise RuntimeError(f"bulk baseline: sink read {got.get('n')} of {size}")
            nursery.cancel_scope.cancel()
    finally:
        proc.terminate()
        proc.wait(10)
    return statistics.median(times), statistics.median(cpus)


async def bench_drain(b: Bench, state_mib: int) -> dict[str, Any]:
    wl = b.tmp / "bigstate"
    wl.mkdir()
    (wl / "bigstate.wat").write_text(BIGSTATE_WAT)
    (wl / "keepmesh.toml").write_text('name = "bigstate"\nmodule = "bigstate.wat"\n'
                                      '[resources]\nmemory = "2MiB"\nstateful = true\n'
                                      'timeout_ms = 60000\n')
    host = b.procs[0]
    keep = await b.deploy(host, wl)
    values = state_mib * 16  # 64 KiB each
    check = b"c" + bytes([values])
    await b.call(host, "keeps.call", {"keep": keep, "message": b"f" + bytes([values])})
    if (await b.call(host, "keeps.call", {"keep": keep, "message": check}))["reply"] != b"1":
        raise RuntimeError("drain: the keep's state is not whole before the drain")

    async def ready() -> Any:
        w = await b.where(host, keep)
        return w and w["standbys"] and w["last_checkpoint"]["seq"] >= 1
    await b.wait(ready, 60, "a standby holding a checkpoint")
    state_bytes = values * 65536
    bulk_s, bulk_cpu_s = await bulk_baseline(b, state_bytes)
    # the same bytes as keeps.call messages of one transfer chunk each (the keep ignores them)
    c = await b.client(host)
    junk = b"n" + bytes(MAX_CHUNK - 1)
    n_chunks = -(-state_bytes // MAX_CHUNK)
    t0 = time.perf_counter()
    for _ in range(n_chunks):
        await c.call("keeps.call", {"keep": keep, "message": junk})
    chunked_s = time.perf_counter() - t0
    await c.aclose()

    # Clients to every agent are connected before the clock starts (a client's own
    # handshake is not the drain's), and the drain starts just after a periodic checkpoint
    # was acknowledged, so no checkpoint is being shipped when it begins (one that is
    # delays the final one by the batch on the wire; see specs/migration.md §11).
    clients = {p.address: await b.client(p) for p in b.procs}
    old = clients[host.address]
    seen = (await b.where(host, keep) or {})["last_checkpoint"]["seq"]

    async def next_checkpoint() -> Any:
        w = await b.where(host, keep)
        return w and w["last_checkpoint"]["seq"] > seen
    await b.wait(next_checkpoint, 60, "the next periodic checkpoint")
    load = os.getloadavg()[0]
    cpu0 = {p.address: cpu_seconds(p.proc.pid) for p in b.procs}
    t0 = time.perf_counter()
    reply = await old.call("agent.drain", {})
    reply_s = time.perf_counter() - t0
    if len(reply["moved"]) != 1:
        raise RuntimeError(f"drain did not move the keep: {reply}")
    [moved] = reply["moved"]
    new_host = next(p for p in b.procs if p.address == moved["to"])
    new = clients[new_host.address]
    intact = stopped = False
    answered_s = stopped_s = None
    try:
        while time.perf_counter() - t0 < 60 and (answered_s is None or stopped_s is None):
            if answered_s is None:
                try:
                    got = await new.call("keeps.call", {"keep": keep, "message": check})
                    intact, answered_s = got["reply"] == b"1", time.perf_counter() - t0
                except Exception:  # noqa: BLE001 - not there yet: the client retries
                    pass
            if stopped_s is None:
                rows = (await old.call("keeps.list", {}))["keeps"]
                if not any(r.get("keep") == keep and not r.get("remote")
                           and r.get("state") == "running" for r in rows):
                    stopped, stopped_s = True, time.perf_counter() - t0
    finally:
        cpu = {p.address: round(cpu_seconds(p.proc.pid) - cpu0[p.address], 3) for p in b.procs}
        for c in clients.values():
            await c.aclose()
    if answered_s is None or stopped_s is None:
        raise RuntimeError("drain: the keep did not answer at its new host, or the old copy "
                           "did not stop, within 60 s")
    drain_s = max(answered_s, stopped_s)
    return {"state_bytes": state_bytes, "drain_s": round(drain_s, 3),
            "drain_reply_s": round(reply_s, 3), "answered_at_new_host_s": round(answered_s, 3),
            "old_copy_stopped_s": round(stopped_s, 3),
            "bulk_transfer_s": round(bulk_s, 3), "bulk_transfer_cpu_s": round(bulk_cpu_s, 3),
            "ratio_vs_bulk_transfer": round(drain_s / bulk_s, 2),
            "chunked_transfer_s": round(chunked_s, 3),
            "ratio_vs_chunked_transfer": round(drain_s / chunked_s, 2),
            "target_s": 1.0, "state_intact": intact, "old_copy_stopped": stopped,
            "epoch": moved["epoch"], "loadavg_1m_at_drain": round(load, 2),
            "cpu_s_during_drain": {"old_host": cpu[host.address],
                                   "new_host": cpu[new_host.address],
                                   "others": round(sum(v for a, v in cpu.items()
                                                       if a not in (host.address,
                                                                    new_host.address)), 3)}}


async def bench_crash(b: Bench, host: Any, watcher: Any, calls_s: float) -> dict[str, Any]:
    counter = ROOT / "examples" / "counter"
    keep = await b.deploy(host, counter)

    async def ready() -> Any:
        w = await b.where(watcher, keep)
        return w and w["host"] == host.address and w["standbys"]
    await b.wait(ready, 60, "a standby")
    c = await b.client(host)
    acked = 0
    start = time.monotonic()
    end = start + 2 * DEFAULT_CHECKPOINT_S + 1
    while time.monotonic() < end:
        reply = await c.call("keeps.call", {"keep": keep, "message": b"inc"})
        acked = int(reply["reply"])
        await trio.sleep(1 / calls_s)
    rate = acked / (time.monotonic() - start)  # achieved calls/s (the machine may be slow)
    survivors = [p for p in b.procs if p is not host]
    clients = {p.address: await b.client(p) for p in survivors}  # connected before the kill
    host.kill()
    t0 = time.monotonic()
    with contextlib.suppress(Exception):
        await c.aclose()
    detected: dict[str, float] = {}
    recovery: float | None = None
    loc: dict[str, Any] | None = None
    try:
        while time.monotonic() - t0 < 120 and (len(detected) < len(survivors)
                                               or recovery is None):
            for p in survivors:
                sc = clients[p.address]
                if p.address not in detected:
                    ms = (await sc.call("members.list", {}))["members"]
                    if any(m["address"] == host.address and m["state"] == "dead" for m in ms):
                        detected[p.address] = time.monotonic() - t0
                if recovery is None:
                    w = next((k for k in (await sc.call("migrate.where", {}))["keeps"]
                              if k["keep"] == keep), None)
                    if w and w["host"] != host.address and w["state"] == "running":
                        recovery, loc = time.monotonic() - t0, w
            await trio.sleep(0.05)
    finally:
        for sc in clients.values():
            await sc.aclose()
    if len(detected) < len(survivors) or recovery is None or loc is None:
        raise RuntimeError("crash: no detection or no recovery within 120 s")
    first = min(detected.values())
    at_successor = detected.get(loc["host"], first)
    new_host = next(p for p in b.procs if p.address == loc["host"])
    got = int((await b.call(new_host, "keeps.call", {"keep": keep, "message": b"get"}))["reply"])
    lost = max(0, acked - got)
    return {"detection_first_s": round(first, 2),
            "detection_at_successor_s": round(at_successor, 2),
            "recovery_s": round(recovery, 2),
            "recovery_minus_first_detection_s": round(recovery - first, 2),
            "recovery_minus_successor_detection_s": round(recovery - at_successor, 2),
            "ratio_vs_first_detection": round(recovery / first, 2), "target_extra_s": 2.0,
            "acked_before_kill": acked, "value_after_recovery": got, "lost_calls": lost,
            "calls_per_s": round(rate, 1),
            "lost_checkpoint_intervals": round(lost / (rate * DEFAULT_CHECKPOINT_S), 2),
            "epoch": loc["epoch"]}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        b = Bench(Path(d))
        try:
            b.start(3)
            await b.alive_all()
            drain = await bench_drain(b, args.state_mib)
            crash = await bench_crash(b, b.procs[1], b.procs[2], args.calls_s)
        finally:
            b.stop()
    from keepmesh.agent.transport.quic import datagram_size, route_mtu
    return {"bench": "migration", "drain": drain, "crash": crash,
            "loopback_datagram_bytes": datagram_size("127.0.0.1", route_mtu("127.0.0.1")),
            "loadavg_1m_5m_15m": [round(x, 2) for x in os.getloadavg()],
            "cpu_count": os.cpu_count()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state-mib", type=int, default=10, choices=range(1, 16))
    ap.add_argument("--calls-s", type=float, default=20.0)
    args = ap.parse_args()
    print(json.dumps(trio.run(run, args), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
