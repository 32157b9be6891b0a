"""The SQL the event recorder, its webhooks and the privacy commands need,
and the upkeep of the dashboard's rollups (``tracking_event_hours``,
``tracking_event_spans``: written with the events, corrected by late flags,
``prune`` and ``forget``, rebuilt by the migration's backfill).

A mixin of :class:`~postal_tracking_plugin.store._store.Store` (through
:class:`~postal_tracking_plugin.store._message_ops.MessageOperations`), so that
``events/`` and the CLI name operations instead of writing SQL. Also
:func:`write_refused`, which tells "the store will not write now" (retry, however
long it takes) from "this write is bad" (find the bad event, set it aside).
"""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
import time
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from collections.abc import Sized
from contextlib import AbstractContextManager
from decimal import Decimal
from typing import SupportsFloat
from typing import TypeVar

import pymysql.err

from .._hub import cooperate
from .._recorded_event import RecordedEvent
from ._db import Db
from ._db import Row
from ._db import SqlValue

#: Ids per ``IN (...)`` list.
_CHUNK = 500

_T = TypeVar("_T")

#: A Postal ``webhook_requests`` row to queue: (server_id, webhook_id, url, event,
#: uuid, payload, retry_after, created_at).
WebhookRequestRow = tuple[int, int, str, str, str, str, _dt.datetime, _dt.datetime]
#: A standalone delivery to queue: (uuid, url, event, payload, retry_after, created_at).
WebhookDeliveryRow = tuple[str, str, str, str, float, float]

#: A span's first or last time: a float from an event, a ``decimal(18,6)`` from MySQL.
Span = float | Decimal

#: MySQL/MariaDB errors that mean "the server will not write now", whatever is
#: written: the writer keeps the events and retries, as for an outage.
WRITE_REFUSED_CODES = frozenset(
    {
        1021,  # ER_DISK_FULL
        1030,  # ER_GET_ERRNO: the storage engine failed (often ENOSPC)
        1036,  # ER_OPEN_AS_READONLY
        1037,  # ER_OUTOFMEMORY
        1038,  # ER_OUT_OF_SORTMEMORY
        1040,  # ER_CON_COUNT_ERROR: too many connections
        1041,  # ER_OUT_OF_RESOURCES
        1044,  # ER_DBACCESS_DENIED_ERROR: grants being changed
        1045,  # ER_ACCESS_DENIED_ERROR
        1047,  # ER_UNKNOWN_COM_ERROR: a Galera node that is not ready (WSREP)
        1053,  # ER_SERVER_SHUTDOWN
        1114,  # ER_RECORD_FILE_FULL: table is full (a full disk)
        1142,  # ER_TABLEACCESS_DENIED_ERROR
        1180,  # ER_ERROR_DURING_COMMIT
        1205,  # ER_LOCK_WAIT_TIMEOUT
        1213,  # ER_LOCK_DEADLOCK
        1223,  # ER_CANT_UPDATE_WITH_READLOCK: FLUSH TABLES WITH READ LOCK
        1290,  # ER_OPTION_PREVENTS_STATEMENT: --read-only (a replica during failover)
        1317,  # ER_QUERY_INTERRUPTED
        1637,  # ER_TOO_MANY_CONCURRENT_TRXS
        1792,  # ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
        1836,  # ER_READ_ONLY_MODE
        1927,  # ER_CONNECTION_KILLED
        1969,  # ER_STATEMENT_TIMEOUT (MariaDB max_statement_time)
        3024,  # ER_QUERY_TIMEOUT (MySQL max_execution_time)
        4031,  # ER_CLIENT_INTERACTION_TIMEOUT
        2002,  # CR_CONNECTION_ERROR
        2003,  # CR_CONN_HOST_ERROR
        2005,  # CR_UNKNOWN_HOST (DNS down)
        2006,  # CR_SERVER_GONE_ERROR
        2013,  # CR_SERVER_LOST
        2026,  # CR_SSL_CONNECTION_ERROR
        2055,  # CR_SERVER_LOST_EXTENDED
    }
)

#: SQLite primary result codes with the same meaning: BUSY, LOCKED, NOMEM,
#: READONLY, IOERR, FULL, CANTOPEN, PROTOCOL.
_SQLITE_REFUSED = frozenset({5, 6, 7, 8, 10, 13, 14, 15})


def write_refused(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) means "the store will not write now".

    True for lost or refused connections, a full disk, a read-only server,
    lock-wait timeouts, deadlocks, Galera's "not ready" and missing grants
    (:data:`WRITE_REFUSED_CODES`), their SQLite equivalents, and socket errors.
    False for anything the events themselves may have caused (bad data, a
    missing table or database): those are worth splitting a batch over.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, pymysql.err.InterfaceError | OSError | TimeoutError):
            return True
        if isinstance(current, pymysql.err.MySQLError):
            args = current.args
            code = args[0] if args and isinstance(args[0], int) else None
            # Code 0 or none: PyMySQL lost track of the connection.
            return code in WRITE_REFUSED_CODES or not code
        if isinstance(current, sqlite3.Error):
            code = getattr(current, "sqlite_errorcode", None)
            return code is not None and code & 0xFF in _SQLITE_REFUSED
        current = current.__cause__ or current.__context__
    return False


