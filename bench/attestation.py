"""Evidence verifications per second, per format, chain cached and uncached.

    python bench/attestation.py [--seconds 1.5] [--vectors ../shared/vectors]

Baseline, measured in the same run: one bare ECDSA verify on the curve the
format's report signature uses (P-384 for SEV-SNP, P-256 for DCAP quotes).
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from keepmesh.protocol.attestation.certs import ChainCache, TrustStore, cert_der, load_certificates
from keepmesh.protocol.attestation.evidence import verify_evidence

DEFAULT_VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"


def rate(fn: Callable[[], object], seconds: float) -> float:
    fn()  # warm
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        fn()
        n += 1
    return n / elapsed


def ecdsa_baseline(curve: ec.EllipticCurve, algo: hashes.HashAlgorithm,
                   seconds: float) -> float:
    key = ec.generate_private_key(curve)
    data = b"x" * 1184
    sig = key.sign(data, ec.ECDSA(algo))
    pub = key.public_key()
    return rate(lambda: pub.verify(sig, data, ec.ECDSA(algo)), seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--vectors", type=Path, default=DEFAULT_VECTORS)
    args = ap.parse_args()
    v = args.vectors
    trust = TrustStore()
    snp_certs = [cert_der(c) for c in
                 load_certificates((v / "sev-snp/gosevguest-milan-v2/vcek.der").read_bytes())]
    snp_certs += [cert_der(c) for c in load_certificates(
        (v / "sev-snp/amd-certs/milan/ask_ark_asvk.pem").read_bytes())]
    cases = {
        "sev-snp": ((v / "sev-snp/gosevguest-milan-v2/report.bin").read_bytes(), snp_certs,
                    dt.datetime(2025, 6, 1, tzinfo=dt.UTC), ec.SECP384R1(), hashes.SHA384()),
        "sgx-dcap": ((v / "sgx-dcap/trustee-occlum-v3/quote.dat").read_bytes(), [],
                     dt.datetime(2025, 6, 25, tzinfo=dt.UTC), ec.SECP256R1(), hashes.SHA256()),
        "tdx": ((v / "tdx/trustee-v4/quote.dat").read_bytes(), [],
                dt.datetime(2025, 6, 25, tzinfo=dt.UTC), ec.SECP256R1(), hashes.SHA256()),
    }
    out: dict[str, object] = {}
    for name, (report, certs, at, curve, algo) in cases.items():
        def uncached(report: bytes = report, certs: list[bytes] = certs,
                     at: dt.datetime = at) -> object:
            return verify_evidence(report, certs, trust, at)

        cache = ChainCache()

        def cached(report: bytes = report, certs: list[bytes] = certs, at: dt.datetime = at,
                   cache: ChainCache = cache) -> object:
            return verify_evidence(report, certs, trust, at, cache=cache)

        base = ecdsa_baseline(curve, algo, args.seconds)
        r_unc = rate(uncached, args.seconds)
        r_c = rate(cached, args.seconds)
        out[name] = {
            "verify_per_s_uncached": round(r_unc, 1),
            "verify_per_s_chain_cached": round(r_c, 1),
            "bare_ecdsa_verify_per_s": round(base, 1),
            "ratio_uncached_vs_bare_ecdsa": round(r_unc / base, 4),
            "ratio_cached_vs_bare_ecdsa": round(r_c / base, 4),
            "speedup_from_chain_cache": round(r_c / r_unc, 2),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
