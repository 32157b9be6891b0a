"""Operations on a server's message database: tracked messages, links, events.

A mixin of :class:`~postal_tracking_plugin.store._store.Store`: it needs only
:meth:`messages`, the backend's transaction on one message database.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from contextlib import AbstractContextManager

from .._hub import cooperate
from .._recorded_event import RecordedEvent
from ._db import Db
from ._db import Row
from ._db import SqlValue
from ._event_ops import EventOperations
from ._event_ops import FlagQueries
from ._event_ops import add_to_rollups
from ._models import Link
from ._tokens import url_hash

#: Rows per INSERT and messages per UPDATE statement. Building, escaping and
#: sending a statement (PyMySQL is pure Python) runs in one stretch of the
#: gevent hub's thread, between two waits on the socket: smaller statements
#: keep that stretch, and so the requests' wait, short.
ROWS_PER_STATEMENT = 100

#: A ``clicks`` row to insert: ``(message_id, link_id, ip_address, user_agent, timestamp)``.
ClickRow = tuple[int | None, int | None, str | None, str | None, float]
#: A ``loads`` row to insert: ``(message_id, ip_address, user_agent, timestamp)``.
LoadRow = tuple[int, str | None, str | None, float]


class MessageOperations(EventOperations):
    """Messages, links, clicks, loads and our ``tracking_events``."""

    def messages(
        self, server_id: int, *, create: bool = False, readonly: bool = False
    ) -> AbstractContextManager[Db]:
        raise NotImplementedError

    def save_tracked_message(
        self, server_id: int, message: Mapping[str, SqlValue], links: Sequence[Link]
    ) -> int:
        """Insert a ``messages`` row and its ``links`` rows in one transaction.

        ``message`` maps Postal's ``messages`` columns to values; links are
        written in one batched statement. Returns the message id. A message
        without a ``status`` is ``Pending``, as Postal writes it (Postal's
        message list cannot show a NULL status).
        """
        if not message.get("status"):
            message = {**message, "status": "Pending"}
        columns = list(message)
        with self.messages(server_id) as db:
            message_id = db.insert(
                f"INSERT INTO messages ({', '.join(f'`{c}`' for c in columns)}) "
                f"VALUES ({', '.join(['%s'] * len(columns))})",
                tuple(message.values()),
            )
            timestamp = message.get("timestamp")
            db.executemany(
                "INSERT INTO links (message_id, token, hash, url, timestamp) "
                "VALUES (%s, %s, %s, %s, %s)",
                [
                    (message_id, link.token, url_hash(link.url), link.url, timestamp)
                    for link in links
                ],
            )
        return message_id

    def find_link(self, server_id: int, token: str) -> Row | None:
        """``{id, message_id, url}`` of the link with ``token``, or None."""
        with self.messages(server_id, readonly=True) as db:
            return db.one("SELECT id, message_id, url FROM links WHERE token = %s", (token,))

    def find_message(self, server_id: int, token: str) -> Row | None:
        with self.messages(server_id, readonly=True) as db:
            return db.one("SELECT * FROM messages WHERE token = %s", (token,))

    def record_clicks(self, server_id: int, clicks: Iterable[ClickRow]) -> None:
        """Insert ``clicks`` rows ``(message_id, link_id, ip, user_agent, timestamp)``.

        Also sets each message's ``clicked`` to its latest click, as Postal does.
        Not idempotent: the event recorder uses :meth:`record_events`.
        """
        rows = list(clicks)
        if not rows:
            return
        with self.messages(server_id) as db:
            _insert_clicks(db, rows)

    def record_loads(self, server_id: int, loads: Iterable[LoadRow]) -> None:
        """Insert ``loads`` rows ``(message_id, ip, user_agent, timestamp)``.

        Sets ``messages.loaded`` to the earliest open: Postal sets it on the
        first open, which is the earliest as long as opens arrive in order;
        spools drain out of order, so an earlier open replaces a later one.
        Not idempotent: the event recorder uses :meth:`record_events`.
        """
        rows = list(loads)
        if not rows:
            return
        with self.messages(server_id) as db:
            _insert_loads(db, rows)

    def record_events(
        self,
        server_id: int,
        events: Sequence[RecordedEvent],
        flag: Callable[[FlagQueries, list[RecordedEvent]], None] | None = None,
        *,
        webhooks_pending: bool = False,
        claimant: str | None = None,
    ) -> list[RecordedEvent]:
        """Record click and open events of one server exactly once, in one transaction.

        Each event is a dict with ``event_id``, ``kind`` (``click`` or ``open``),
        ``method``, ``message_id``, ``link_id``, ``ip_address``, ``user_agent`` and
        ``timestamp``. An event whose id is already in ``tracking_events`` is
        skipped, so replaying a spool after a crash never writes a row twice.
        ``flag(queries, new_events)`` runs inside the transaction (``queries`` a
        :class:`FlagQueries` on it) to set ``bot`` and ``bot_reason`` on each
        event (and may flag earlier rows). Counted
        events (anything but ``HEAD``) also get Postal's ``clicks``/``loads`` rows
        and ``messages.clicked``/``loaded``, in multi-row statements.
        ``webhooks_pending`` marks counted events as still to be queued for
        webhooks (``tracking_events.webhooks_queued = 0``), so a crash between
        this commit and the queueing is caught up afterwards; ``claimant``
        claims them in the same statement (``webhooks_claimed_by``), so no
        other process's catch-up queues them while the claim is fresh.

        :returns: the events that were new, in order.
        """
        with self.messages(server_id) as db:
            seen: set[str] = set()
            ids = [e["event_id"] for e in events]
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = db.query(
                    "SELECT event_id FROM tracking_events WHERE event_id IN "
                    f"({', '.join(['%s'] * len(chunk))})",
                    chunk,
                )
                seen.update(str(r["event_id"]) for r in rows)
            cooperate()
            fresh = []
            for event in events:
                if event["event_id"] not in seen:
                    seen.add(event["event_id"])
                    fresh.append(event)
            if not fresh:
                return []
            for event in fresh:
                event.setdefault("bot", False)
                event.setdefault("bot_reason", None)
            if flag is not None:
                flag(FlagQueries(db), fresh)
                cooperate()
            clicks: list[ClickRow] = []
            loads: list[LoadRow] = []
            tracked: list[tuple[SqlValue, ...]] = []
            now = time.time()
            for e in fresh:
                method = (e.get("method") or "GET").upper()
                counted = method != "HEAD"
                pending = webhooks_pending and counted
                if counted:
                    if e["kind"] == "click":
                        clicks.append(
                            (
                                e["message_id"],
                                e["link_id"],
                                e["ip_address"],
                                e["user_agent"],
                                e["timestamp"],
                            )
                        )
                    elif e["kind"] == "open" and e["message_id"] is not None:
                        loads.append(
                            (e["message_id"], e["ip_address"], e["user_agent"], e["timestamp"])
                        )
                tracked.append(
                    (
                        e["event_id"],
                        e["kind"],
                        method[:8],
                        e["message_id"],
                        e.get("link_id"),
                        e["ip_address"],
                        _agent(e["user_agent"]),
                        e["timestamp"],
                        int(bool(e["bot"])),
                        e["bot_reason"],
                        int(counted),
                        int(not pending),
                        now,
                        claimant if pending else None,
                        now if pending and claimant else None,
                    )
                )
            cooperate()
            _insert_clicks(db, clicks)
            _insert_loads(db, loads)
            _insert_rows(
                db,
                "INSERT INTO tracking_events (event_id, kind, method, message_id, link_id, "
                "ip_address, user_agent, timestamp, bot, reason, counted, webhooks_queued, "
                "recorded_at, webhooks_claimed_by, webhooks_claimed_at) VALUES",
                tracked,
            )
            add_to_rollups(db, fresh)
        return fresh


def _insert_clicks(db: Db, clicks: Sequence[ClickRow]) -> None:
    """``clicks`` rows in one statement, and ``messages.clicked`` = the latest click."""
    if not clicks:
        return
    latest: dict[int, float] = {}
    for message_id, _link, _ip, _ua, ts in clicks:
        if message_id is not None:
            latest[message_id] = max(ts, latest.get(message_id, ts))
    _insert_rows(
        db,
        "INSERT INTO clicks (message_id, link_id, ip_address, user_agent, timestamp) VALUES",
        [(m, li, ip, _agent(ua), ts) for m, li, ip, ua, ts in clicks],
    )
    _set_message_times(db, "clicked", latest, only_if="`clicked` IS NULL OR `clicked` < {new}")


def _insert_loads(db: Db, loads: Sequence[LoadRow]) -> None:
    """``loads`` rows in one statement, and ``messages.loaded`` = the earliest open."""
    if not loads:
        return
    first: dict[int, float] = {}
    for message_id, _ip, _ua, ts in loads:
        first[message_id] = min(ts, first.get(message_id, ts))
    _insert_rows(
        db,
        "INSERT INTO loads (message_id, ip_address, user_agent, timestamp) VALUES",
        [(m, ip, _agent(ua), ts) for m, ip, ua, ts in loads],
    )
    _set_message_times(db, "loaded", first, only_if="`loaded` IS NULL OR `loaded` > {new}")


def _agent(user_agent: str | None) -> str | None:
    """A User-Agent as stored: at most 255 characters; missing stays NULL, as Postal's."""
    return None if user_agent is None else user_agent[:255]