def column_exists(db: Db, table: str, column: str) -> bool:
    """Whether ``table`` has ``column`` (a migration that adds it checks first)."""
    if db.dialect == "mysql":
        return bool(
            db.query(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = DATABASE() "
                "AND table_name = %s AND column_name = %s LIMIT 1",
                (table, column),
            )
        )
    return any(r["name"] == column for r in db.query(f"PRAGMA table_info(`{table}`)"))


def _marks(values: Sized) -> str:
    return ", ".join(["%s"] * len(values))


def _chunks(values: Sequence[_T], size: int = _CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


class EventOperations:
    """Named operations on events, webhook queues and retention; SQL here, not in ``events/``."""

    dialect: str = ""

    def main(self, *, create: bool = False, readonly: bool = False) -> AbstractContextManager[Db]:
        raise NotImplementedError

    def messages(
        self, server_id: int, *, create: bool = False, readonly: bool = False
    ) -> AbstractContextManager[Db]:
        raise NotImplementedError

    def write_refused(self, exc: BaseException) -> bool:
        """See :func:`write_refused`."""
        return write_refused(exc)

    # -- what webhook payloads are built from ----------------------------------

    def messages_by_id(self, server_id: int, ids: Iterable[int]) -> dict[int, Row]:
        """The webhook fields of ``messages`` rows, by id (100 rows a query).

        PyMySQL parses a result in one stretch of the hub's thread: small
        queries keep that stretch short.
        """
        wanted = sorted({int(i) for i in ids})
        rows: dict[int, Row] = {}
        if not wanted:
            return rows
        with self.messages(server_id, readonly=True) as db:
            for chunk in _chunks(wanted, 100):
                for row in db.query(
                    "SELECT id, token, scope, rcpt_to, mail_from, subject, message_id, timestamp, "
                    f"inspected, spam, tag FROM messages WHERE id IN ({_marks(chunk)})",
                    chunk,
                ):
                    rows[int(row["id"])] = row
                cooperate()
        return rows

    def links_by_id(self, server_id: int, ids: Iterable[int]) -> dict[int, Row]:
        """``{id, token, url}`` of ``links`` rows, by id."""
        wanted = sorted({int(i) for i in ids})
        rows: dict[int, Row] = {}
        if not wanted:
            return rows
        with self.messages(server_id, readonly=True) as db:
            for chunk in _chunks(wanted):
                for row in db.query(
                    f"SELECT id, token, url FROM links WHERE id IN ({_marks(chunk)})", chunk
                ):
                    rows[int(row["id"])] = row
        return rows

    # -- webhook claims on tracking_events -------------------------------------

    def has_events_table(self, server_id: int) -> bool:
        """Whether the server's message database has our ``tracking_events`` (Postal's new ones do not)."""
        try:
            with self.messages(server_id, readonly=True) as db:
                db.query("SELECT event_id FROM tracking_events LIMIT 1")
        except Exception:  # noqa: BLE001 - a missing table or database
            return False
        return True

    def claim_unqueued_events(
        self, server_id: int, claimant: str, *, lease: float, limit: int = 500
    ) -> list[Row]:
        """Claim up to ``limit`` events whose webhooks are not queued; return the rows won.

        One ``UPDATE ... WHERE webhooks_queued = 0 AND (unclaimed OR claim older
        than lease)``: InnoDB re-reads a row's condition under its lock and
        SQLite writes one at a time, so of two claimants only one wins a row.
        ``claimant`` names one process (the rows won are read back by it); its
        own earlier claims are taken back at once.
        """
        now = time.time()
        expired = now - lease
        with self.messages(server_id) as db:
            claimable = (
                "webhooks_queued = 0 AND (webhooks_claimed_by IS NULL OR "
                "webhooks_claimed_by = %s OR webhooks_claimed_at < %s)"
            )
            candidates = [
                r["event_id"]
                for r in db.query(
                    f"SELECT event_id FROM tracking_events WHERE {claimable} "
                    f"ORDER BY timestamp LIMIT {int(limit)}",
                    (claimant, expired),
                )
            ]
            if not candidates:
                return []
            db.execute(
                "UPDATE tracking_events SET webhooks_claimed_by = %s, webhooks_claimed_at = %s "
                f"WHERE {claimable} AND event_id IN ({_marks(candidates)})",
                (claimant, now, claimant, expired, *candidates),
            )
        with self.messages(server_id, readonly=True) as db:
            return db.query(
                "SELECT * FROM tracking_events WHERE webhooks_claimed_by = %s AND "
                f"webhooks_queued = 0 AND event_id IN ({_marks(candidates)}) ORDER BY timestamp",
                (claimant, *candidates),
            )

    def mark_webhooks_queued(self, server_id: int, event_ids: Sequence[str]) -> None:
        """Record that the webhooks of these events are queued (or need none)."""
        if not event_ids:
            return
        with self.messages(server_id) as db:
            for chunk in _chunks(list(event_ids)):
                db.execute(
                    "UPDATE tracking_events SET webhooks_queued = 1 WHERE event_id IN "
                    f"({_marks(chunk)})",
                    chunk,
                )

    # -- Postal's webhook queue ---------------------------------------------------

    def subscribed_webhooks(self, server_id: int, event: str) -> list[Row]:
        """``{id, url}`` of the server's enabled webhooks that get ``event``."""
        with self.main(readonly=True) as db:
            return db.query(
                "SELECT DISTINCT w.id, w.url FROM webhooks w "
                "LEFT JOIN webhook_events we ON we.webhook_id = w.id "
                "WHERE w.server_id = %s AND w.enabled = 1 "
                "AND (w.all_events = 1 OR we.event = %s) ORDER BY w.id",
                (server_id, event),
            )

    def queue_webhook_requests(self, rows: Sequence[WebhookRequestRow]) -> tuple[int, list[str]]:
        """Insert Postal ``webhook_requests`` rows; returns (rows inserted, errors).

        Each row is ``(server_id, webhook_id, url, event, uuid, payload,
        retry_after, created_at)``. A uuid already queued is skipped (a claim
        taken over from a process that died after queueing). If the batch fails
        for a reason other than an outage, each row is tried alone and the rows
        that fail on their own are skipped, their errors returned: one bad row
        never blocks the others.
        """
        if not rows:
            return 0, []
        try:
            return self._insert_webhook_requests(rows), []
        except Exception as exc:
            if write_refused(exc) or len(rows) == 1:
                raise
        inserted, errors = 0, []
        for row in rows:
            try:
                inserted += self._insert_webhook_requests([row])
            except Exception as exc:
                if write_refused(exc):
                    raise
                errors.append(f"webhook request {row[4]}: {type(exc).__name__}: {exc}")
        return inserted, errors

    def _insert_webhook_requests(self, rows: Sequence[WebhookRequestRow]) -> int:
        with self.main() as db:
            existing: set[str] = set()
            for chunk in _chunks([r[4] for r in rows]):
                found = db.query(
                    f"SELECT uuid FROM webhook_requests WHERE uuid IN ({_marks(chunk)})", chunk
                )
                existing.update(str(r["uuid"]) for r in found)
            fresh = [(*r,) for r in rows if r[4] not in existing]
            db.executemany(
                "INSERT INTO webhook_requests (server_id, webhook_id, url, event, uuid, payload, "
                "attempts, retry_after, created_at) VALUES (%s, %s, %s, %s, %s, %s, 0, %s, %s)",
                fresh,
            )
        return len(fresh)

    # -- standalone webhook deliveries -------------------------------------------

    def queue_webhook_deliveries(self, rows: Sequence[WebhookDeliveryRow]) -> int:
        """Insert ``(uuid, url, event, payload, retry_after, created_at)`` rows; a uuid
        already there is left alone (its ``UNIQUE`` index decides, atomically)."""
        if not rows:
            return 0
        ignore = "INSERT IGNORE" if self.dialect == "mysql" else "INSERT OR IGNORE"
        with self.main() as db:
            return db.executemany(
                f"{ignore} INTO tracking_webhook_deliveries (uuid, url, event, payload, "
                "attempts, retry_after, status, created_at) "
                "VALUES (%s, %s, %s, %s, 0, %s, 'pending', %s)",
                rows,
            )

    def claim_due_deliveries(
        self, claimant: str, *, now: float, lock_seconds: float, limit: int
    ) -> list[int]:
        """Ids of pending deliveries whose time has come, each claimed by ``claimant``."""
        with self.main() as db:
            due = db.query(
                "SELECT id FROM tracking_webhook_deliveries WHERE status = 'pending' "
                "AND retry_after <= %s AND (locked_by IS NULL OR locked_at < %s) "
                f"ORDER BY id LIMIT {int(limit)}",
                (now, now - lock_seconds),
            )
            return [
                r["id"]
                for r in due
                if db.execute(
                    "UPDATE tracking_webhook_deliveries SET locked_by = %s, locked_at = %s "
                    "WHERE id = %s AND status = 'pending' AND (locked_by IS NULL OR locked_at < %s)",
                    (claimant, now, r["id"], now - lock_seconds),
                )
            ]

    def webhook_delivery(self, delivery_id: int) -> Row | None:
        with self.main(readonly=True) as db:
            return db.one("SELECT * FROM tracking_webhook_deliveries WHERE id = %s", (delivery_id,))

    def retry_webhook_delivery(
        self, delivery_id: int, *, attempts: int, retry_after: float, code: int | None, error: str
    ) -> None:
        with self.main() as db:
            db.execute(
                "UPDATE tracking_webhook_deliveries SET attempts = %s, retry_after = %s, "
                "last_status_code = %s, error = %s, locked_by = NULL, locked_at = NULL "
                "WHERE id = %s",
                (attempts, retry_after, code, error, delivery_id),
            )

    def finish_webhook_delivery(
        self, delivery_id: int, *, status: str, code: int | None, error: str | None, attempts: int
    ) -> None:
        with self.main() as db:
            db.execute(
                "UPDATE tracking_webhook_deliveries SET status = %s, attempts = %s, "
                "last_status_code = %s, error = %s, delivered_at = %s, locked_by = NULL, "
                "locked_at = NULL WHERE id = %s",
                (
                    status,
                    attempts,
                    code,
                    error,
                    time.time() if status == "delivered" else None,
                    delivery_id,
                ),
            )

    def prune_webhook_deliveries(self, before: float) -> int:
        """Delete finished deliveries (delivered, failed, refused) created before ``before``."""
        with self.main() as db:
            return db.execute(
                "DELETE FROM tracking_webhook_deliveries WHERE status <> 'pending' "
                "AND created_at < %s",
                (before,),
            )

    # -- retention and erasure (docs/privacy.md) ----------------------------------

    def server_retention_days(self, server_id: int) -> int | None:
        """Postal's ``servers.message_retention_days`` of the server, if set."""
        with self.main(readonly=True) as db:
            row = db.one("SELECT message_retention_days FROM servers WHERE id = %s", (server_id,))
        value = row and row.get("message_retention_days")
        return int(value) if value else None

    def prune_events(self, server_id: int, before: float, *, own_messages: bool) -> dict[str, int]:
        """Delete per-event rows older than ``before`` (Unix seconds); counts by table.

        Always our ``tracking_events`` rows older than ``before``, and those
        whose message is gone (Postal's retention deleted it). With
        ``own_messages`` (the ``sqlite`` and ``mysql`` stores, where the
        plugin owns every table) also ``clicks`` and ``loads`` rows older than
        ``before``; in ``postal`` mode those are Postal's. A thousand rows a
        transaction, so a first prune of a big table holds no lock for long.
        """
        removed: dict[str, int] = {}
        # Our events carry what the rollups need to take them out again.
        columns = "t.event_id AS k, t.timestamp, t.kind, t.bot, t.counted, t.reason, t.message_id"
        statements = [
            (
                "tracking_events",
                f"SELECT {columns} FROM tracking_events t WHERE t.timestamp < %s",
                "event_id",
                (before,),
            ),
            (
                "tracking_events",
                f"SELECT {columns} FROM tracking_events t WHERE t.message_id IS NOT NULL AND "
                "NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = t.message_id)",
                "event_id",
                (),
            ),
        ]
        if own_messages:
            statements += [
                ("clicks", "SELECT id AS k FROM clicks WHERE timestamp < %s", "id", (before,)),
                ("loads", "SELECT id AS k FROM loads WHERE timestamp < %s", "id", (before,)),
            ]
        for table, select, key, params in statements:
            while True:
                with self.messages(server_id) as db:
                    rows = db.query(f"{select} LIMIT 1000", params)
                    keys = [r["k"] for r in rows]
                    if keys and table == "tracking_events":
                        _delete_events(db, rows)
                    elif keys:
                        db.execute(f"DELETE FROM {table} WHERE {key} IN ({_marks(keys)})", keys)
                if not keys:
                    break
                removed[table] = removed.get(table, 0) + len(keys)
                cooperate()
        return removed

    def forget_recipient(
        self, server_id: int, address: str, *, own_messages: bool
    ) -> dict[str, int]:
        """Erase what was tracked for mail to ``address`` on one server; counts by table.

        Its ``clicks``, ``loads`` and ``tracking_events`` rows, and the opened
        and clicked times of its messages. With ``own_messages`` (the plugin's
        own stores) the ``messages`` and ``links`` rows go too; in ``postal``
        mode those are Postal's and stay. Idempotent: a second run removes
        nothing.
        """
        match = "rcpt_to = %s" if self.dialect == "mysql" else "rcpt_to = %s COLLATE NOCASE"
        removed: dict[str, int] = {}
        with self.messages(server_id) as db:
            ids = [
                int(r["id"]) for r in db.query(f"SELECT id FROM messages WHERE {match}", (address,))
            ]
            for chunk in _chunks(ids):
                marks = _marks(chunk)
                counts = {
                    "clicks": db.execute(
                        f"DELETE FROM clicks WHERE message_id IN ({marks})", chunk
                    ),
                    "loads": db.execute(f"DELETE FROM loads WHERE message_id IN ({marks})", chunk),
                    "tracking_events": _delete_events(
                        db,
                        db.query(
                            "SELECT event_id AS k, timestamp, kind, bot, counted, reason, "
                            f"message_id FROM tracking_events WHERE message_id IN ({marks})",
                            chunk,
                        ),
                    ),
                }
                if own_messages:
                    counts["links"] = db.execute(
                        f"DELETE FROM links WHERE message_id IN ({marks})", chunk
                    )
                    counts["messages"] = db.execute(
                        f"DELETE FROM messages WHERE id IN ({marks})", chunk
                    )
                else:
                    counts["messages (opened/clicked times)"] = db.execute(
                        "UPDATE messages SET loaded = NULL, clicked = NULL WHERE id IN "
                        f"({marks}) AND (loaded IS NOT NULL OR clicked IS NOT NULL)",
                        chunk,
                    )
                for table, n in counts.items():
                    removed[table] = removed.get(table, 0) + n
        return removed

    def forget_webhooks(self, address: str) -> dict[str, int]:
        """Delete queued (not yet sent) click and open webhooks whose payload names ``address``.

        Payloads are searched for the recipient as our JSON (standalone) and as
        Rails' YAML (Postal's queue, quoted by us, bare by Postal) write it.
        """
        quoted = json.dumps(address)
        removed = {}
        with self.main() as db:
            removed["tracking_webhook_deliveries"] = db.execute(
                "DELETE FROM tracking_webhook_deliveries WHERE status = 'pending' AND payload LIKE %s ESCAPE '!'",
                (f'%"to": {_like(quoted)}%',),
            )
            removed["webhook_requests"] = db.execute(
                "DELETE FROM webhook_requests WHERE event IN ('MessageLinkClicked', "
                "'MessageLoaded') AND (payload LIKE %s ESCAPE '!' OR payload LIKE %s ESCAPE '!')",
                (f"%:to: {_like(quoted)}\n%", f"%:to: {_like(address)}\n%"),
            )
        return removed


def _delete_events(db: Db, rows: Sequence[Row]) -> int:
    """Delete these ``tracking_events`` rows (``k`` the event id) and take them out of the rollups."""
    if not rows:
        return 0
    ids = {int(r["message_id"]) for r in rows if r["message_id"] is not None}
    tags = remembered_tags(db, ids)
    removed = 0
    for chunk in _chunks([r["k"] for r in rows]):
        removed += db.execute(
            f"DELETE FROM tracking_events WHERE event_id IN ({_marks(chunk)})", chunk
        )
    remove_from_rollups(db, rows, tags)
    recompute_spans(db, ids, tags)
    return removed


def _like(text: str) -> str:
    """``text`` as a literal inside a LIKE pattern with ``ESCAPE '!'`` (the same in both dialects)."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


class FlagQueries:
    """What the bot flagger reads and writes, inside :meth:`record_events`' transaction.

    Passed to ``flag(queries, events)`` in place of the raw transaction, so the
    flagger (``events/_bots.py``) names what it needs and writes no SQL.
    Results come 100 rows a query with a yield between: PyMySQL parses a result
    in one stretch of the hub's thread.
    """

    __slots__ = ("_db",)

    def __init__(self, db: Db) -> None:
        self._db = db

    def messages_for_flags(self, ids: Sequence[int]) -> dict[int, Row]:
        """``{id, timestamp, tracked_links}`` of these messages, by id."""
        rows: dict[int, Row] = {}
        for i, chunk in enumerate(_chunks(list(ids), 100)):
            if i:
                cooperate()
            for r in self._db.query(
                f"SELECT id, timestamp, tracked_links FROM messages WHERE id IN ({_marks(chunk)})",
                chunk,
            ):
                rows[int(r["id"])] = r
        return rows

    def click_summary(self, pairs: Iterable[tuple[int, str]], earliest: float) -> list[Row]:
        """Per message: different links clicked and ``MIN(bot)``, by these (message, address)
        pairs since ``earliest``."""
        return self._pairs_query(
            "SELECT message_id, COUNT(DISTINCT COALESCE(link_id, 0)) AS links, "
            "MIN(bot) AS min_bot FROM tracking_events",
            "GROUP BY message_id",
            pairs,
            earliest,
        )

    def click_links(self, pairs: Iterable[tuple[int, str]], earliest: float) -> list[Row]:
        """Per (message, address, link): the last click time and ``MIN(bot)`` since ``earliest``."""
        return self._pairs_query(
            "SELECT message_id, ip_address, link_id, MAX(timestamp) AS last, MIN(bot) AS min_bot "
            "FROM tracking_events",
            "GROUP BY message_id, ip_address, link_id",
            pairs,
            earliest,
        )

    def flag_clicks(self, message_id: int, ip: str, start: float, end: float, reason: str) -> None:
        """Flag the unflagged clicks of one address on one message between two times.

        The rollups move with them: the clicks leave their hours as people and
        come back as machines, and the message's spans are recomputed.
        """
        where = (
            "kind = 'click' AND message_id = %s AND ip_address = %s AND bot = 0 "
            "AND timestamp >= %s AND timestamp <= %s"
        )
        db = self._db
        rows = db.query(
            f"SELECT timestamp, kind, bot, counted, reason, message_id FROM tracking_events "
            f"WHERE {where}",
            (message_id, ip, start, end),
        )
        if not rows:
            return
        tags = remembered_tags(db, [message_id])
        db.execute(
            f"UPDATE tracking_events SET bot = 1, reason = %s WHERE {where}",
            (reason, message_id, ip, start, end),
        )
        remove_from_rollups(db, rows, tags)
        change_hours(
            db,
            _count_keys([{**r, "bot": 1, "reason": reason} for r in rows], tags, db.dialect),
        )
        recompute_spans(db, [message_id], tags)

    def _pairs_query(
        self, select: str, group_by: str, pairs: Iterable[tuple[int, str]], earliest: float
    ) -> list[Row]:
        """Rows of ``select ... group_by`` over the clicks since ``earliest`` of these
        (message, address) pairs, whole messages of about 100 pairs a query.

        Each pair is one ``message_id = %s AND ip_address = %s`` term of an OR,
        which both databases answer from the (message, kind, address, time) index;
        lists of messages and of addresses would also match every other pair of
        the two lists: with many readers in a batch, a scan of the whole window.
        """
        by_message: dict[int, list[str]] = {}
        for message_id, ip in pairs:
            by_message.setdefault(message_id, []).append(ip)
        rows: list[Row] = []
        terms: list[str] = []
        params: list[SqlValue] = [earliest]
        messages = sorted(by_message)
        queried = False
        for i, message_id in enumerate(messages):
            for ip in sorted(by_message[message_id]):
                terms.append("(message_id = %s AND ip_address = %s)")
                params += (message_id, ip)
            if len(terms) >= 100 or i == len(messages) - 1:
                if queried:
                    cooperate()
                queried = True
                rows += self._db.query(
                    f"{select} WHERE kind = 'click' AND timestamp >= %s AND ({' OR '.join(terms)}) "
                    f"{group_by}",
                    params,
                )
                terms, params = [], [earliest]
        return rows


# -- rollups: counts kept as events are written (docs/dashboard.md, "Speed") ----

#: Seconds in a rollup bucket.
HOUR = 3600

#: ``tracking_event_spans.who``: counted events (Postal's ``clicks``/``loads``),
#: people (counted and not flagged), any event (the tag memory).
WHO_COUNTED, WHO_PEOPLE, WHO_ANY = 0, 1, 2

#: The key of a ``tracking_event_hours`` row: (hour, tag, kind, bot, counted, reason, known).
HourKey = tuple[int, str, str, int, int, str, int]


def event_hour(timestamp: SupportsFloat, dialect: str) -> int:
    """The rollup hour of an event time, as :func:`hour_sql` computes it in the database.

    MySQL keeps ``decimal(18,6)`` (the value rounded to the microsecond) and
    ``DIV`` floors it; SQLite keeps the float and the SQL truncates it to whole
    seconds first, so both sides agree exactly.
    """
    t = round(float(timestamp), 6) if dialect == "mysql" else float(timestamp)
    return int(t) // HOUR


def hour_sql(dialect: str, column: str = "x.timestamp") -> str:
    """``column``'s rollup hour in SQL (see :func:`event_hour`)."""
    if dialect == "mysql":
        return f"{column} DIV {HOUR}"
    return f"CAST({column} AS INTEGER) / {HOUR}"


def message_tags(db: Db, ids: Iterable[int]) -> dict[int, str]:
    """``messages.tag`` (``''`` for none) of the messages that exist, by id."""
    wanted = sorted({int(i) for i in ids})
    tags: dict[int, str] = {}
    for chunk in _chunks(wanted):
        for r in db.query(f"SELECT id, tag FROM messages WHERE id IN ({_marks(chunk)})", chunk):
            tags[int(r["id"])] = r["tag"] or ""
    return tags


def remembered_tags(db: Db, ids: Iterable[int]) -> dict[int, str]:
    """The tag each message's events were rolled up under: the spans' memory, else the message's.

    Read before deleting events: Postal's retention may have deleted the
    message already, and its events' hours must be taken from the same tag.
    """
    wanted = sorted({int(i) for i in ids})
    tags = message_tags(db, wanted)
    for chunk in _chunks(wanted):
        for r in db.query(
            "SELECT message_id, tag FROM tracking_event_spans WHERE who = %s AND "
            f"message_id IN ({_marks(chunk)})",
            [WHO_ANY, *chunk],
        ):
            tags[int(r["message_id"])] = r["tag"] or ""
    return tags


def _hour_key(e: Row, tags: dict[int, str], dialect: str) -> HourKey:
    message_id = e["message_id"]
    return (
        event_hour(e["timestamp"], dialect),
        tags.get(int(message_id), "") if message_id is not None else "",
        str(e["kind"]),
        int(bool(e["bot"])),
        int(bool(e["counted"])),
        str(e["reason"] or ""),
        int(message_id is not None),
    )


def _add_to_hours(dialect: str) -> str:
    """The end of an INSERT into ``tracking_event_hours`` that adds to a row already there."""
    if dialect == "mysql":
        return "ON DUPLICATE KEY UPDATE events = events + VALUES(events)"
    return (
        "ON CONFLICT (hour, tag, kind, bot, counted, reason, known) "
        "DO UPDATE SET events = events + excluded.events"
    )


def change_hours(db: Db, deltas: dict[HourKey, int]) -> None:
    """Add ``deltas`` to ``tracking_event_hours`` (an upsert); rows that reach 0 go."""
    changes = sorted((k, n) for k, n in deltas.items() if n)
    if not changes:
        return
    columns = "hour, tag, kind, bot, counted, reason, known, events"
    tail = _add_to_hours(db.dialect)
    for chunk in _chunks(changes, 1000 if db.dialect == "mysql" else 120):
        db.execute(
            f"INSERT INTO tracking_event_hours ({columns}) VALUES "
            + ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s)"] * len(chunk))
            + f" {tail}",
            [v for key, n in chunk for v in (*key, n)],
        )
    if any(n < 0 for _, n in changes):
        hours = sorted({k[0] for k, n in changes if n < 0})
        for hour_chunk in _chunks(hours):
            db.execute(
                "DELETE FROM tracking_event_hours WHERE events <= 0 AND hour IN "
                f"({_marks(hour_chunk)})",
                list(hour_chunk),
            )


