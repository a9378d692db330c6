"""Keep verbs: deploy, keeps, logs, call, stop.

Why deploy attests before it sends: the workload is sealed to the identity
key of the agent we just verified (fresh evidence against the deployment's
own policy), after the connection is up and checked; an agent that fails
policy makes open_client raise and receives no byte of the workload.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

from keepmesh.agent.cli import CommandError
from keepmesh.agent.cli._client_args import add_client_flags, int_in, run_call, text
from keepmesh.agent.cli._output import fmt_time, print_json, print_table
from keepmesh.protocol.errors import ProtocolError

DEFAULT_WAIT_MS = 5000
MAX_WAIT_MS = 3_600_000  # the agent caps it lower (keeps.service.MAX_WAIT_MS)
MAX_TAIL = 65_535  # KeepRequest.tail is a u16 on the wire
FOLLOW_POLL_S = 1.0


def _load_policy(text: str | None, source: str) -> Any:
    if text is None:
        return None
    try:
        from keepmesh.protocol.attestation.policy import load_policy
    except ImportError:
        raise CommandError("policy support is not available in this build") from None
    try:
        return load_policy(text, source)
    except ProtocolError as err:
        raise CommandError(err.reason) from None


def _print(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    if args.json:
        print_json(doc)
    elif text:
        print(text)


def _owner_seed(args: argparse.Namespace) -> bytes:
    if not args.key:
        raise CommandError("--key OWNER_KEY is required to sign a deployment "
                           "(create one with `keepmesh keygen FILE`)")
    from keepmesh.agent.identity import read_private_key

    try:
        key = read_private_key(Path(args.key))
    except ProtocolError as err:
        raise CommandError(err.reason) from None
    return key.private_bytes_raw()


# ------------------------------------------------------------------ verbs


def cmd_deploy(args: argparse.Namespace) -> int:
    from keepmesh.agent.keeps.package import PackageError, load_workload, read_policy_text
    from keepmesh.agent.keeps.sealing import seal_package
    from keepmesh.protocol.deployment import make_deployment
    from keepmesh.protocol.secrets import deployment_key_for

    address = args.agent
    try:
        workload = load_workload(Path(args.workload),
                                 Path(args.policy) if args.policy else None)
        if args.policy:
            read_policy_text(Path(args.policy))
    except PackageError as err:
        raise CommandError(err.reason) from None
    policy = _load_policy(workload.policy_text, args.policy or "workload policy")
    seed = _owner_seed(args)
    manifest = _with_replicas(workload.manifest, getattr(args, "replicas", None))
    try:
        deployment = make_deployment(manifest, workload.module, workload.policy_text,
                                     seed, time.time(), random.SystemRandom(),
                                     secrets=workload.secret_refs, data=workload.data_refs)
    except ProtocolError as err:
        raise CommandError(err.reason) from None
    if manifest.placement is not None:  # [placement] or --replicas: any agent brokers
        from keepmesh.agent.cli.place import deploy_placed
        summary, placements = deploy_placed(args, workload, deployment, policy, seed)
        placed = {"deployment": summary.get("deployment"), "agent": address,
                  "keep": summary.get("keep"), "state": summary.get("state"),
                  "name": summary.get("name"), "kind": summary.get("kind"),
                  "package_digest": workload.digest.hex(), "placements": placements}
        if args.quiet:
            print(placed["keep"])
        else:
            hosts = ", ".join(p["host"] for p in placements)
            _print(args, placed, f"keep {placed['keep']} ({placed['name']}) on {hosts}: "
                                 f"{placed['state']}")
        return 0

    async def go(client: Any) -> int:
        # Sealed only now, to the key the verified evidence commits to.
        # K is derived from the owner key (not stored), so `secrets set` can re-seal later;
        # secrets and data go under the same K as the module.
        sealed, _ = seal_package(workload.module, client.peer_key,
                                 key=deployment_key_for(seed, deployment),
                                 inputs=workload.inputs)
        body = {"deployment": deployment.to_fields(), "package": sealed.to_fields(),
                "wait_ms": args.wait_ms}
        resp = await client.call("keeps.deploy", body)
        doc = {"deployment": resp.get("deployment"), "agent": address,
               "keep": resp.get("keep"), "state": resp.get("state"),
               "name": resp.get("name"), "kind": resp.get("kind"),
               "package_digest": workload.digest.hex()}
        if args.quiet:
            print(doc["keep"])
        else:
            _print(args, doc,
                   f"keep {doc['keep']} ({doc['name']}) on {address}: {doc['state']}")
        return 0

    return int(run_call(args, go, policy=policy, fresh=True))


def _with_replicas(manifest: Any, replicas: int | None) -> Any:
    """--replicas N overrides [placement] replicas before the owner signs."""
    if replicas is None:
        return manifest
    import dataclasses

    from keepmesh.protocol.placement import DEFAULT_PLACEMENT
    spec = dataclasses.replace(manifest.placement or DEFAULT_PLACEMENT, replicas=replicas)
    return dataclasses.replace(manifest, placement=spec)


def cmd_keeps(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        resp = await client.call("keeps.list", {})
        keeps = resp.get("keeps", [])
        if not isinstance(keeps, list) or not all(isinstance(k, dict) for k in keeps):
            raise CommandError("agent sent a malformed keeps list")
        from keepmesh.agent.cli.drain import with_locations
        keeps = await with_locations(client, keeps)  # host, epoch, standbys, last_checkpoint
        if args.json:
            print_json({"agent": args.agent, "keeps": keeps})
            return 0
        print_table(["KEEP", "NAME", "KIND", "STATE", "HOST"],
                    [[k.get("keep"), k.get("name"), k.get("kind"), k.get("state"),
                      k.get("host") or "-"] for k in keeps], empty="no keeps")
        return 0

    return int(run_call(args, go))


def cmd_logs(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        import trio

        body: dict[str, Any] = {"keep": args.id}
        if args.tail is not None:
            body["tail"] = args.tail
        resp = await client.call("keeps.logs", body)
        if args.json and not args.follow:
            print_json(resp)
            return 0
        last = _print_log_lines(args, resp.get("lines"))
        host = _answered_by(resp)
        while args.follow:  # client.call retries `stale_epoch` (a moving keep), as for call
            await trio.sleep(FOLLOW_POLL_S)
            body = {"keep": args.id}
            if last is not None:
                body["after"] = last
            resp = await client.call("keeps.logs", body)
            now = _answered_by(resp)
            if host is not None and now is not None and now != host:
                # Another copy answered (the keep moved): its log and `seq` are its own, so
                # the old copy's `after` would skip or repeat lines. Start from its beginning.
                print(f"keep {args.id}: now following its copy on "
                      f"{str(resp.get('host') or now)[:80]} from the start of that copy's log",
                      file=sys.stderr)
                last = None
                if "after" in body:
                    resp = await client.call("keeps.logs", {"keep": args.id})
                    now = _answered_by(resp)
            host = now if now is not None else host
            last = _print_log_lines(args, resp.get("lines"), last)
        return 0

    try:
        return int(run_call(args, go))
    except KeyboardInterrupt:
        return 0 if args.follow else 130


def _answered_by(resp: dict[str, Any]) -> str | None:
    """The `host_id` of the copy that answered a keeps.logs (None from an older agent)."""
    host = resp.get("host_id")
    return host if isinstance(host, str) else None


def _print_log_lines(args: argparse.Namespace, lines: Any, last: int | None = None) -> int | None:
    """Print log lines (one JSON object each with --json --follow); return the newest seq."""
    if not isinstance(lines, list):
        raise CommandError("agent sent a malformed log")
    for x in lines:
        if not isinstance(x, dict):
            raise CommandError("agent sent a malformed log line")
        seq = x.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            if last is not None and seq <= last:
                continue
            last = seq
        if args.json:
            import json
            print(json.dumps(x, sort_keys=True))
            continue
        stream = str(x.get("stream"))
        prefix = "" if stream == "stdout" else f"[{stream}] "
        print(f"{fmt_time(x.get('time'))}  {prefix}{x.get('line')}")
    sys.stdout.flush()
    return last


def cmd_call(args: argparse.Namespace) -> int:
    try:
        message = bytes.fromhex(args.message) if args.hex else args.message.encode()
    except UnicodeEncodeError:  # a ValueError too: caught first, or it read as "not hex"
        raise CommandError("MSG is not valid text; pass bytes with --hex") from None
    except ValueError:
        raise CommandError(f"--hex: {args.message[:40]!r} is not hex "
                           "(two hex digits per byte, e.g. 696e63)") from None

    async def go(client: Any) -> int:
        resp = await client.call("keeps.call", {"keep": args.id, "message": message})
        reply = bytes(resp.get("reply", b""))
        try:
            text: str | None = reply.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        doc = {"keep": resp.get("keep"), "state": resp.get("state"), "reply": text,
               "reply_hex": reply.hex()}
        _print(args, doc, text if text is not None else reply.hex())
        return 0

    return int(run_call(args, go))


def cmd_stop(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        return stopped(args, await client.call("keeps.stop", {"keep": args.id}))

    return int(run_call(args, go))


def stopped(args: argparse.Namespace, resp: dict[str, Any]) -> int:
    """Print a `keeps.stop` answer. The agent stops every copy of the keep (a replicated
    keep's replicas, specs/keeps.md §7); a copy it could not stop fails the command in
    one line after the answer is printed, as it keeps running."""
    failed, count = resp.get("failed", []), resp.get("stopped")
    if not isinstance(failed, list) or not all(
            isinstance(f, dict) and isinstance(f.get("host"), str)
            and isinstance(f.get("reason"), str) for f in failed) or \
            (count is not None and (not isinstance(count, int) or isinstance(count, bool))):
        raise CommandError("agent sent a malformed stop answer")
    text = f"keep {resp.get('keep')}: {resp.get('state')}"
    if isinstance(count, int) and count > 1:
        text += f" ({count} copies)"
    _print(args, resp, text)
    if failed:
        total = len(failed) + (count or 0)
        raise CommandError(f"keep {resp.get('keep')}: stopped {count or 0} of {total} "
                           f"copies; {failed[0]['host'][:80]}: {failed[0]['reason'][:200]}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("deploy", help="attest an agent, then deploy a sealed workload")
    p.add_argument("workload", metavar="WORKLOAD", help="workload directory or .wasm/.wat file")
    p.add_argument("--policy", metavar="FILE", help="appraisal policy TOML (overrides manifest)")
    p.add_argument("--wait-ms", type=int_in(0, MAX_WAIT_MS), default=DEFAULT_WAIT_MS,
                   help="how long the agent waits for a command to finish before answering")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only the keep id (for scripts: KEEP=$(keepmesh deploy -q ...))")
    p.add_argument("--replicas", type=int_in(1, 16), default=None, metavar="N",
                   help="run N replicas on distinct hosts found by placement through --agent")
    add_client_flags(p)
    p.set_defaults(func=cmd_deploy)

    p = subparsers.add_parser("keeps", help="list keeps on an agent")
    add_client_flags(p)
    p.set_defaults(func=cmd_keeps)

    p = subparsers.add_parser("logs", help="show a keep's output and log lines")
    p.add_argument("id", metavar="ID", type=text)
    p.add_argument("--tail", type=int_in(0, MAX_TAIL), default=None,
                   help="only the last N lines")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing new lines until interrupted (--json: one object a line)")
    add_client_flags(p)
    p.set_defaults(func=cmd_logs)

    p = subparsers.add_parser("call", help="send a message to a service keep, print its reply")
    p.add_argument("id", metavar="ID", type=text)
    p.add_argument("message", metavar="MSG")
    p.add_argument("--hex", action="store_true", help="MSG is hex-encoded bytes")
    add_client_flags(p)
    p.set_defaults(func=cmd_call)

    p = subparsers.add_parser("stop", help="stop a keep")
    p.add_argument("id", metavar="ID", type=text)
    add_client_flags(p)
    p.set_defaults(func=cmd_stop)
