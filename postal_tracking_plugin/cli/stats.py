"""``postal-tracking stats``: opens and clicks, people beside everything, top links.

"All events" figures come from Postal's own ``clicks`` and ``loads`` tables
(what Postal's interface shows). "People" figures leave out events flagged as
automated (bots, scanners, Apple's privacy prefetch) in our ``tracking_events``
table, so they cover the events this plugin recorded. Unique opens and clicks
count messages (one message is one recipient); top links rank URLs by how many
messages had a click on them.

The figures come from the store's query layer
(:meth:`~postal_tracking_plugin.store.Store.tracking_stats`), the same one the
dashboard's overview reads, so the two agree for the same range and tag.
"""

from __future__ import annotations

import datetime as _dt
import json
import re

from ..errors import UsageError
from ..store import Filter
from ..store import TrackingStats
from ._context import Context
from ._context import Subparsers
from ._context import table

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "stats",
        help="opens and clicks: people beside all events, top links",
        description=(
            "Sent and tracked messages, total and unique opens and clicks (all events, and "
            "people only: events not flagged as bots or privacy prefetches), flag reasons, "
            "and the top links by unique clickers. A table on a terminal; --json for scripts."
        ),
    )
    p.add_argument("--server", help="only this server (name, token or permalink)")
    p.add_argument("--message", metavar="TOKEN", help="only the message with this token")
    p.add_argument(
        "--since",
        metavar="WHEN",
        help="only messages and events since WHEN: a date (2026-05-01), a UTC time "
        "(2026-05-01T12:00) or an age (30m, 24h, 7d, 2w)",
    )
    p.add_argument(
        "--until",
        metavar="WHEN",
        help="only messages and events before WHEN (same forms as --since)",
    )
    p.add_argument("--tag", help="only messages with this tag (Postal's tag: the campaign)")
    p.add_argument("--top", type=int, default=10, metavar="N", help="top links to show (10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def parse_since(
    value: str | None, now: float | None = None, option: str = "--since"
) -> float | None:
    """``--since`` (or ``--until``) as Unix seconds."""
    if not value:
        return None
    now = _dt.datetime.now(_dt.UTC).timestamp() if now is None else now
    match = _RELATIVE.match(value.strip().lower())
    if match:
        return now - int(match.group(1)) * _UNITS[match.group(2)]
    try:
        when = _dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise UsageError(
            f"{option} {value!r} is not a date, a time or an age: use 2026-05-01, "
            f"2026-05-01T12:00 or 7d"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    return when.timestamp()


def run(ctx: Context) -> int:
    args = ctx.args
    since = parse_since(args.since)
    until = parse_since(args.until, option="--until")
    store = ctx.store
    servers = [store.get_server(args.server)] if args.server else store.list_servers()
    reports = []
    for server in servers:
        if not store.message_database_exists(server.id):
            continue
        # A message database Postal created lacks our tables until events are
        # written to it; add what is missing (never altering anything).
        store.create_message_schema(server.id)
        message_id = None
        if args.message:
            row = store.find_message(server.id, args.message)
            if row is None:
                continue
            message_id = int(row["id"])
        flt = Filter(since=since, until=until, tag=args.tag or None, message_id=message_id)
        reports.append(store.tracking_stats(server, flt, top=max(args.top, 0)))
    if args.message and not reports:
        where = f"server {args.server}" if args.server else "any server"
        raise UsageError(f"no message with token {args.message!r} in {where}")
    if args.json:
        report = {"since": since, "until": until, "tag": args.tag or None, "servers": reports}
        ctx.say(json.dumps(report, indent=2))
        return 0
    if not reports:
        ctx.note("No servers yet: add one with `postal-tracking servers add NAME`.")
        return 0
    ctx.say("\n\n".join(render(r) for r in reports))
    return 0


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def render(report: TrackingStats) -> str:
    """One server's (or message's) figures as text tables."""
    server = report["server"]
    title = f"Server {server['name']} ({server['token']})"
    if report["message"] is not None:
        title += f", message id {report['message']}"
    o, c, rates = report["opens"], report["clicks"], report["rates"]
    rows = [
        ["Messages sent", str(report["messages"]["sent"]), ""],
        ["Tracked messages", str(report["messages"]["tracked"]), ""],
        ["Opens", str(o["all"]["total"]), str(o["people"]["total"])],
        ["Unique opens", str(o["all"]["unique"]), str(o["people"]["unique"])],
        ["Open rate", _pct(rates["open_rate_all"]), _pct(rates["open_rate_people"])],
        ["Clicks", str(c["all"]["total"]), str(c["people"]["total"])],
        ["Unique clicks", str(c["all"]["unique"]), str(c["people"]["unique"])],
        ["Click rate", _pct(rates["click_rate_all"]), _pct(rates["click_rate_people"])],
    ]
    parts = [title, table(rows, ["", "ALL EVENTS", "PEOPLE"])]
    if report["flags"]:
        flag_rows = [
            [f["reason"], f["kind"], "bot" if f["bot"] else "proxy", str(f["events"])]
            for f in report["flags"]
        ]
        parts.append(table(flag_rows, ["FLAG", "KIND", "COUNTS AS", "EVENTS"]))
    if report["top_links"]:
        link_rows = [
            [str(link["unique_people"]), str(link["unique_all"]), str(link["clicks"]), link["url"]]
            for link in report["top_links"]
        ]
        parts.append(table(link_rows, ["PEOPLE", "ALL", "CLICKS", "TOP LINKS BY UNIQUE CLICKERS"]))
    return "\n\n".join(parts)
