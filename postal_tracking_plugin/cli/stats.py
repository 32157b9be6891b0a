"""``postal-tracking stats``: opens and clicks, people beside everything, top links.

"All events" figures come from Postal's own ``clicks`` and ``loads`` tables
(what Postal's interface shows). "People" figures leave out events flagged as
automated (bots, scanners, Apple's privacy prefetch) in our ``tracking_events``
table, so they cover the events this plugin recorded. Unique opens and clicks
count messages (one message is one recipient); top links rank URLs by how many
messages had a click on them.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from typing import Any

from ..errors import UsageError
from ..store import Server
from ..store import Store
from ._context import Context
from ._context import table

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_HUMAN = "x.counted = 1 AND x.bot = 0"


def register(sub: Any) -> None:
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
    p.add_argument("--top", type=int, default=10, metavar="N", help="top links to show (10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def parse_since(value: str | None, now: float | None = None) -> float | None:
    """``--since`` as Unix seconds."""
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
            f"--since {value!r} is not a date, a time or an age: use 2026-05-01, "
            f"2026-05-01T12:00 or 7d"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    return when.timestamp()


def run(ctx: Context) -> int:
    args = ctx.args
    since = parse_since(args.since)
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
        reports.append(server_stats(store, server, since, message_id, top=max(args.top, 0)))
    if args.message and not reports:
        where = f"server {args.server}" if args.server else "any server"
        raise UsageError(f"no message with token {args.message!r} in {where}")
    if args.json:
        ctx.say(json.dumps({"since": since, "servers": reports}, indent=2))
        return 0
    if not reports:
        ctx.note("No servers yet: add one with `postal-tracking servers add NAME`.")
        return 0
    ctx.say("\n\n".join(render(r) for r in reports))
    return 0


def server_stats(
    store: Store, server: Server, since: float | None, message_id: int | None, *, top: int = 10
) -> dict[str, Any]:
    """Every figure of one server (or one of its messages), as plain data."""
    m_where, m_params = ["m.scope = 'outgoing'"], []
    e_where, e_params = ["1 = 1"], []
    if since is not None:
        m_where.append("m.timestamp >= %s")
        m_params.append(since)
        e_where.append("x.timestamp >= %s")
        e_params.append(since)
    if message_id is not None:
        m_where = ["m.id = %s"]
        m_params = [message_id]
        e_where.append("x.message_id = %s")
        e_params.append(message_id)
    mw, ew = " AND ".join(m_where), " AND ".join(e_where)

    def figures(db: Any, table_name: str, kind: str) -> dict[str, Any]:
        everything = db.one(
            f"SELECT COUNT(*) AS total, COUNT(DISTINCT x.message_id) AS uniq "
            f"FROM {table_name} x WHERE {ew}",
            e_params,
        )
        people = db.one(
            "SELECT COUNT(*) AS total, COUNT(DISTINCT x.message_id) AS uniq "
            f"FROM tracking_events x WHERE x.kind = %s AND {_HUMAN} AND {ew}",
            [kind, *e_params],
        )
        return {
            "all": {"total": int(everything["total"]), "unique": int(everything["uniq"])},
            "people": {"total": int(people["total"]), "unique": int(people["uniq"])},
        }

    with store.messages(server.id, readonly=True) as db:
        sent = db.one(
            "SELECT COUNT(*) AS sent, COALESCE(SUM(CASE WHEN m.parsed = 1 AND "
            "(m.tracked_links > 0 OR m.tracked_images > 0) THEN 1 ELSE 0 END), 0) AS tracked "
            f"FROM messages m WHERE {mw}",
            m_params,
        )
        opens = figures(db, "loads", "open")
        clicks = figures(db, "clicks", "click")
        reasons = db.query(
            f"SELECT x.reason, x.kind, x.bot, COUNT(*) AS n FROM tracking_events x "
            f"WHERE x.reason IS NOT NULL AND {ew} GROUP BY x.reason, x.kind, x.bot "
            "ORDER BY n DESC, x.reason",
            e_params,
        )
        link_where = "l.message_id = %s" if message_id is not None else "1 = 1"
        link_params = [message_id] if message_id is not None else []
        links = db.query(
            "SELECT l.url, "
            "COUNT(DISTINCT x.message_id) AS all_unique, COUNT(x.id) AS all_total "
            "FROM links l LEFT JOIN clicks x ON x.link_id = l.id"
            + (" AND x.timestamp >= %s" if since is not None else "")
            + f" WHERE {link_where} GROUP BY l.url",
            ([since] if since is not None else []) + link_params,
        )
        people_links = db.query(
            "SELECT l.url, COUNT(DISTINCT x.message_id) AS people_unique "
            "FROM tracking_events x JOIN links l ON l.id = x.link_id "
            f"WHERE x.kind = 'click' AND {_HUMAN} AND {ew} GROUP BY l.url",
            e_params,
        )
    people_by_url = {r["url"]: int(r["people_unique"]) for r in people_links}
    ranked = [
        {
            "url": r["url"],
            "unique_people": people_by_url.get(r["url"], 0),
            "unique_all": int(r["all_unique"]),
            "clicks": int(r["all_total"]),
        }
        for r in links
        if message_id is not None or int(r["all_total"])
    ]
    ranked.sort(key=lambda r: (-r["unique_people"], -r["unique_all"], -r["clicks"], r["url"]))
    tracked = int(sent["tracked"] or 0)
    return {
        "server": {"id": server.id, "name": server.name, "token": server.token},
        "message": message_id,
        "messages": {"sent": int(sent["sent"] or 0), "tracked": tracked},
        "opens": opens,
        "clicks": clicks,
        "rates": {
            "open_rate_people": _rate(opens["people"]["unique"], tracked),
            "click_rate_people": _rate(clicks["people"]["unique"], tracked),
            "open_rate_all": _rate(opens["all"]["unique"], tracked),
            "click_rate_all": _rate(clicks["all"]["unique"], tracked),
        },
        "flags": [
            {"reason": r["reason"], "kind": r["kind"], "bot": bool(r["bot"]), "events": int(r["n"])}
            for r in reasons
        ],
        "top_links": ranked[:top] if message_id is None else ranked,
    }


def _rate(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def render(report: dict[str, Any]) -> str:
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
