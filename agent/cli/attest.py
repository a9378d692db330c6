"""`keepmesh attest verify`: check a TEE report/quote offline, like a relying party would.

Why a standalone verb: operators need to check evidence from any host (or a
vendor's sample) against the same verifier the mesh uses, without running an
agent. The format is recognised from the bytes (SEV-SNP report, SGX quote,
TDX quote, a serialized keepmesh Evidence record, or any of these as hex).
Exit 0 only when the evidence verified *and* the policy (if any) accepted it.
"""

from __future__ import annotations

import argparse
import binascii
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keepmesh.agent.cli import CommandError, add_root_flag
from keepmesh.agent.cli._output import print_json
from keepmesh.protocol.errors import ProtocolError

from keepmesh.files import read_at_most

MAX_EVIDENCE_FILE = 1024 * 1024
MAX_DIR_FILES = 64
MAX_AUX_FILE = 512 * 1024


def register(subparsers: Any) -> None:
    attest = subparsers.add_parser("attest", help="verify TEE evidence offline")
    verbs = attest.add_subparsers(dest="attest_command", required=True, metavar="VERB")
    verify = verbs.add_parser("verify", help="verify an SNP report, SGX quote or TDX quote")
    verify.add_argument("evidence", metavar="EVIDENCE", help="report/quote file")
    verify.add_argument("--certs", metavar="DIR",
                        help="chain certificates (PEM or DER, any file names)")
    add_root_flag(verify, "extra trusted root certificates")
    verify.add_argument("--collateral", metavar="DIR",
                        help="Intel TCB info / QE identity / CRLs (directory or one file)")
    verify.add_argument("--policy", metavar="FILE", help="appraisal policy")
    verify.add_argument("--at", metavar="ISO8601", help="verification time (default: now)")
    verify.add_argument("--json", action="store_true", help="print one JSON document")
    verify.set_defaults(func=run_verify)


def _read(path: str | Path, what: str, limit: int) -> bytes:
    """At most `limit` bytes of a file, checked while reading: the size stat() gives is
    0 for /dev/zero, a pipe or a process substitution, which are read until they end."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > limit:
            raise CommandError(f"{what} {str(p)[:200]}: {size} bytes exceeds {limit}")
        data = read_at_most(p, limit)  # a FIFO nothing writes to is refused, not waited on
        if len(data) > limit:
            raise CommandError(f"{what} {str(p)[:200]}: more than {limit} bytes")
        return data
    except OSError as err:
        raise CommandError(f"cannot read {what} {str(p)[:200]}: {err.strerror or err}") from None
    except ValueError:  # e.g. a NUL byte in the path (only possible in-process)
        raise CommandError(f"cannot read {what}: not a usable path") from None


def _read_tree(path: str, what: str) -> dict[str, bytes]:
    """A directory's regular files (not recursive), or one file; bounded in count and size."""
    p = Path(path)
    try:  # checking a path can fail too (a name too long: ENAMETOOLONG)
        if p.is_file():
            return {p.name: _read(p, what, MAX_AUX_FILE)}
        if not p.is_dir():
            raise CommandError(f"cannot read {what} {path[:200]}: no such file or directory")
        entries = sorted(e for e in p.iterdir() if e.is_file())
    except OSError as err:
        raise CommandError(f"cannot read {what} {path[:200]}: {err.strerror or err}") from None
    if len(entries) > MAX_DIR_FILES:
        raise CommandError(f"{what} {path[:200]}: more than {MAX_DIR_FILES} files")
    return {e.name: _read(e, what, MAX_AUX_FILE) for e in entries}


def _parse_at(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"--at {text[:40]!r} is not an ISO 8601 time") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _maybe_hex(data: bytes) -> bytes:
    """Accept a hex dump of the evidence (e.g. virtee's report_milan.hex)."""
    text = b"".join(data.split())
    if len(text) >= 2 and len(text) % 2 == 0 and all(c in b"0123456789abcdefABCDEF" for c in text):
        try:
            return binascii.unhexlify(text)
        except binascii.Error:
            return data
    return data


def _unwrap(data: bytes) -> tuple[bytes, list[bytes], str | None]:
    """Return (report, embedded certs, labelled format) for raw or Evidence-record input."""
    from keepmesh.protocol.attestation.evidence import Evidence
    from keepmesh.protocol.wire import decode_payload

    for candidate in (data, data[4:] if len(data) > 4 else b""):
        if candidate[:1] in (b"\x93", b"\xdc", b"\xdd"):  # msgpack array header
            try:
                msg = decode_payload(candidate, expect=(Evidence,))
            except ProtocolError:
                continue
            assert isinstance(msg, Evidence)
            return msg.report, list(msg.certs), msg.format
    return _maybe_hex(data), [], None