def add_to_rollups(db: Db, fresh: Sequence[RecordedEvent]) -> None:
    """Count newly written events (the recorder's dicts: ``kind``, ``message_id``,
    ``timestamp``, ``method``, ``bot``, ``bot_reason``) in the rollups, in the
    caller's transaction (:meth:`record_events`'), so exactly once like them.

    Three statements a batch: the messages' tags, one upsert of hours, one of spans.
    """
    events: list[Row] = [
        {
            "kind": e["kind"],
            "message_id": e["message_id"],
            "timestamp": e["timestamp"],
            "bot": e["bot"],
            "reason": e["bot_reason"],
            "counted": (e.get("method") or "GET").upper() != "HEAD",
        }
        for e in fresh
    ]
    if not events:
        return
    tags = message_tags(db, (e["message_id"] for e in events if e["message_id"] is not None))
    spans: dict[tuple[int, str, int], list[float]] = {}
    for e in events:
        message_id = e["message_id"]
        if message_id is None:
            continue
        ts = e["timestamp"]
        who = []
        if e["counted"]:
            who.append(WHO_COUNTED)
            if not e["bot"]:
                who.append(WHO_PEOPLE)
        for w in who:
            span = spans.get((int(message_id), str(e["kind"]), w))
            if span is None:
                spans[(int(message_id), str(e["kind"]), w)] = [ts, ts]
            else:
                span[0], span[1] = min(span[0], ts), max(span[1], ts)
    change_hours(db, _count_keys(events, tags, db.dialect))
    _merge_spans(db, {k: (tags.get(k[0], ""), f, last) for k, (f, last) in spans.items()})
    _remember_tags(
        db,
        {
            (int(e["message_id"]), str(e["kind"])): tags.get(int(e["message_id"]), "")
            for e in events
            if e["message_id"] is not None
        },
    )


