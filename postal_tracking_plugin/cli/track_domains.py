"""``postal-tracking track-domains``: tracking domains (Postal's ``track_domains``)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from ..dns_check import check_track_domain
from ..errors import UsageError
from ..store import SqlValue
from ..store import split_track_domain_name
from ..store import utcnow
from ._context import Context
from ._context import Subparsers
from ._context import table


def register(sub: Subparsers) -> None:
    p = sub.add_parser("track-domains", help="add, list, change and check tracking domains")
    s = p.add_subparsers(dest="track_domains_command", metavar="ACTION", required=True)

    add = s.add_parser(
        "add",
        help="add a tracking domain (and its sending domain) to a server",
        description=(
            "Add FULL_NAME (such as click.example.com) as a tracking domain of a server. The "
            "sending domain (FULL_NAME without its first label) is added to the server if "
            "missing. FULL_NAME must be a CNAME of dns.track_domain; the check runs now "
            "unless --assume-dns-ok is given."
        ),
    )
    add.add_argument("full_name", metavar="FULL_NAME")
    add.add_argument("--server", required=True, help="server name, token or permalink")
    _settings(add)
    add.add_argument(
        "--assume-dns-ok",
        action="store_true",
        help=(
            "record the DNS status as OK without looking it up: for tests and air-gapped "
            "set-ups where the CNAME cannot be resolved from here"
        ),
    )
    add.set_defaults(func=run_add)

    ls = s.add_parser("list", help="list tracking domains")
    ls.add_argument("--server", help="only this server's")
    ls.set_defaults(func=run_list)

    rm = s.add_parser("remove", help="remove a tracking domain")
    rm.add_argument("full_name", metavar="FULL_NAME")
    rm.set_defaults(func=run_remove)

    st = s.add_parser("set", help="change a tracking domain's settings")
    st.add_argument("full_name", metavar="FULL_NAME")
    st.add_argument("--ssl", dest="ssl_enabled", action="store_true", default=None)
    st.add_argument("--track-clicks", dest="track_clicks", action="store_true", default=None)
    st.add_argument("--track-loads", dest="track_loads", action="store_true", default=None)
    _settings(st, for_set=True)
    st.add_argument(
        "--assume-dns-ok", action="store_true", help="mark DNS as OK without looking it up"
    )
    st.set_defaults(func=run_set)

    ck = s.add_parser(
        "check-dns", help="check the CNAME of one tracking domain, or of all, and record it"
    )
    ck.add_argument("full_name", metavar="FULL_NAME", nargs="?")
    ck.set_defaults(func=run_check_dns)


def _settings(p: argparse.ArgumentParser, for_set: bool = False) -> None:
    default = None if for_set else True
    p.add_argument(
        "--no-ssl",
        dest="ssl_enabled",
        action="store_false",
        default=default,
        help="serve tracking links over plain http (no certificate)",
    )
    p.add_argument(
        "--no-track-clicks",
        dest="track_clicks",
        action="store_false",
        default=default,
        help="do not rewrite links",
    )
    p.add_argument(
        "--no-track-loads",
        dest="track_loads",
        action="store_false",
        default=default,
        help="do not insert the open-tracking pixel",
    )
    p.add_argument(
        "--exclude",
        metavar="HOST",
        action="append",
        default=None,
        help=(
            "a link host never to track (repeatable; *.example.com for a domain and its subdomains)"
        ),
    )
    if for_set:
        p.add_argument(
            "--no-exclude", action="store_true", help="clear the list of excluded link hosts"
        )


def _dns(ctx: Context, full_name: str) -> tuple[str, str | None]:
    result = check_track_domain(full_name, ctx.config.dns.track_domain)
    return result.status, result.error


def run_add(ctx: Context) -> int:
    a = ctx.args
    ctx.store.check_changeable("tracking domains")
    server = ctx.store.get_server(a.server)
    full_name = a.full_name.lower().rstrip(".")
    split_track_domain_name(full_name)  # a bad name is refused before any DNS lookup
    status, error = ("OK", None) if a.assume_dns_ok else _dns(ctx, full_name)
    td = ctx.store.add_track_domain(
        server,
        full_name,
        ssl_enabled=a.ssl_enabled,
        track_clicks=a.track_clicks,
        track_loads=a.track_loads,
        excluded_click_domains=_hosts(a.exclude or []),
        dns_status=status,
        dns_error=error,
    )
    ctx.say(td.full_name)
    ctx.note(f"Added tracking domain {td.full_name} to server {server.name!r}; DNS: {status}.")
    if error:
        ctx.note(error)
    return 0


def run_list(ctx: Context) -> int:
    server_id = ctx.store.get_server(ctx.args.server).id if ctx.args.server else None
    domains = ctx.store.list_track_domains(server_id)
    if not domains:
        ctx.note("No tracking domains yet: add one with `postal-tracking track-domains add`.")
        return 0
    rows = [
        [
            d.full_name,
            d.server_name,
            d.dns_status or "-",
            _yn(d.ssl_enabled),
            _yn(d.track_clicks),
            _yn(d.track_loads),
            ",".join(d.excluded_click_domains) or "-",
        ]
        for d in domains
    ]
    ctx.say(table(rows, ["NAME", "SERVER", "DNS", "SSL", "CLICKS", "OPENS", "EXCLUDED"]))
    return 0


def run_remove(ctx: Context) -> int:
    td = ctx.store.get_track_domain(ctx.args.full_name)
    ctx.store.remove_track_domain(td)
    ctx.note(f"Removed tracking domain {td.full_name}.")
    return 0


def run_set(ctx: Context) -> int:
    a = ctx.args
    td = ctx.store.get_track_domain(a.full_name)
    changes: dict[str, SqlValue | Iterable[str]] = {
        k: getattr(a, k)
        for k in ("ssl_enabled", "track_clicks", "track_loads")
        if getattr(a, k) is not None
    }
    if a.no_exclude and a.exclude:
        raise UsageError("--exclude and --no-exclude contradict each other: give one")
    if a.no_exclude:
        changes["excluded_click_domains"] = []
    elif a.exclude:
        changes["excluded_click_domains"] = _hosts(a.exclude)
    if a.assume_dns_ok:
        changes.update(dns_status="OK", dns_error=None, dns_checked_at=utcnow())
    if not changes:
        raise UsageError("nothing to change: see `postal-tracking track-domains set --help`")
    td = ctx.store.update_track_domain(td, **changes)
    ctx.note(f"Updated tracking domain {td.full_name}.")
    return 0


def run_check_dns(ctx: Context) -> int:
    ctx.store.check_changeable("tracking domains (Postal checks their DNS itself)")
    if ctx.args.full_name:
        domains = [ctx.store.get_track_domain(ctx.args.full_name)]
    else:
        domains = ctx.store.list_track_domains()
    failed = 0
    for td in domains:
        status, error = _dns(ctx, td.full_name)
        ctx.store.update_track_domain(
            td, dns_status=status, dns_error=error, dns_checked_at=utcnow()
        )
        ctx.say(f"{td.full_name}: {status}" + (f": {error}" if error else ""))
        failed += status != "OK"
    return 1 if failed else 0


def _hosts(values: list[str]) -> list[str]:
    hosts = []
    for value in values:
        for host in value.replace(",", " ").split():
            hosts.append(host.lower())
    return hosts


def _yn(value: bool) -> str:
    return "yes" if value else "no"
