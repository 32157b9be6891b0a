"""What the dashboard and ``postal-tracking stats`` read, and the dashboard's accounts.

One query layer for the numbers: :meth:`DashboardOperations.tracking_stats`
is what ``stats`` prints and what the dashboard's overview shows, for the same
:class:`Filter`, so the two cannot disagree. "All events" figures are what
Postal's own ``clicks`` and ``loads`` hold (what Postal's interface counts);
"people" figures leave out the events our ``tracking_events`` flags as
automated (``bot = 1``) and the uncounted ``HEAD`` probes. The chart's series
covers the events this plugin recorded, split by that flag.

The figures are read from the rollups the event writer keeps
(``tracking_event_hours``, ``tracking_event_spans``: see ``_event_ops``),
except one message's (cheap from the events) and, in ``postal`` mode, the
"all events" figures, which Postal's own fast server may also write.

Also here: the dashboard's users and server-side sessions (our own
``tracking_dashboard_*`` tables; Postal's ``users`` is never touched) and the
few figures the health page reads. This module holds SQL only: no hashing, no
HTTP; the dashboard and the CLI decide what to do with the rows.

A mixin of :class:`~postal_tracking_plugin.store._store.Store`: it needs only
:meth:`main` and :meth:`messages`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TypedDict

from ..errors import AlreadyExists
from ..errors import NotFound
from ._db import Db
from ._db import Row
from ._db import SqlValue
from ._db import utcnow
from ._event_ops import HOUR
from ._event_ops import hour_sql
from ._models import Server
from ._tokens import url_hash

#: Events the "people" figures count: recorded by us, counted, not flagged automated.
_PEOPLE = "x.counted = 1 AND x.bot = 0"


# -- what tracking_stats returns (``postal-tracking stats --json``, the overview) --


class Figures(TypedDict):
    """Events and the messages with at least one (``unique``)."""

    total: int
    unique: int


class KindFigures(TypedDict):
    """``all``: what Postal's ``clicks``/``loads`` hold; ``people``: counted, not flagged."""

    all: Figures
    people: Figures


class ServerRef(TypedDict):
    id: int
    name: str
    token: str


class MessageCounts(TypedDict):
    sent: int
    tracked: int


class Rates(TypedDict):
    """Percentages of the tracked messages, one decimal; None when none was tracked."""

    open_rate_people: float | None
    click_rate_people: float | None
    open_rate_all: float | None
    click_rate_all: float | None


class FlagCount(TypedDict):
    reason: str
    kind: str
    bot: bool
    events: int


class TopLink(TypedDict):
    url: str
    unique_people: int
    unique_all: int
    clicks: int


class TrackingStats(TypedDict):
    """One server's (or message's) figures: one entry of ``stats --json``'s ``servers``."""

    server: ServerRef
    #: The message the figures are narrowed to, or None.
    message: int | None
    messages: MessageCounts
    opens: KindFigures
    clicks: KindFigures
    rates: Rates
    flags: list[FlagCount]
    top_links: list[TopLink]


#: One hour of the overview's series: ``start`` (Unix seconds) and ``opens_people``,
#: ``opens_machines``, ``clicks_people``, ``clicks_machines``. A plain dict of ints,
#: not a TypedDict: the dashboard sums points into days key by key.
SeriesPoint = dict[str, int]


class _LinkGroup(TypedDict):
    """A URL's figures while :func:`_top_links` ranks them; ``link_id`` None until found."""

    link_id: int | None
    unique_people: int
    unique_all: int
    clicks: int


