"""Issuing and renewing certificates for tracking domains, one certbot run per domain.

One run per domain keeps each failure attached to its domain (status, error
in words, back-off) instead of one bad name failing a whole batch. Everything
runs under the store's renewal lock, so only one node of a cluster talks to
the CA at a time, and only one certbot uses this node's certbot folder.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from ..config import Config
from ..store import Certificate
from ..store import Store
from ..store import TrackDomain
from ..store import utcnow
from ._account import Account
from ._account import require_account
from ._certbot import certbot_dirs
from ._certbot import hook_command
from ._certbot import key_arguments
from ._certbot import run_certbot
from ._deploy import clear_challenge
from ._deploy import store_lineage
from ._errors import LockBusy
from ._errors import NotEligible
from ._explain import explain_issue_failure
from ._state import Status
from ._state import acquire_lock
from ._state import all_statuses
from ._state import get_status
from ._state import lock_holder
from ._state import lock_owner
from ._state import mark_active
from ._state import mark_failed
from ._state import mark_pending
from ._state import release_lock

#: The renewal lock lasts this long and is extended before each domain, so a
#: node that dies mid-run frees it soon enough.
LOCK_TTL = 15 * 60.0


@dataclass(frozen=True)
class Outcome:
    """What happened to one domain."""

    domain: str
    ok: bool
    certificate: Certificate | None = None
    error: str | None = None
    next_attempt_at: _dt.datetime | None = None

    def describe(self) -> str:
        if self.ok and self.certificate and self.certificate.expires_at:
            return f"active, expires {self.certificate.expires_at:%Y-%m-%d %H:%M} UTC"
        if self.ok:
            return "active"
        retry = (
            f" (next attempt {self.next_attempt_at:%Y-%m-%d %H:%M} UTC)"
            if self.next_attempt_at
            else ""
        )
        return f"failed: {self.error}{retry}"


def ineligible_reason(td: TrackDomain) -> str | None:
    """Why ``td`` gets no certificate, or None when it may have one."""
    if not td.ssl_enabled:
        return (
            f"SSL is off for {td.full_name} (turn it on with "
            f"`postal-tracking track-domains set {td.full_name} --ssl`)"
        )
    if not td.dns_ok:
        return (
            f"the DNS check of {td.full_name} has not passed ({td.dns_status or 'not checked'}): "
            f"point its CNAME at this server and run "
            f"`postal-tracking track-domains check-dns {td.full_name}`"
        )
    return None


def is_due(cert: Certificate | None, status: Status | None, now: _dt.datetime) -> bool:
    """Renewal is due: no valid certificate or past ``renew_after``, and not backing off."""
    if (
        status
        and status.status == "failed"
        and status.next_attempt_at
        and status.next_attempt_at > now
    ):
        return False
    if cert is None or not cert.active:
        return True
    return cert.renew_after is None or cert.renew_after <= now


@contextmanager
def renewal_lock(store: Store) -> Iterator[str]:
    """Hold the store's certificate lock for the duration of the block."""
    holder = lock_holder()
    if not acquire_lock(store, holder, LOCK_TTL):
        owner = lock_owner(store)
        who = owner[0] if owner else "another process"
        raise LockBusy(
            f"{who} is issuing or renewing certificates right now: try again in a few minutes"
        )
    try:
        yield holder
    finally:
        release_lock(store, holder)


