"""A CRL signed by a sim root's ASK, as AMD's KDS CRL is signed by the ASK: the one way
tests revoke (or pointedly do not revoke) a sim agent's VCEK."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding


def sim_ask_crl(root: Path, serials: list[int]) -> x509.CertificateRevocationList:
    """Revokes `serials`; valid from an hour ago for a week."""
    ask = x509.load_pem_x509_certificate((root / "ask.pem").read_bytes())
    key = serialization.load_pem_private_key((root / "ask.key").read_bytes(), password=None)
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ask.subject)
               .last_update(now - dt.timedelta(hours=1)).next_update(now + dt.timedelta(days=7)))
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial)
            .revocation_date(now - dt.timedelta(hours=1)).build())
    return builder.sign(key, hashes.SHA384(),  # type: ignore[arg-type]
                        rsa_padding=padding.PSS(mgf=padding.MGF1(hashes.SHA384()),
                                                salt_length=48))