@dataclass(frozen=True)
class Filter:
    """Which messages and events a figure covers.

    ``since``/``until`` are Unix seconds (``until`` exclusive) applied to the
    message's send time for message counts and to the event's time for events;
    ``tag`` is Postal's ``messages.tag`` (the campaign); ``message_id`` narrows
    everything to one message.
    """

    since: float | None = None
    until: float | None = None
    tag: str | None = None
    message_id: int | None = None

    def messages_where(self) -> tuple[str, list[SqlValue]]:
        if self.message_id is not None:
            return "m.id = %s", [self.message_id]
        where: list[str] = ["m.scope = 'outgoing'"]
        params: list[SqlValue] = []
        if self.since is not None:
            where.append("m.timestamp >= %s")
            params.append(self.since)
        if self.until is not None:
            where.append("m.timestamp < %s")
            params.append(self.until)
        if self.tag:
            where.append("m.tag = %s")
            params.append(self.tag)
        return " AND ".join(where), params

    def events_from(self, table: str) -> str:
        """``table`` as ``x``, joined to its messages as ``tm`` when a tag is asked for.

        With a tag, the tag's messages are found first and their events read
        by message id: a scan of every event, each checked against the tag's
        messages, took seconds on a million events.
        """
        if self.tag and self.message_id is None:
            return f"messages tm JOIN {table} x ON x.message_id = tm.id"
        return f"{table} x"

    def events_where(self, alias: str = "x") -> tuple[str, list[SqlValue]]:
        """The condition on events (of ``FROM {events_from(...)}``) and its parameters."""
        where: list[str] = ["1 = 1"]
        params: list[SqlValue] = []
        if self.since is not None:
            where.append(f"{alias}.timestamp >= %s")
            params.append(self.since)
        if self.until is not None:
            where.append(f"{alias}.timestamp < %s")
            params.append(self.until)
        if self.message_id is not None:
            where.append(f"{alias}.message_id = %s")
            params.append(self.message_id)
        elif self.tag:
            where.append("tm.tag = %s")
            params.append(self.tag)
        return " AND ".join(where), params


def _aggregate(db: Db, sql: str, params: Sequence[SqlValue] = ()) -> Row:
    """The row of an aggregate query (``COUNT``, ``SUM``, ``MIN``): there is always one."""
    row = db.one(sql, params)
    if row is None:
        raise TypeError(f"an aggregate query returned no row: {sql}")
    return row