class Issuer:
    """Runs certbot for tracking domains and records each outcome in the store."""

    def __init__(
        self,
        config: Config,
        store: Store,
        progress: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        #: Called with (line, final): a line when a domain starts, and its
        #: replacement when it is done.
        self.progress = progress

    # -- choosing domains ------------------------------------------------------

    def named(self, names: Sequence[str]) -> list[TrackDomain]:
        """The named tracking domains; a name that may not have a certificate is an error."""
        domains = []
        for name in names:
            td = self.store.find_track_domain(name)
            if td is None:
                raise NotEligible(
                    f"{name} is not a tracking domain: certificates are only requested for "
                    f"tracking domains (`postal-tracking track-domains add {name} ...`)"
                )
            reason = ineligible_reason(td)
            if reason:
                raise NotEligible(f"no certificate for {name}: {reason}")
            domains.append(td)
        return domains

    def eligible(self) -> list[TrackDomain]:
        """Every tracking domain that may have a certificate (SSL on, DNS OK)."""
        return [td for td in self.store.list_track_domains() if ineligible_reason(td) is None]

    def without_certificate(self) -> list[TrackDomain]:
        """Eligible tracking domains with no valid certificate in the store."""
        return [
            td
            for td in self.store.list_track_domains()
            if ineligible_reason(td) is None
            and not ((c := self.store.get_certificate(td.full_name)) and c.active)
        ]

    def due(self, now: _dt.datetime | None = None) -> list[TrackDomain]:
        """Eligible tracking domains whose renewal is due and not backing off."""
        now = now or utcnow()
        statuses = all_statuses(self.store)
        return [
            td
            for td in self.store.list_track_domains()
            if ineligible_reason(td) is None
            and is_due(self.store.get_certificate(td.full_name), statuses.get(td.full_name), now)
        ]

    # -- running ---------------------------------------------------------------

    def run(self, domains: Sequence[TrackDomain], *, only_due: bool = False) -> list[Outcome]:
        """Issue a fresh certificate for each domain, under the renewal lock.

        With ``only_due``, each domain is checked again once the lock is held:
        another node may have renewed it while this one waited.
        """
        if not domains:
            return []
        self.store.check_can_issue_certificates()
        account = require_account(self.config)
        outcomes = []
        with renewal_lock(self.store) as holder:
            for i, td in enumerate(domains, 1):
                if not acquire_lock(self.store, holder, LOCK_TTL):
                    # The lock expired under us (a stalled run, a clock jump) and
                    # another node took it: two nodes issuing at once would race
                    # for the same orders and rate limits. Stop; it carries on.
                    owner = lock_owner(self.store)
                    raise LockBusy(
                        f"lost the certificate lock to {owner[0] if owner else 'another node'} "
                        f"after {i - 1} of {len(domains)} domains: stopped issuing, so that only "
                        f"one node issues; the new holder renews what is still due"
                    )
                if only_due and not is_due(
                    self.store.get_certificate(td.full_name),
                    get_status(self.store, td.full_name),
                    utcnow(),
                ):
                    continue
                prefix = f"[{i}/{len(domains)}] {td.full_name}: "
                if self.progress:
                    self.progress(prefix + "requesting a certificate ...", False)
                outcome = self.issue_one(account, td.full_name)
                if self.progress:
                    self.progress(prefix + outcome.describe(), True)
                outcomes.append(outcome)
        return outcomes

    def issue_one(self, account: Account, domain: str) -> Outcome:
        """One certbot run for ``domain``; the caller holds the lock."""
        mark_pending(self.store, domain)
        args = [
            "certonly",
            "--manual",
            "--preferred-challenges", "http",
            "--manual-auth-hook", hook_command(self.config, "auth"),
            "--manual-cleanup-hook", hook_command(self.config, "cleanup"),
            "--deploy-hook", hook_command(self.config, "deploy"),
            "--disable-hook-validation",
            "--cert-name", domain,
            "-d", domain,
            # Our schedule (renew_after) decides when to renew, not certbot's.
            "--force-renewal",
            *key_arguments(self.config),
        ]  # fmt: skip
        result = run_certbot(self.config, account.server, args)
        try:
            clear_challenge(self.store, domain)  # certbot's cleanup hook should have; be sure
        except Exception:  # noqa: BLE001 - the outcome below matters more
            pass
        if result.ok:
            lineage = certbot_dirs(self.config).live(domain)
            try:
                # The deploy hook stored it; if that hook failed, store it now.
                cert = store_lineage(self.store, domain, lineage)
            except OSError as exc:
                return self._failed(domain, f"certbot succeeded but left no certificate: {exc}")
            mark_active(self.store, domain)
            return Outcome(domain, True, certificate=cert)
        logs = str(certbot_dirs(self.config).logs / "letsencrypt.log")
        return self._failed(
            domain, explain_issue_failure(result.output, domain, account.server, logs)
        )

    def _failed(self, domain: str, error: str) -> Outcome:
        status = mark_failed(self.store, domain, error)
        return Outcome(domain, False, error=error, next_attempt_at=status.next_attempt_at)
