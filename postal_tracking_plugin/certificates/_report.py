"""Each tracking domain's certificate status, for ``certs list``.

Statuses: ``active`` (a valid certificate is in the store), ``pending``
(eligible and waiting for, or in, an attempt), ``failed`` (the last attempt
failed and there is no valid certificate; an active one whose renewal failed
stays ``active``, with the error shown), ``none`` (no certificate will be
requested: SSL off or DNS not OK, with the reason).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from ..store import Store
from ._issue import ineligible_reason
from ._state import all_statuses


@dataclass(frozen=True)
class DomainReport:
    domain: str
    status: str
    expires_at: _dt.datetime | None
    renew_after: _dt.datetime | None
    last_error: str | None
    next_attempt_at: _dt.datetime | None
    attempts: int
    note: str | None


def certificate_report(store: Store) -> list[DomainReport]:
    statuses = all_statuses(store)
    reports = []
    for td in store.list_track_domains():
        name = td.full_name
        cert = store.get_certificate(name)
        state = statuses.get(name)
        reason = ineligible_reason(td)
        active = bool(cert and cert.active)
        failed = bool(state and state.status == "failed")
        if active:
            status = "active"
        elif reason:
            status = "none"
        elif failed:
            status = "failed"
        else:
            status = "pending"
        note = reason
        if active and failed:
            note = "renewal failed; the current certificate is served until it expires"
        elif active and cert and cert.renew_after is None:
            note = "no renewal date recorded: `postal-tracking certs renew` will renew it"
        reports.append(
            DomainReport(
                domain=name,
                status=status,
                expires_at=cert.expires_at if cert and cert.certificate else None,
                renew_after=cert.renew_after if cert and cert.certificate else None,
                last_error=state.last_error if failed and state and not reason else None,
                next_attempt_at=state.next_attempt_at if failed and state and not reason else None,
                attempts=state.attempts if failed and state and not reason else 0,
                note=note,
            )
        )
    return reports