def _remember_tags(db: Db, tags: dict[tuple[int, str], str]) -> None:
    """The ``who = 2`` spans (times 0): inserted where missing, never updated."""
    rows = sorted((m, kind, WHO_ANY, tag, 0, 0) for (m, kind), tag in tags.items())
    if not rows:
        return
    if db.dialect == "mysql":
        tail = "ON DUPLICATE KEY UPDATE who = who"
    else:
        tail = "ON CONFLICT (message_id, kind, who) DO NOTHING"
    for chunk in _chunks(rows, 1000 if db.dialect == "mysql" else 150):
        db.execute(
            "INSERT INTO tracking_event_spans (message_id, kind, who, tag, first_at, last_at) "
            "VALUES " + ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(chunk)) + f" {tail}",
            [v for row in chunk for v in row],
        )


def _merge_spans(db: Db, spans: dict[tuple[int, str, int], tuple[str, Span, Span]]) -> None:
    """Widen (or create) spans to include these first and last times."""
    rows = sorted((*k, *v) for k, v in spans.items())
    if not rows:
        return
    if db.dialect == "mysql":
        tail = (
            "ON DUPLICATE KEY UPDATE first_at = LEAST(first_at, VALUES(first_at)), "
            "last_at = GREATEST(last_at, VALUES(last_at))"
        )
    else:
        tail = (
            "ON CONFLICT (message_id, kind, who) DO UPDATE SET "
            "first_at = MIN(first_at, excluded.first_at), last_at = MAX(last_at, excluded.last_at)"
        )
    # One statement for a whole batch on MySQL: 100 rows a statement made the
    # spans most of the rollups' cost to the writer. SQLite builds older than
    # 3.32 take at most 999 parameters.
    for chunk in _chunks(rows, 1000 if db.dialect == "mysql" else 150):
        db.execute(
            "INSERT INTO tracking_event_spans (message_id, kind, who, tag, first_at, last_at) "
            "VALUES " + ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(chunk)) + f" {tail}",
            [v for row in chunk for v in row],
        )


