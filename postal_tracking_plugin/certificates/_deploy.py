"""Moving an issued certificate from certbot's folder into ``track_certificates``.

The store is where every fast server looks (by SNI, refreshed within a
minute), so a certificate counts as issued once it is there, with Postal's
columns filled in: ``certificate`` (the leaf), ``intermediaries`` (the chain),
``key``, ``expires_at`` and ``renew_after``.
"""

from __future__ import annotations

import datetime as _dt
import random
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ..store import Certificate
from ..store import Store
from ..store import utcnow

#: Renew this long before expiry (Let's Encrypt's advice for 90-day certificates) ...
RENEW_BEFORE = _dt.timedelta(days=30)
#: ... plus up to this much random delay, so a fleet's renewals spread out.
JITTER = _dt.timedelta(days=10)
_REFERENCE_LIFETIME = _dt.timedelta(days=90)


@dataclass(frozen=True)
class Issued:
    certificate: str
    intermediaries: str
    key: str
    not_before: _dt.datetime
    not_after: _dt.datetime


def renew_after(
    not_before: _dt.datetime, not_after: _dt.datetime, rng: random.Random | None = None
) -> _dt.datetime:
    """Expiry minus 30 days plus a random 0-10 days.

    For certificates shorter-lived than Let's Encrypt's 90 days (the CA may
    shorten them), both spans shrink in proportion, so renewal never falls
    before the certificate is even issued.
    """
    lifetime = not_after - not_before
    scale = min(1.0, lifetime / _REFERENCE_LIFETIME) if lifetime > _dt.timedelta(0) else 1.0
    jitter = (rng or random).random() * JITTER * scale
    return (not_after - RENEW_BEFORE * scale + jitter).replace(microsecond=0)


def read_lineage(lineage: Path) -> Issued:
    """certbot's ``live/<name>/`` files: leaf, chain and key."""
    cert_pem = (lineage / "cert.pem").read_text()
    leaf = x509.load_pem_x509_certificate(cert_pem.encode())
    return Issued(
        certificate=cert_pem,
        intermediaries=(lineage / "chain.pem").read_text(),
        key=(lineage / "privkey.pem").read_text(),
        not_before=leaf.not_valid_before_utc.replace(tzinfo=None),
        not_after=leaf.not_valid_after_utc.replace(tzinfo=None),
    )


def store_issued(store: Store, domain: str, issued: Issued) -> Certificate:
    current = store.get_certificate(domain)
    if current and current.updated_at and current.updated_at >= utcnow():
        # Fast servers notice a change by ``updated_at`` (second precision): make
        # sure this write does not share a second with the challenge's cleanup.
        time.sleep(1.05 - (time.time() % 1.0))
    return store.save_certificate(
        domain,
        certificate=issued.certificate,
        intermediaries=issued.intermediaries,
        key=issued.key,
        expires_at=issued.not_after.replace(microsecond=0),
        renew_after=renew_after(issued.not_before, issued.not_after),
    )


def store_lineage(store: Store, domain: str, lineage: Path) -> Certificate:
    """Store the lineage's certificate for ``domain`` unless it is there already."""
    issued = read_lineage(lineage)
    current = store.get_certificate(domain)
    if current and current.certificate == issued.certificate and current.key == issued.key:
        return current
    return store_issued(store, domain, issued)


def clear_challenge(store: Store, domain: str, path: str | None = None) -> None:
    """Remove the HTTP-01 answer of ``domain`` (only ``path``'s, when given)."""
    current = store.get_certificate(domain)
    if current is None or current.verification_path is None:
        return
    if path is not None and current.verification_path != path:
        return
    store.save_certificate(domain, verification_path=None, verification_string=None)