def _set_message_times(db: Db, column: str, times: dict[int, float], *, only_if: str) -> None:
    """``messages.<column>`` of many messages in one statement per 100, not one per message.

    ``only_if`` is the condition (``{new}`` stands for the new value) under
    which a row's value is replaced, as Postal's rules say.
    """
    items = sorted(times.items())
    inline = db.dialect == "mysql"
    for start in range(0, len(items), ROWS_PER_STATEMENT):
        chunk = items[start : start + ROWS_PER_STATEMENT]
        params: list[SqlValue] = []
        new = (
            "(CASE `id` "
            + "".join(
                f"WHEN {_value(m, params, inline)} THEN {_value(t, params, inline)} "
                for m, t in chunk
            )
            + "END)"
        )
        id_params: list[SqlValue] = []
        id_list = ", ".join([_value(m, id_params, inline) for m, _ in chunk])
        condition = only_if.format(new=new)
        db.execute(
            f"UPDATE messages SET `{column}` = CASE WHEN {condition} THEN {new} "
            f"ELSE `{column}` END WHERE `id` IN ({id_list})",
            [*(params * condition.count("CASE")), *params, *id_params],
        )
        cooperate()


def _insert_rows(db: Db, head: str, rows: Sequence[Sequence[SqlValue]]) -> None:
    """``head`` (``INSERT INTO t (columns) VALUES``) for ``rows``, 100 rows a statement.

    On MySQL numbers and NULLs are written into the statement as PyMySQL
    writes them, and only the other values go through its escaping: its
    dispatch per value was most of the cost of a batch. SQLite binds them all.
    """
    if not rows:
        return
    if db.dialect != "mysql":
        db.executemany(f"{head} ({', '.join(['%s'] * len(rows[0]))})", rows)
        return
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        params: list[SqlValue] = []
        bind = params.append
        values = []
        for row in rows[start : start + ROWS_PER_STATEMENT]:
            texts: list[str] = []
            put = texts.append
            for value in row:
                kind = type(value)
                if kind is int:
                    put(str(value))
                elif kind is float and (text := _float_repr(value)) not in _NOT_FINITE:
                    put(text if "e" in text else text + "e0")
                elif value is None:
                    put("NULL")
                else:
                    bind(value)
                    put("%s")
            values.append("(" + ", ".join(texts) + ")")
        db.execute(f"{head} {', '.join(values)}", params)
        cooperate()


# Called only where ``type(value) is float`` (the hot loop above tests the type, not
# isinstance: a bool is an int and goes through PyMySQL's escaping).
_float_repr: Callable[[SqlValue], str] = float.__repr__
_NOT_FINITE = frozenset(("inf", "-inf", "nan"))


def _value(value: SqlValue, params: list[SqlValue], inline: bool) -> str:
    """``value`` written into the statement (an int, a finite float or None, on
    MySQL: the text PyMySQL would send), or ``%s`` with ``value`` added to ``params``.

    :func:`_insert_rows` has the same rules written out in its loop.
    """
    if inline:
        kind = type(value)
        if kind is int:
            return str(value)
        if kind is float:
            text = _float_repr(value)
            if text not in _NOT_FINITE:
                return text if "e" in text else text + "e0"
        elif value is None:
            return "NULL"
    params.append(value)
    return "%s"
