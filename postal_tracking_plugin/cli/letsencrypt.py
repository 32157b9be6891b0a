"""``postal-tracking register-lets-encrypt`` and ``postal-tracking certs``: ACME certificates."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable

from ..certificates import Issuer
from ..certificates import LockBusy
from ..certificates import Outcome
from ..certificates import certificate_report
from ..certificates import current_account
from ..certificates import register as register_account
from ..config import LETS_ENCRYPT_STAGING_DIRECTORY
from ..errors import UsageError
from ._context import Context
from ._context import Subparsers
from ._context import table


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "register-lets-encrypt",
        help="register an ACME (Let's Encrypt) account for tracking domain certificates",
        description=(
            "Register an account with Let's Encrypt (or the ACME server in "
            "tracking.acme.directory) through certbot; this agrees to the server's terms of "
            "service. The account key is kept under <data_dir>/letsencrypt. Running it again "
            "reports the existing account."
        ),
    )
    p.add_argument(
        "email",
        metavar="EMAIL",
        nargs="?",
        help="where the CA writes about expiring certificates (default: tracking.acme.email)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--staging",
        action="store_true",
        help="use Let's Encrypt's staging server (test certificates)",
    )
    where.add_argument("--server", metavar="URL", help="the directory URL of another ACME server")
    p.set_defaults(func=run_register)

    c = sub.add_parser("certs", help="issue, renew and list tracking domain certificates")
    s = c.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    issue = s.add_parser(
        "issue",
        help="get certificates now",
        description=(
            "Request a certificate now for each named tracking domain, or for every tracking "
            "domain with SSL on, DNS OK and no valid certificate. Only registered tracking "
            "domains get certificates."
        ),
    )
    issue.add_argument("names", metavar="FULL_NAME", nargs="*")
    issue.set_defaults(func=run_issue)
    renew = s.add_parser(
        "renew",
        help="renew what is due (for a timer or cron)",
        description=(
            "Renew every certificate past its renewal date and issue missing ones, skipping "
            "domains that are backing off after a failure (1 h, 6 h, then 24 h). One node at a "
            "time: if another holds the store's renewal lock, this run does nothing. Quiet when "
            "not on a terminal, apart from failures."
        ),
    )
    renew.add_argument(
        "names", metavar="FULL_NAME", nargs="*", help="only these (default: all tracking domains)"
    )
    renew.add_argument(
        "--force", action="store_true", help="renew now even if not due or backing off"
    )
    renew.set_defaults(func=run_renew)
    ls = s.add_parser("list", help="each tracking domain's certificate status")
    ls.set_defaults(func=run_list)


def _server(ctx: Context) -> str:
    if ctx.args.server:
        if not ctx.args.server.startswith(("https://", "http://")):
            raise UsageError(
                f"--server {ctx.args.server}: give the ACME directory URL (https://...)"
            )
        return str(ctx.args.server)
    if ctx.args.staging:
        return LETS_ENCRYPT_STAGING_DIRECTORY
    return ctx.config.tracking.acme.directory


def run_register(ctx: Context) -> int:
    server = _server(ctx)
    email = ctx.args.email or ctx.config.tracking.acme.email
    if not email:
        raise UsageError(
            "give the account's e-mail address: `postal-tracking register-lets-encrypt EMAIL` "
            "(or set tracking.acme.email)"
        )
    account, created = register_account(ctx.config, email.strip(), server, ctx.note)
    if created:
        ctx.note(f"Registered ACME account {account.uri} for {account.email} at {server}.")
        ctx.note(
            "Next: tracking domains with SSL on and DNS OK get certificates with "
            "`postal-tracking certs issue` (and the fast server renews them)."
        )
    else:
        email = f" for {account.email}" if account.email else ""
        ctx.note(
            f"An ACME account{email} is already registered at {server}: {account.uri}. "
            f"Nothing to do."
        )
    ctx.say(account.uri or "")
    return 0


def _progress(ctx: Context) -> Callable[[str, bool], None] | None:
    """A line per domain on a terminal; nothing under cron (failures are reported after)."""
    if not ctx.err.isatty():
        return None

    def show(line: str, final: bool) -> None:
        ctx.err.write("\r\x1b[K" + line + ("\n" if final else ""))
        ctx.err.flush()

    return show


def _finish(ctx: Context, outcomes: list[Outcome], on_tty: bool) -> int:
    failed = [o for o in outcomes if not o.ok]
    if not on_tty:
        for o in failed:
            ctx.note(f"{o.domain}: {o.describe()}")
    if outcomes and (on_tty or failed):
        ctx.note(
            f"{len(outcomes) - len(failed)} certificate(s) issued, {len(failed)} failed"
            + (": `postal-tracking certs list` shows why" if failed else ".")
        )
    return 1 if failed else 0


def run_issue(ctx: Context) -> int:
    issuer = Issuer(ctx.config, ctx.store, _progress(ctx))
    domains = issuer.named(ctx.args.names) if ctx.args.names else issuer.without_certificate()
    if not domains:
        ctx.note(
            "Every tracking domain with SSL on and DNS OK has a valid certificate "
            "(`postal-tracking certs list` shows them)."
        )
        return 0
    outcomes = issuer.run(domains)
    return _finish(ctx, outcomes, ctx.err.isatty())


def run_renew(ctx: Context) -> int:
    issuer = Issuer(ctx.config, ctx.store, _progress(ctx))
    if ctx.args.names:
        domains = issuer.named(ctx.args.names)
        if not ctx.args.force:
            due = {td.full_name for td in issuer.due()}
            domains = [td for td in domains if td.full_name in due]
    elif ctx.args.force:
        domains = issuer.eligible()
    else:
        domains = issuer.due()
    if not domains:
        if ctx.err.isatty():
            ctx.note("No certificate is due for renewal.")
        return 0
    if current_account(ctx.config) is None and not ctx.err.isatty():
        # Under cron on a node that never registered: nothing to do, quietly.
        return 0
    try:
        outcomes = issuer.run(domains, only_due=not ctx.args.force)
    except LockBusy as exc:
        if ctx.err.isatty():
            ctx.note(f"Skipped: {exc}")
        return 0
    return _finish(ctx, outcomes, ctx.err.isatty())


def _when(value: _dt.datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M}" if value else "-"


def run_list(ctx: Context) -> int:
    account = current_account(ctx.config)
    if account is None:
        ctx.note(
            "No ACME account registered here yet: `postal-tracking register-lets-encrypt EMAIL`."
        )
    else:
        ctx.note(
            f"ACME account: {account.uri} ({account.email or 'no e-mail'}) at {account.server}"
        )
    reports = certificate_report(ctx.store)
    if not reports:
        ctx.note("No tracking domains yet: add one with `postal-tracking track-domains add`.")
        return 0
    rows = [[r.domain, r.status, _when(r.expires_at), _when(r.renew_after)] for r in reports]
    lines = table(rows, ["DOMAIN", "STATUS", "EXPIRES (UTC)", "RENEWS AFTER (UTC)"]).splitlines()
    out = [lines[0]]
    for line, r in zip(lines[1:], reports, strict=True):
        out.append(line)
        if r.last_error:
            out.append(f"    last error: {r.last_error}")
            out.append(f"    next attempt: {_when(r.next_attempt_at)} UTC (failed {r.attempts}x)")
        if r.note:
            out.append(f"    {r.note}")
    ctx.say("\n".join(out))
    return 0
