"""`keepmesh deploy` with placement: any agent brokers, the owner's CLI attests and ships.

Why the CLI talks to each host itself: the package key is only ever sealed to
a host whose *fresh* evidence (bound to this CLI's nonce on the attested
channel) satisfied the deployment's signed policy, checked here, by the
party holding the key. The entry agent only finds and reserves hosts
(`keeps.place`); it never sees the key or the plaintext, and need not satisfy
the policy itself. Every host is attested before any byte of the package
leaves, so a host that fails the policy fails the whole deploy with nothing
shipped anywhere (its reservations expire).
"""

from __future__ import annotations

import argparse
from typing import Any

import trio
from keepmesh.agent.cli import CommandError
from keepmesh.protocol.errors import ProtocolError


def _placements(resp: dict[str, Any]) -> list[dict[str, Any]]:
    rows = resp.get("placements")
    if not isinstance(rows, list) or not rows or len(rows) > 16:
        raise CommandError("entry agent sent a malformed placement")
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("host"), str) or \
                not isinstance(row.get("host_id"), str) or len(row["host_id"]) != 64 or \
                not isinstance(row.get("lease"), int) or not isinstance(row.get("epoch"), int):
            raise CommandError("entry agent sent a malformed placement")
    return rows


def deploy_placed(args: argparse.Namespace, workload: Any, deployment: Any, policy: Any,
                  seed: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Place through `args.agent`, attest every host with `policy`, then ship to each.

    Returns (keep summary from the first host, placements [{host, host_id, epoch}])."""
    from keepmesh.agent.cli._client_args import client_options
    from keepmesh.agent.client import AgentClient, open_client
    from keepmesh.agent.keeps.sealing import seal_package
    from keepmesh.protocol.secrets import deployment_key_for
    options = client_options(args)

    async def main() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        entry = await open_client(args.agent, **options)
        try:
            resp = await entry.call("keeps.place", {"deployment": deployment.to_fields()})
        finally:
            await entry.aclose()
        rows = _placements(resp)
        hosts: list[AgentClient] = []
        try:
            for row in rows:  # attest all before shipping to any
                client = await open_client(row["host"], policy=policy, fresh=True, **options)
                hosts.append(client)
                if client.peer_key.hex() != row["host_id"]:
                    raise CommandError(f"agent at {row['host']} is not the host placement "
                                       "reserved; nothing was shipped")
            summary: dict[str, Any] = {}
            key = deployment_key_for(seed, deployment)
            for row, client in zip(rows, hosts, strict=True):
                sealed, _ = seal_package(workload.module, client.peer_key, key=key,
                                         inputs=workload.inputs)
                body = {"deployment": deployment.to_fields(), "package": sealed.to_fields(),
                        "wait_ms": args.wait_ms, "lease": row["lease"]}
                got = await client.call("keeps.deploy", body)
                summary = summary or got
        finally:
            for client in hosts:
                await client.aclose()
        return summary, [{"host": r["host"], "host_id": r["host_id"], "epoch": r["epoch"]}
                         for r in rows]

    try:
        return trio.run(main)
    except ProtocolError as err:
        raise CommandError(err.reason) from None
    except OSError as err:
        raise CommandError(f"agent {args.agent}: {err.strerror or err}") from None
