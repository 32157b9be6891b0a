"""Operations on a server's message database: tracked messages, links, events.

A mixin of :class:`~postal_tracking_plugin.store._store.Store`: it needs only
:meth:`messages`, the backend's transaction on one message database.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

from ._db import Db
from ._db import Row
from ._models import Link
from ._tokens import url_hash


class MessageOperations:
    """Messages, links, clicks, loads and our ``tracking_events``."""

    def messages(self, server_id: int, *, create: bool = False, readonly: bool = False) -> Any:
        raise NotImplementedError

    def save_tracked_message(
        self, server_id: int, message: dict[str, Any], links: Sequence[Link]
    ) -> int:
        """Insert a ``messages`` row and its ``links`` rows in one transaction.

        ``message`` maps Postal's ``messages`` columns to values; links are
        written in one batched statement. Returns the message id.
        """
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
                [(message_id, link.token, url_hash(link.url), link.url, timestamp) for link in links],
            )
        return message_id

    def find_link(self, server_id: int, token: str) -> Row | None:
        """``{id, message_id, url}`` of the link with ``token``, or None."""
        with self.messages(server_id, readonly=True) as db:
            return db.one("SELECT id, message_id, url FROM links WHERE token = %s", (token,))

    def find_message(self, server_id: int, token: str) -> Row | None:
        with self.messages(server_id, readonly=True) as db:
            return db.one("SELECT * FROM messages WHERE token = %s", (token,))

    def record_clicks(self, server_id: int, clicks: Iterable[Sequence[Any]]) -> None:
        """Insert ``clicks`` rows ``(message_id, link_id, ip, user_agent, timestamp)``.

        Also sets each message's ``clicked`` to its latest click, as Postal does.
        Not idempotent: the event recorder uses :meth:`record_events`.
        """
        clicks = list(clicks)
        if not clicks:
            return
        with self.messages(server_id) as db:
            _insert_clicks(db, clicks)

    def record_loads(self, server_id: int, loads: Iterable[Sequence[Any]]) -> None:
        """Insert ``loads`` rows ``(message_id, ip, user_agent, timestamp)``.

        Sets ``messages.loaded`` on the first open only, as Postal does.
        Not idempotent: the event recorder uses :meth:`record_events`.
        """
        loads = list(loads)
        if not loads:
            return
        with self.messages(server_id) as db:
            _insert_loads(db, loads)

    def record_events(
        self,
        server_id: int,
        events: Sequence[dict[str, Any]],
        flag: Callable[[Db, list[dict[str, Any]]], None] | None = None,
        *,
        webhooks_pending: bool = False,
    ) -> list[dict[str, Any]]:
        """Record click and open events of one server exactly once, in one transaction.

        Each event is a dict with ``event_id``, ``kind`` (``click`` or ``open``),
        ``method``, ``message_id``, ``link_id``, ``ip_address``, ``user_agent`` and
        ``timestamp``. An event whose id is already in ``tracking_events`` is
        skipped, so replaying a spool after a crash never writes a row twice.
        ``flag(db, new_events)`` runs inside the transaction to set ``bot`` and
        ``bot_reason`` on each event (and may update earlier rows). Counted
        events (anything but ``HEAD``) also get Postal's ``clicks``/``loads`` rows
        and ``messages.clicked``/``loaded``, in multi-row statements.
        ``webhooks_pending`` marks counted events as still to be queued for
        webhooks (``tracking_events.webhooks_queued = 0``), so a crash between
        this commit and the queueing is caught up afterwards.

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
                flag(db, fresh)
            counted = [e for e in fresh if (e.get("method") or "GET").upper() != "HEAD"]
            _insert_clicks(
                db,
                [
                    (e["message_id"], e["link_id"], e["ip_address"], e["user_agent"], e["timestamp"])
                    for e in counted
                    if e["kind"] == "click"
                ],
            )
            _insert_loads(
                db,
                [
                    (e["message_id"], e["ip_address"], e["user_agent"], e["timestamp"])
                    for e in counted
                    if e["kind"] == "open" and e["message_id"] is not None
                ],
            )
            now = time.time()
            db.executemany(
                "INSERT INTO tracking_events (event_id, kind, method, message_id, link_id, "
                "ip_address, user_agent, timestamp, bot, reason, counted, webhooks_queued, "
                "recorded_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        e["event_id"],
                        e["kind"],
                        (e.get("method") or "GET").upper()[:8],
                        e["message_id"],
                        e.get("link_id"),
                        e["ip_address"],
                        (e["user_agent"] or "")[:255],
                        e["timestamp"],
                        int(bool(e["bot"])),
                        e["bot_reason"],
                        int((e.get("method") or "GET").upper() != "HEAD"),
                        int(not webhooks_pending or (e.get("method") or "GET").upper() == "HEAD"),
                        now,
                    )
                    for e in fresh
                ],
            )
        return fresh


def _insert_clicks(db: Db, clicks: Sequence[Sequence[Any]]) -> None:
    """``clicks`` rows in one statement, and ``messages.clicked`` = the latest click."""
    if not clicks:
        return
    latest: dict[int, float] = {}
    for message_id, _link, _ip, _ua, ts in clicks:
        if message_id is not None:
            latest[message_id] = max(ts, latest.get(message_id, ts))
    db.executemany(
        "INSERT INTO clicks (message_id, link_id, ip_address, user_agent, timestamp) "
        "VALUES (%s, %s, %s, %s, %s)",
        [(m, li, ip, (ua or "")[:255], ts) for m, li, ip, ua, ts in clicks],
    )
    _set_message_times(db, "clicked", latest, only_if="`clicked` IS NULL OR `clicked` < {new}")


def _insert_loads(db: Db, loads: Sequence[Sequence[Any]]) -> None:
    """``loads`` rows in one statement, and ``messages.loaded`` on the first open only."""
    if not loads:
        return
    first: dict[int, float] = {}
    for message_id, _ip, _ua, ts in loads:
        first[message_id] = min(ts, first.get(message_id, ts))
    db.executemany(
        "INSERT INTO loads (message_id, ip_address, user_agent, timestamp) "
        "VALUES (%s, %s, %s, %s)",
        [(m, ip, (ua or "")[:255], ts) for m, ip, ua, ts in loads],
    )
    _set_message_times(db, "loaded", first, only_if="`loaded` IS NULL")


def _set_message_times(db: Db, column: str, times: dict[int, float], *, only_if: str) -> None:
    """``messages.<column>`` of many messages in one statement per 500, not one per message.

    ``only_if`` is the condition (``{new}`` stands for the new value) under
    which a row's value is replaced, as Postal's rules say.
    """
    items = sorted(times.items())
    for start in range(0, len(items), 500):
        chunk = items[start : start + 500]
        new = "(CASE `id` " + "WHEN %s THEN %s " * len(chunk) + "END)"
        params: list[Any] = [v for pair in chunk for v in pair]
        condition = only_if.format(new=new)
        db.execute(
            f"UPDATE messages SET `{column}` = CASE WHEN {condition} THEN {new} "
            f"ELSE `{column}` END WHERE `id` IN ({', '.join(['%s'] * len(chunk))})",
            [*(params * condition.count("CASE")), *params, *(m for m, _ in chunk)],
        )