def _cert_ders(files: dict[str, bytes]) -> list[bytes]:
    """Every certificate in the files, deduplicated by DER (bundles often repeat the ARK)."""
    from keepmesh.protocol.attestation.certs import cert_der, load_certificates

    seen: dict[bytes, None] = {}
    for data in files.values():
        try:
            certs = load_certificates(data)
        except ProtocolError:
            # A directory may hold the report itself or notes next to the chain;
            # a missing certificate still fails chain building with a reason.
            continue
        for cert in certs:
            seen.setdefault(cert_der(cert), None)
    return list(seen)


def _policy(path: str) -> tuple[Any, Any]:
    try:
        from keepmesh.protocol.attestation import policy as policy_mod
    except ImportError:
        raise CommandError("policy support is not available in this build") from None
    data = _read(path, "policy", MAX_AUX_FILE)
    try:
        loaded = policy_mod.load_policy(data, source_name=Path(path).name)
    except ProtocolError as err:
        raise CommandError(f"policy {path[:200]}: {err.reason}") from None
    return policy_mod, loaded


def _json_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """The verified evidence once: top-level fields, plus `claims` only for what the
    top level does not already say (to_json() repeats every claim at both levels)."""
    claims = doc.get("claims")
    if not isinstance(claims, dict):
        return doc
    out = {k: v for k, v in doc.items() if k != "claims"}
    extra = {k: v for k, v in claims.items() if k not in out or out[k] != v}
    if extra:
        out["claims"] = extra
    return out


def _emit_failure(args: argparse.Namespace, reason: str, fmt: str | None) -> int:
    if args.json:
        print_json({"format": fmt, "verified": False, "reason": reason})
    print(f"keepmesh attest verify: {reason}", file=sys.stderr)
    return 1


def run_verify(args: argparse.Namespace) -> int:
    from keepmesh.protocol.attestation.certs import TrustStore
    from keepmesh.protocol.attestation.evidence import detect_format, verify_evidence

    raw = _read(args.evidence, "evidence", MAX_EVIDENCE_FILE)
    report, certs, labelled = _unwrap(raw)
    if args.certs:
        extra = _cert_ders(_read_tree(args.certs, "--certs"))
        certs += [c for c in extra if c not in certs]
    roots = [_read(r, "--root", MAX_AUX_FILE) for r in args.root]
    at = _parse_at(args.at)
    collateral = _read_tree(args.collateral, "--collateral") if args.collateral else None
    policy = _policy(args.policy) if args.policy else None
    try:
        trust = TrustStore(roots)
    except ProtocolError as err:
        raise CommandError(f"--root: {err.reason}") from None

    fmt: str | None = labelled
    try:
        fmt = detect_format(report)
        verified = verify_evidence(report, certs, trust, at, collateral=collateral,
                                   format=labelled)
    except ProtocolError as err:  # includes VerificationError
        return _emit_failure(args, err.reason, fmt)

    doc = verified.to_json()
    if policy is not None:
        policy_mod, loaded = policy
        try:
            result = policy_mod.appraise(loaded, verified)
        except ProtocolError as err:
            doc.update({"verified": False, "policy": "rejected", "reason": err.reason})
            if args.json:
                print_json(_json_doc(doc))
            print(f"keepmesh attest verify: policy: {err.reason}", file=sys.stderr)
            return 1
        if result is False:
            reason = "policy: evidence rejected"
            doc.update({"verified": False, "policy": "rejected", "reason": reason})
            if args.json:
                print_json(_json_doc(doc))
            print(f"keepmesh attest verify: {reason}", file=sys.stderr)
            return 1
        doc["policy"] = "accepted"
    if args.json:
        print_json(_json_doc(doc))
    else:
        _print_human(doc)
    return 0


def _print_human(doc: dict[str, Any]) -> None:
    lines = [
        f"verified:     yes ({doc['format']}, tee {doc['tee']})",
        f"measurement:  {doc['measurement']}",
        f"report_data:  {doc['report_data']}",
        f"debug:        {'yes' if doc['debug'] else 'no'}",
        f"signer:       {' <- '.join(doc['signer'])}",
        f"vendor root:  {'yes' if doc['vendor_root'] else 'NO (non-vendor root: not hardware)'}",
        f"tcb status:   {doc['tcb_status']}",
    ]
    for key in ("mrsigner", "mrseam", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "fmspc"):
        if key in doc and isinstance(doc[key], str):
            lines.append(f"{key + ':':<14}{doc[key]}")
    if "policy" in doc:
        lines.append(f"policy:       {doc['policy']}")
    print("\n".join(lines))
