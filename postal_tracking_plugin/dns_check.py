"""Check that a tracking domain is a CNAME of ``dns.track_domain``, as Postal does.

The result is Postal's: ``dns_status`` ``OK``, ``Missing`` or ``Invalid`` and a
``dns_error`` sentence. Rewriting only uses tracking domains whose status is
``OK``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import dns.exception
import dns.resolver

Resolver = Callable[[str], list[str]]


@dataclass(frozen=True)
class DnsResult:
    status: str  # "OK", "Missing" or "Invalid"
    error: str | None


def resolve_cname(name: str) -> list[str]:
    """The CNAME targets of ``name`` through the system's resolver (empty if none)."""
    try:
        answer = dns.resolver.resolve(name, "CNAME", lifetime=5.0)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        raise LookupError(f"DNS lookup of {name} failed: {exc}") from None
    return [r.target.to_text(omit_final_dot=True) for r in answer]


def check_track_domain(
    full_name: str, track_domain: str, resolve: Resolver = resolve_cname
) -> DnsResult:
    """Compare ``full_name``'s CNAME with the expected ``track_domain``."""
    expected = track_domain.lower().rstrip(".")
    try:
        targets = [t.lower().rstrip(".") for t in resolve(full_name)]
    except LookupError as exc:
        return DnsResult("Missing", str(exc))
    if not targets:
        return DnsResult(
            "Missing", f"There is no CNAME record at {full_name}: add one pointing to {expected}."
        )
    if expected in targets:
        return DnsResult("OK", None)
    return DnsResult(
        "Invalid",
        f"There is a CNAME record at {full_name} but it points to {targets[0]} which is "
        f"incorrect. It should point to {expected}.",
    )