def recompute_spans(db: Db, ids: Iterable[int], tags: dict[int, str]) -> None:
    """Spans of these messages from their remaining events (after a delete or a late flag).

    ``tags``: what :func:`remembered_tags` read before the events changed.
    """
    wanted = sorted({int(i) for i in ids})
    for chunk in _chunks(wanted):
        marks = _marks(chunk)
        db.execute(f"DELETE FROM tracking_event_spans WHERE message_id IN ({marks})", chunk)
        found = db.query(
            "SELECT message_id, kind, MIN(timestamp) AS af, MAX(timestamp) AS al, "
            "MIN(CASE WHEN counted = 1 THEN timestamp END) AS cf, "
            "MAX(CASE WHEN counted = 1 THEN timestamp END) AS cl, "
            "MIN(CASE WHEN counted = 1 AND bot = 0 THEN timestamp END) AS pf, "
            "MAX(CASE WHEN counted = 1 AND bot = 0 THEN timestamp END) AS pl "
            f"FROM tracking_events WHERE message_id IN ({marks}) GROUP BY message_id, kind",
            chunk,
        )
        spans: dict[tuple[int, str, int], tuple[str, Span, Span]] = {}
        for r in found:
            message_id = int(r["message_id"])
            tag = tags.get(message_id, "")
            for who, first, last in (
                (WHO_ANY, 0 if r["af"] is not None else None, 0),
                (WHO_COUNTED, r["cf"], r["cl"]),
                (WHO_PEOPLE, r["pf"], r["pl"]),
            ):
                if first is not None:
                    spans[(message_id, str(r["kind"]), who)] = (tag, first, last)
        _merge_spans(db, spans)