def _rate(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


def _bucket_sql(dialect: str, seconds: int) -> str:
    """The bucket number of ``x.timestamp`` (Unix seconds; positive, so truncation is floor).

    MariaDB's integer ``DIV`` on the decimal column: ``FLOOR(x.timestamp / 3600)``
    (a decimal division per row) made the series query over 1M events 4x slower
    (3.1 s against 0.75 s on the benchmark's data).
    """
    if dialect == "mysql":
        return f"x.timestamp DIV {int(seconds)}"
    # Whole seconds first, as the rollups' hours (``_event_ops.hour_sql``).
    return f"CAST(x.timestamp AS INTEGER) / {int(seconds)}"


_WHO_COUNTED, _WHO_PEOPLE = 0, 1


def _raw_unique(db: Db, flt: Filter, table: str, where: str, params: list[SqlValue]) -> int:
    ew, e_params = flt.events_where()
    row = _aggregate(
        db,
        f"SELECT COUNT(DISTINCT x.message_id) AS uniq FROM {flt.events_from(table)} "
        f"WHERE {where} AND {ew}",
        [*params, *e_params],
    )
    return int(row["uniq"])


def _unique(db: Db, flt: Filter, kind: str, who: int) -> int:
    """Messages with at least one event of ``kind`` and class ``who`` in the range.

    From the spans: a message whose last event is at or after ``since`` and
    whose first is before ``until`` may have one in the range; it certainly
    has unless its events surround the range (first before, last after),
    and only those are looked up in ``tracking_events`` (by message, from an
    index). Exact, whatever the range.
    """
    where = ["s.kind = %s", "s.who = %s"]
    params: list[SqlValue] = [kind, who]
    if flt.tag:
        where.append("s.tag = %s")
        params.append(flt.tag)
    if flt.since is not None:
        where.append("s.last_at >= %s")
        params.append(flt.since)
    if flt.until is not None:
        where.append("s.first_at < %s")
        params.append(flt.until)
    if flt.since is not None and flt.until is not None:
        people = " AND e.bot = 0" if who == _WHO_PEOPLE else ""
        where.append(
            "NOT (s.first_at < %s AND s.last_at >= %s AND NOT EXISTS (SELECT 1 FROM "
            "tracking_events e WHERE e.message_id = s.message_id AND e.kind = s.kind AND "
            f"e.counted = 1{people} AND e.timestamp >= %s AND e.timestamp < %s))"
        )
        params += [flt.since, flt.until, flt.since, flt.until]
    row = _aggregate(
        db, f"SELECT COUNT(*) AS n FROM tracking_event_spans s WHERE {' AND '.join(where)}", params
    )
    return int(row["n"])


def _rolled_groups(db: Db, flt: Filter) -> list[Row]:
    """``(b, kind, bot, counted, reason, known, n)`` rows of the range, by hour.

    Whole hours from ``tracking_event_hours``; the part of an hour at either
    end of a range that does not start or end on the hour from the events.
    """
    since, until = flt.since, flt.until
    first = None if since is None else -(-int(math.ceil(since)) // HOUR)
    last = None if until is None else int(math.floor(until)) // HOUR
    edges: list[tuple[float | None, float | None]] = []
    if first is not None and last is not None and first >= last:
        first = last = None
        edges.append((since, until))
        whole = False
    else:
        whole = True
        if since is not None and first is not None and since < first * HOUR:
            edges.append((since, first * HOUR))
        if until is not None and last is not None and until > last * HOUR:
            edges.append((last * HOUR, until))
    rows: list[Row] = []
    if whole:
        where: list[str] = ["1 = 1"]
        params: list[SqlValue] = []
        if first is not None:
            where.append("h.hour >= %s")
            params.append(first)
        if last is not None:
            where.append("h.hour < %s")
            params.append(last)
        if flt.tag:
            where.append("h.tag = %s")
            params.append(flt.tag)
        rows += db.query(
            "SELECT h.hour AS b, h.kind, h.bot, h.counted, h.reason, h.known, "
            f"SUM(h.events) AS n FROM tracking_event_hours h WHERE {' AND '.join(where)} "
            "GROUP BY h.hour, h.kind, h.bot, h.counted, h.reason, h.known",
            params,
        )
    for lo, hi in edges:
        part = Filter(since=lo, until=hi, tag=flt.tag)
        ew, e_params = part.events_where()
        rows += db.query(
            f"SELECT {hour_sql(db.dialect)} AS b, x.kind, x.bot, x.counted, x.reason, "
            "CASE WHEN x.message_id IS NULL THEN 0 ELSE 1 END AS known, COUNT(*) AS n "
            f"FROM {_edge_from(part)} WHERE {ew} GROUP BY b, x.kind, x.bot, x.counted, "
            "x.reason, known",
            e_params,
        )
    return rows


def _edge_from(flt: Filter) -> str:
    """Events of part of an hour: by time first (a tag's messages first would read all of its events)."""
    if flt.tag:
        return "tracking_events x JOIN messages tm ON tm.id = x.message_id"
    return "tracking_events x"


class DashboardOperations:
    """Figures, search, timelines, accounts and sessions (see the module docstring)."""

    def main(self, *, create: bool = False, readonly: bool = False) -> AbstractContextManager[Db]:
        raise NotImplementedError

    def messages(
        self, server_id: int, *, create: bool = False, readonly: bool = False
    ) -> AbstractContextManager[Db]:
        raise NotImplementedError

    # -- the numbers ---------------------------------------------------------

    #: Whether Postal's own fast server may write ``clicks``/``loads`` rows that
    #: our rollups never see (``tracking.store: postal``): then the "all events"
    #: figures are read from those tables.
    postal_writes_events: bool = False

    def tracking_stats(self, server: Server, flt: Filter, *, top: int = 10) -> TrackingStats:
        """Every figure of one server (or one of its messages), as plain data.

        The shape is ``postal-tracking stats --json``'s, one entry of ``servers``.
        ``top=0`` leaves out the top links (their queries are the dearest).
        """
        return self.tracking_overview(server, flt, top=top)[0]

    def tracking_overview(
        self, server: Server, flt: Filter, *, top: int = 10, exact: bool = False
    ) -> tuple[TrackingStats, list[SeriesPoint]]:
        """:meth:`tracking_stats` and, from the same rows, the hourly series.

        The series has one point per hour with counted events, oldest first:
        ``start`` (Unix seconds) and ``opens_people``, ``opens_machines``,
        ``clicks_people``, ``clicks_machines``. Totals, flag reasons and the
        series come from ``tracking_event_hours`` for the whole hours of the
        range and from ``tracking_events`` for the parts of an hour at its
        ends; unique counts from ``tracking_event_spans`` (see
        :func:`_unique`). One message's figures, and ``exact=True`` (the
        tests' reference), read every event instead: the same numbers.
        """
        mw, m_params = flt.messages_where()
        ew, e_params = flt.events_where()
        rolled = flt.message_id is None and not exact
        with self.messages(server.id, readonly=True) as db:
            sent = _aggregate(
                db,
                "SELECT COUNT(*) AS sent, COALESCE(SUM(CASE WHEN m.parsed = 1 AND "
                "(m.tracked_links > 0 OR m.tracked_images > 0) THEN 1 ELSE 0 END), 0) AS tracked "
                f"FROM messages m WHERE {mw}",
                m_params,
            )
            if rolled:
                groups = _rolled_groups(db, flt)
            else:
                groups = db.query(
                    f"SELECT {_bucket_sql(db.dialect, 3600)} AS b, x.kind, x.bot, x.counted, "
                    "x.reason, CASE WHEN x.message_id IS NULL THEN 0 ELSE 1 END AS known, "
                    f"COUNT(*) AS n FROM {flt.events_from('tracking_events')} WHERE {ew} "
                    # ORDER BY NULL: MariaDB sorts a GROUP BY's rows unless told not to.
                    "GROUP BY b, x.kind, x.bot, x.counted, x.reason, known ORDER BY NULL",
                    e_params,
                )
            figures: dict[str, KindFigures] = {}
            for kind, table in (("open", "loads"), ("click", "clicks")):
                people = [g for g in groups if g["kind"] == kind and g["counted"] and not g["bot"]]
                people_figures: Figures = {
                    "total": sum(int(g["n"]) for g in people),
                    "unique": _unique(db, flt, kind, _WHO_PEOPLE)
                    if rolled
                    else _raw_unique(
                        db, flt, "tracking_events", f"x.kind = %s AND {_PEOPLE}", [kind]
                    ),
                }
                if self.postal_writes_events or not rolled:
                    # Postal's fast server may write ``clicks``/``loads`` beside us (postal
                    # mode): no rollup of ours sees those rows, so they are read here.
                    everything = _aggregate(
                        db,
                        f"SELECT COUNT(*) AS total, COUNT(DISTINCT x.message_id) AS uniq "
                        f"FROM {flt.events_from(table)} WHERE {ew}",
                        e_params,
                    )
                    all_figures: Figures = {
                        "total": int(everything["total"]),
                        "unique": int(everything["uniq"]),
                    }
                else:
                    # Our store writes ``clicks``/``loads`` only with the counted events
                    # (an open without a message gets no ``loads`` row).
                    all_figures = {
                        "total": sum(
                            int(g["n"])
                            for g in groups
                            if g["kind"] == kind
                            and g["counted"]
                            and (kind == "click" or g["known"])
                        ),
                        "unique": _unique(db, flt, kind, _WHO_COUNTED),
                    }
                figures[kind] = {"all": all_figures, "people": people_figures}
            opens, clicks = figures["open"], figures["click"]
            one_pass = rolled and not self.postal_writes_events
            ranked = (
                _top_links(db, flt, ew, e_params, top, one_pass=one_pass)
                if top > 0 or flt.message_id
                else []
            )
        reasons: dict[tuple[str, str, int], int] = {}
        series: dict[int, SeriesPoint] = {}
        for r in groups:
            n = int(r["n"])
            if r["reason"]:
                key = (str(r["reason"]), str(r["kind"]), int(r["bot"]))
                reasons[key] = reasons.get(key, 0) + n
            if int(r["counted"]) != 1:
                continue
            start = int(r["b"]) * 3600
            point = series.setdefault(
                start,
                {
                    "start": start,
                    "opens_people": 0,
                    "opens_machines": 0,
                    "clicks_people": 0,
                    "clicks_machines": 0,
                },
            )
            kind = "opens" if r["kind"] == "open" else "clicks"
            point[f"{kind}_{'machines' if int(r['bot']) else 'people'}"] += n
        flags = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
        tracked = int(sent["tracked"] or 0)
        report: TrackingStats = {
            "server": {"id": server.id, "name": server.name, "token": server.token},
            "message": flt.message_id,
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
                {"reason": reason, "kind": kind, "bot": bool(bot), "events": n}
                for (reason, kind, bot), n in flags
            ],
            "top_links": ranked[: max(top, 0)] if flt.message_id is None else ranked,
        }
        return report, [series[k] for k in sorted(series)]

    def link_series(
        self, server_id: int, flt: Filter, bucket: int, urls: list[str]
    ) -> dict[str, dict[int, int]]:
        """Counted clicks per bucket for each of ``urls``: ``{url: {bucket start: clicks}}``.

        The URLs' links are found by ``links.hash`` first, and the clicks
        read for those links: joining every click with its link to compare
        the ``TEXT`` URL read the whole links table once per click.
        """
        if not urls:
            return {}
        ew, params = flt.events_where()
        hashes = sorted({url_hash(u) for u in urls})
        with self.messages(server_id, readonly=True) as db:
            rows = db.query(
                f"SELECT l.url, t.b, SUM(t.n) AS n FROM (SELECT x.link_id, "
                f"{_bucket_sql(db.dialect, bucket)} AS b, COUNT(*) AS n "
                f"FROM {flt.events_from('tracking_events')} WHERE x.kind = 'click' "
                f"AND x.counted = 1 AND {ew} AND x.link_id IN (SELECT id FROM links WHERE "
                f"hash IN ({', '.join(['%s'] * len(hashes))}) OR hash IS NULL) "
                "GROUP BY x.link_id, b) t JOIN links l ON l.id = t.link_id GROUP BY l.url, t.b",
                [*params, *hashes],
            )
        out: dict[str, dict[int, int]] = {url: {} for url in urls}
        for r in rows:
            if r["url"] in out:
                out[r["url"]][int(r["b"]) * bucket] = int(r["n"])
        return out

    # -- messages ------------------------------------------------------------

    def search_messages(
        self,
        server_id: int,
        *,
        rcpt: str | None = None,
        subject: str | None = None,
        tag: str | None = None,
        token: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
    ) -> list[Row]:
        """Outgoing messages, newest first. ``rcpt``/``subject`` match a part; ``tag``/``token`` exactly."""
        where: list[str] = ["m.scope = 'outgoing'"]
        params: list[SqlValue] = []
        if rcpt:
            where.append("m.rcpt_to LIKE %s ESCAPE '!'")
            params.append(f"%{_like(rcpt)}%")
        if subject:
            where.append("m.subject LIKE %s ESCAPE '!'")
            params.append(f"%{_like(subject)}%")
        if tag:
            where.append("m.tag = %s")
            params.append(tag)
        if token:
            where.append("m.token = %s")
            params.append(token)
        if since is not None:
            where.append("m.timestamp >= %s")
            params.append(since)
        if until is not None:
            where.append("m.timestamp < %s")
            params.append(until)
        with self.messages(server_id, readonly=True) as db:
            return db.query(
                "SELECT m.id, m.token, m.rcpt_to, m.mail_from, m.subject, m.tag, m.timestamp, "
                "m.loaded, m.clicked, m.tracked_links, m.tracked_images FROM messages m "
                f"WHERE {' AND '.join(where)} ORDER BY m.timestamp DESC, m.id DESC LIMIT %s",
                [*params, int(limit)],
            )

    def message_timeline(self, server_id: int, message_id: int) -> list[Row]:
        """Every event we recorded for the message, oldest first, with the link's URL."""
        with self.messages(server_id, readonly=True) as db:
            return db.query(
                "SELECT x.timestamp, x.kind, x.method, x.ip_address, x.user_agent, x.bot, "
                "x.reason, x.counted, l.url FROM tracking_events x "
                "LEFT JOIN links l ON l.id = x.link_id WHERE x.message_id = %s "
                "ORDER BY x.timestamp, x.event_id",
                (message_id,),
            )

    def message_links(self, server_id: int, message_id: int) -> list[Row]:
        with self.messages(server_id, readonly=True) as db:
            return db.query(
                "SELECT id, token, url FROM links WHERE message_id = %s ORDER BY id", (message_id,)
            )

    # -- health --------------------------------------------------------------

    def latest_event(self, server_id: int) -> Row | None:
        """The newest recorded event's time and when the writer stored it (``recorded_at``)."""
        with self.messages(server_id, readonly=True) as db:
            return db.one(
                "SELECT x.timestamp, x.recorded_at FROM tracking_events x "
                "ORDER BY x.timestamp DESC LIMIT 1"
            )

    def webhooks_waiting(self) -> dict[str, int]:
        """Webhook deliveries not yet made: ours (standalone) and Postal's queue."""
        with self.main(readonly=True) as db:
            ours = _aggregate(
                db, "SELECT COUNT(*) AS n FROM tracking_webhook_deliveries WHERE status = 'pending'"
            )
            postal = _aggregate(db, "SELECT COUNT(*) AS n FROM webhook_requests")
        return {"standalone": int(ours["n"]), "postal": int(postal["n"])}

    def certificate_runs(self) -> list[Row]:
        """Each domain's last certificate attempt (``tracking_certificate_status``), newest first."""
        with self.main(readonly=True) as db:
            return db.query(
                "SELECT domain, status, last_error, updated_at FROM tracking_certificate_status "
                "WHERE updated_at IS NOT NULL ORDER BY updated_at DESC, domain"
            )

    # -- dashboard accounts --------------------------------------------------

    def add_dashboard_user(self, email: str, password_hash: str) -> int:
        email = email.strip().lower()
        now = utcnow()
        with self.main() as db:
            if db.one("SELECT id FROM tracking_dashboard_users WHERE email = %s", (email,)):
                raise AlreadyExists(
                    f"dashboard user {email} exists already: `postal-tracking users passwd "
                    f"{email}` changes the password"
                )
            return db.insert(
                "INSERT INTO tracking_dashboard_users (email, password_hash, created_at, "
                "updated_at) VALUES (%s, %s, %s, %s)",
                (email, password_hash, now, now),
            )

    def list_dashboard_users(self) -> list[Row]:
        with self.main(readonly=True) as db:
            return db.query(
                "SELECT id, email, created_at, last_login_at FROM tracking_dashboard_users "
                "ORDER BY email"
            )

    def find_dashboard_user(self, email: str) -> Row | None:
        with self.main(readonly=True) as db:
            return db.one(
                "SELECT * FROM tracking_dashboard_users WHERE email = %s", (email.strip().lower(),)
            )

    def _user_id(self, db: Db, email: str) -> int:
        row = db.one(
            "SELECT id FROM tracking_dashboard_users WHERE email = %s", (email.strip().lower(),)
        )
        if row is None:
            raise NotFound(
                f"no dashboard user {email.strip().lower()}: `postal-tracking users list` "
                f"shows them"
            )
        return int(row["id"])

    def set_dashboard_password(self, email: str, password_hash: str) -> None:
        """Change the password and end every session of the account."""
        with self.main() as db:
            user_id = self._user_id(db, email)
            db.execute(
                "UPDATE tracking_dashboard_users SET password_hash = %s, updated_at = %s "
                "WHERE id = %s",
                (password_hash, utcnow(), user_id),
            )
            db.execute("DELETE FROM tracking_dashboard_sessions WHERE user_id = %s", (user_id,))

    def remove_dashboard_user(self, email: str) -> None:
        with self.main() as db:
            user_id = self._user_id(db, email)
            db.execute("DELETE FROM tracking_dashboard_sessions WHERE user_id = %s", (user_id,))
            db.execute("DELETE FROM tracking_dashboard_users WHERE id = %s", (user_id,))

    def start_dashboard_session(
        self, session_hash: str, user_id: int, address: str | None, lifetime: float
    ) -> None:
        now = time.time()
        with self.main() as db:
            db.execute("DELETE FROM tracking_dashboard_sessions WHERE expires_at < %s", (now,))
            db.execute(
                "INSERT INTO tracking_dashboard_sessions (id, user_id, address, created_at, "
                "expires_at) VALUES (%s, %s, %s, %s, %s)",
                (session_hash, user_id, address, now, now + lifetime),
            )
            db.execute(
                "UPDATE tracking_dashboard_users SET last_login_at = %s WHERE id = %s",
                (utcnow(), user_id),
            )

    def dashboard_session_user(self, session_hash: str) -> Row | None:
        """The user of a live session (``id``, ``email``), or None if it ended or expired."""
        with self.main(readonly=True) as db:
            return db.one(
                "SELECT u.id, u.email FROM tracking_dashboard_sessions s "
                "JOIN tracking_dashboard_users u ON u.id = s.user_id "
                "WHERE s.id = %s AND s.expires_at > %s",
                (session_hash, time.time()),
            )

    # -- the failed-login throttle --------------------------------------------

    def login_failures(self, key_hashes: list[str], since: float) -> list[Row]:
        """Per key with failures after ``since``: ``key_hash``, ``failures``, ``oldest``."""
        if not key_hashes:
            return []
        with self.main(readonly=True) as db:
            return db.query(
                "SELECT key_hash, COUNT(*) AS failures, MIN(failed_at) AS oldest "
                "FROM tracking_dashboard_login_failures WHERE failed_at > %s AND key_hash IN "
                f"({', '.join(['%s'] * len(key_hashes))}) GROUP BY key_hash",
                [since, *key_hashes],
            )

    def add_login_failure(self, key_hashes: list[str], now: float, forget_before: float) -> None:
        """Count one failed login for each key; failures before ``forget_before`` go."""
        with self.main() as db:
            db.execute(
                "DELETE FROM tracking_dashboard_login_failures WHERE failed_at <= %s",
                (forget_before,),
            )
            db.executemany(
                "INSERT INTO tracking_dashboard_login_failures (key_hash, failed_at) "
                "VALUES (%s, %s)",
                [(k, now) for k in key_hashes],
            )

    def clear_login_failures(self, key_hashes: list[str]) -> None:
        if not key_hashes:
            return
        with self.main() as db:
            db.execute(
                "DELETE FROM tracking_dashboard_login_failures WHERE key_hash IN "
                f"({', '.join(['%s'] * len(key_hashes))})",
                key_hashes,
            )

    def end_dashboard_session(self, session_hash: str) -> None:
        with self.main() as db:
            db.execute("DELETE FROM tracking_dashboard_sessions WHERE id = %s", (session_hash,))


def _like(text: str) -> str:
    """``text`` with LIKE's wildcards escaped by ``!`` (``ESCAPE '!'``: a backslash is
    written differently in the two dialects' string literals)."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def _top_links(
    db: Db, flt: Filter, ew: str, e_params: list[SqlValue], top: int, *, one_pass: bool = False
) -> list[TopLink]:
    """URLs ranked by unique people clicking, then unique messages, then clicks.

    Grouped by ``links.hash`` (the URL's SHA-1, set by Postal and by us), not by
    the ``TEXT`` URL, which made MariaDB group in an on-disk temporary table;
    the URLs are read for the ranked rows only. Links without a hash (written
    by neither) are grouped by URL apart.
    """
    cw, c_params = flt.events_where()
    # Clicks are grouped by link and message first, so the join with links
    # reads one row per clicked link rather than one per click.
    everything = (
        "SELECT {key} AS k, MIN(l.id) AS link_id, COUNT(DISTINCT t.message_id) AS all_unique, "
        "SUM(t.n) AS all_total FROM (SELECT x.link_id, x.message_id, COUNT(*) AS n "
        f"FROM {flt.events_from('clicks')} WHERE {cw} GROUP BY x.link_id, x.message_id) t "
        "JOIN links l ON l.id = t.link_id WHERE {which} GROUP BY {key}"
    )
    people = (
        "SELECT {key} AS k, COUNT(DISTINCT t.message_id) AS people_unique "
        f"FROM (SELECT DISTINCT x.link_id, x.message_id FROM {flt.events_from('tracking_events')} "
        f"WHERE x.kind = 'click' AND {_PEOPLE} AND {ew}) t "
        "JOIN links l ON l.id = t.link_id WHERE {which} GROUP BY {key}"
    )
    if one_pass:
        # Where our store writes ``clicks`` (with the counted click events), both
        # figures come from one pass over the events' (kind, counted, bot, time,
        # message, link) index: Postal's ``clicks`` has no index to read instead.
        everything = (
            "SELECT {key} AS k, MIN(l.id) AS link_id, COUNT(DISTINCT t.message_id) AS all_unique, "
            "SUM(t.n) AS all_total, COUNT(DISTINCT CASE WHEN t.people = 1 THEN t.message_id END) "
            "AS people_unique FROM (SELECT x.link_id, x.message_id, COUNT(*) AS n, "
            "MAX(CASE WHEN x.bot = 0 THEN 1 ELSE 0 END) AS people "
            f"FROM {flt.events_from('tracking_events')} WHERE x.kind = 'click' AND x.counted = 1 "
            f"AND {ew} GROUP BY x.link_id, x.message_id) t "
            "JOIN links l ON l.id = t.link_id WHERE {which} GROUP BY {key}"
        )
        c_params = e_params
    groups: dict[tuple[str, str], _LinkGroup] = {}
    for key, which in (("l.hash", "l.hash IS NOT NULL"), ("l.url", "l.hash IS NULL")):
        for r in db.query(everything.format(key=key, which=which), c_params):
            groups[(key, r["k"])] = {
                "link_id": int(r["link_id"]),
                "unique_people": 0,
                "unique_all": int(r["all_unique"]),
                "clicks": int(r["all_total"]),
            }
            if one_pass:
                groups[(key, r["k"])]["unique_people"] = int(r["people_unique"])
        if one_pass:
            continue
        for r in db.query(people.format(key=key, which=which), e_params):
            group = groups.setdefault(
                (key, r["k"]),
                {"link_id": None, "unique_people": 0, "unique_all": 0, "clicks": 0},
            )
            group["unique_people"] = int(r["people_unique"])
    if flt.message_id is not None:
        # One message: every link it has, clicked or not.
        for r in db.query(
            "SELECT id, hash, url FROM links WHERE message_id = %s ORDER BY id", (flt.message_id,)
        ):
            k = ("l.hash", r["hash"]) if r["hash"] is not None else ("l.url", r["url"])
            group = groups.setdefault(
                k, {"link_id": None, "unique_people": 0, "unique_all": 0, "clicks": 0}
            )
            if group["link_id"] is None:
                group["link_id"] = int(r["id"])
    # A people-only group (its clicks pruned from Postal's table) has no link yet.
    missing = [k for k, g in groups.items() if g["link_id"] is None]
    for key, value in missing:
        row = _aggregate(db, f"SELECT MIN(id) AS id FROM links l WHERE {key} = %s", (value,))
        groups[(key, value)]["link_id"] = int(row["id"])

    def rank(g: _LinkGroup) -> tuple[int, int, int]:
        return (-g["unique_people"], -g["unique_all"], -g["clicks"])

    ordered = sorted(groups.values(), key=rank)
    if flt.message_id is None and len(ordered) > top:
        # The cut, and whatever ties with the last row kept (the URL decides those).
        cut = rank(ordered[max(top, 1) - 1])
        ordered = [g for g in ordered if rank(g) <= cut] if top > 0 else []
    urls: dict[int, str] = {}
    ids = [_found(g) for g in ordered]
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for r in db.query(
            f"SELECT id, url FROM links WHERE id IN ({', '.join(['%s'] * len(chunk))})", chunk
        ):
            urls[int(r["id"])] = r["url"]
    ranked: list[TopLink] = [
        {
            "url": urls[_found(g)],
            "unique_people": g["unique_people"],
            "unique_all": g["unique_all"],
            "clicks": g["clicks"],
        }
        for g in ordered
    ]
    ranked.sort(key=lambda r: (-r["unique_people"], -r["unique_all"], -r["clicks"], r["url"]))
    return ranked


def _found(group: _LinkGroup) -> int:
    """The group's link id: every group without one was looked up by then."""
    link_id = group["link_id"]
    if link_id is None:
        raise TypeError("a top-links group without a link id after the look-up")
    return link_id