def _count_keys(
    rows: Iterable[Row], tags: dict[int, str], dialect: str, sign: int = 1
) -> dict[HourKey, int]:
    deltas: dict[HourKey, int] = {}
    for r in rows:
        key = _hour_key(r, tags, dialect)
        deltas[key] = deltas.get(key, 0) + sign
    return deltas


def remove_from_rollups(db: Db, rows: Sequence[Row], tags: dict[int, str]) -> None:
    """Take events about to be deleted (or re-flagged) out of the hours.

    ``rows`` carry ``timestamp``, ``kind``, ``bot``, ``counted``, ``reason``,
    ``message_id``; ``tags`` from :func:`remembered_tags`. The spans are
    recomputed by the caller once the events are gone.
    """
    change_hours(db, _count_keys(rows, tags, db.dialect, -1))


def rebuild_rollups(db: Db, step: int = 5000) -> None:
    """Fill the rollups from every event (the migration's backfill; also a repair).

    ``INSERT ... SELECT`` statements over ``tracking_events``, ``step``
    messages each (one statement over a million events outlasted the connection's read
    timeout on a loaded machine), read from the (message, kind, counted, bot,
    time, reason) index alone; the hours of each chunk are added to what the
    earlier chunks left (an upsert). Events whose message is gone are counted
    without a tag, as the writer counts an event without a message.
    """
    db.execute("DELETE FROM tracking_event_hours")
    db.execute("DELETE FROM tracking_event_spans")
    bounds = db.one("SELECT MIN(message_id) AS m0, MAX(message_id) AS m1 FROM tracking_events")
    hour = hour_sql(db.dialect)
    tail = _add_to_hours(db.dialect)

    def hours(where: str, params: Sequence[SqlValue]) -> None:
        db.execute(
            "INSERT INTO tracking_event_hours (hour, tag, kind, bot, counted, reason, known, "
            f"events) SELECT * FROM (SELECT {hour} AS h, COALESCE(m.tag, '') AS t, x.kind, "
            "x.bot, x.counted, COALESCE(x.reason, '') AS r, "
            "CASE WHEN x.message_id IS NULL THEN 0 ELSE 1 END AS k, COUNT(*) AS n "
            "FROM tracking_events x LEFT JOIN messages m ON m.id = x.message_id "
            # ``WHERE 1 = 1``: SQLite's upsert after a SELECT needs one to parse.
            f"WHERE {where} GROUP BY h, t, x.kind, x.bot, x.counted, r, k) g WHERE 1 = 1 {tail}",
            params,
        )

    hours("x.message_id IS NULL", ())
    if bounds is None or bounds["m0"] is None:
        return
    first = int(bounds["m0"])
    while first <= int(bounds["m1"]):
        chunk = "x.message_id >= %s AND x.message_id < %s"
        hours(chunk, (first, first + step))
        for who, condition in (
            (WHO_ANY, "1 = 1"),
            (WHO_COUNTED, "x.counted = 1"),
            (WHO_PEOPLE, "x.counted = 1 AND x.bot = 0"),
        ):
            times = "0, 0" if who == WHO_ANY else "MIN(x.timestamp), MAX(x.timestamp)"
            db.execute(
                "INSERT INTO tracking_event_spans (message_id, kind, who, tag, first_at, last_at) "
                f"SELECT x.message_id, x.kind, {who}, COALESCE(MAX(m.tag), ''), {times} "
                "FROM tracking_events x LEFT JOIN messages m ON m.id = x.message_id "
                f"WHERE {chunk} AND {condition} GROUP BY x.message_id, x.kind",
                (first, first + step),
            )
        first += step
