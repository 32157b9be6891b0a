"""What the rest of the package asks of the store, written once for both backends.

A backend supplies two context managers, :meth:`Store.main` and
:meth:`Store.messages`, each one transaction on one database (see
:class:`~postal_tracking_plugin.store._db.Db`); everything here is plain SQL on
Postal's tables above them.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

from ..errors import AlreadyExists
from ..errors import NotFound
from ..errors import StoreError
from . import _schema
from ._db import Db
from ._db import Row
from ._db import utcnow
from ._models import Certificate
from ._models import Link
from ._models import Server
from ._models import TrackDomain

_ALNUM = string.ascii_letters + string.digits
SERVER_TOKEN_RE = re.compile(r"^[a-z]{6}$")


# Random bytes below 248 (= 4 * 62) map evenly onto the 62 alphanumerics; the
# rest are dropped (rejection sampling): unbiased, and done in C by translate.
_TOKEN_TABLE = bytes(ord(_ALNUM[b % 62]) if b < 248 else 0 for b in range(256))
_TOKEN_DROP = bytes(range(248, 256))


def random_token(length: int = 16) -> str:
    """Postal's message and link tokens: random alphanumerics, about 95 bits for 16.

    One link token per link of every message: it must be cheap as well as
    unguessable (``secrets.choice`` per character cost ~1 µs each).
    """
    out = b""
    while len(out) < length:
        out += secrets.token_bytes(length + 8).translate(_TOKEN_TABLE, _TOKEN_DROP)
    return out[:length].decode("ascii")


def server_token() -> str:
    """Postal's server token: 6 random lowercase letters."""
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(6))


def url_hash(url: str) -> str:
    """``links.hash``: SHA-1 hex of the URL, as Postal stores it."""
    return hashlib.sha1(url.encode("utf-8")).hexdigest()


_TRACK_DOMAIN_SQL = (
    "SELECT td.*, d.name AS domain_name, s.token AS server_token, s.name AS server_name "
    "FROM track_domains td JOIN domains d ON d.id = td.domain_id "
    "JOIN servers s ON s.id = td.server_id "
)


class Store:
    """Base of :class:`SqliteStore` and :class:`MysqlStore`."""

    dialect: str = ""

    # -- provided by each backend ------------------------------------------

    def main(self, *, create: bool = False, readonly: bool = False) -> Any:
        """A transaction on the main database (``with store.main() as db:``)."""
        raise NotImplementedError

    def messages(self, server_id: int, *, create: bool = False, readonly: bool = False) -> Any:
        """A transaction on server ``server_id``'s message database."""
        raise NotImplementedError

    def message_database_exists(self, server_id: int) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        """Where the data lives, for messages to the user."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- schema ----------------------------------------------------------------

    def create_schema(self) -> None:
        """Create the main database's missing tables, and every server's message tables.

        Idempotent; never drops or alters an existing table.
        """
        with self.main(create=True) as db:
            _migrate(db, _schema.MAIN_MIGRATIONS)
        for server in self.list_servers():
            self.create_message_schema(server.id)

    def create_message_schema(self, server_id: int) -> None:
        with self.messages(server_id, create=True) as db:
            _migrate(db, _schema.MESSAGE_MIGRATIONS)

    def ping(self) -> None:
        """Raise :class:`StoreError` unless the main database answers."""
        with self.main(readonly=True) as db:
            db.one("SELECT 1 AS ok")

    # -- servers ---------------------------------------------------------------

    def add_server(self, name: str, token: str | None = None) -> Server:
        name = name.strip()
        if not name:
            raise StoreError("a server needs a name")
        if token is not None and not SERVER_TOKEN_RE.match(token):
            raise StoreError(f"server token {token!r} must be 6 lowercase letters, as Postal's")
        now = utcnow()
        with self.main() as db:
            if db.one("SELECT id FROM servers WHERE name = %s AND deleted_at IS NULL", (name,)):
                raise AlreadyExists(f"server {name!r} exists already")
            if token is None:
                token = server_token()
                while db.one("SELECT id FROM servers WHERE token = %s", (token,)):
                    token = server_token()
            elif db.one("SELECT id FROM servers WHERE token = %s", (token,)):
                raise AlreadyExists(f"server token {token!r} is taken by another server")
            permalink = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or token
            server_id = db.insert(
                "INSERT INTO servers (uuid, name, mode, token, permalink, created_at, updated_at, "
                "privacy_mode) VALUES (%s, %s, %s, %s, %s, %s, %s, 0)",
                (str(uuid.uuid4()), name, "Live", token, permalink, now, now),
            )
        self.create_message_schema(server_id)
        return self.get_server(name)

    def list_servers(self) -> list[Server]:
        with self.main(readonly=True) as db:
            rows = db.query("SELECT * FROM servers WHERE deleted_at IS NULL ORDER BY id")
        return [Server.from_row(r) for r in rows]

    def get_server(self, name: str) -> Server:
        """The server named ``name`` (or with that token or permalink)."""
        with self.main(readonly=True) as db:
            row = db.one(
                "SELECT * FROM servers WHERE deleted_at IS NULL AND "
                "(name = %s OR token = %s OR permalink = %s) ORDER BY id",
                (name, name, name),
            )
        if row is None:
            raise NotFound(
                f"no server named {name!r}: `postal-tracking servers list` shows them, "
                f"`servers add NAME` adds one"
            )
        return Server.from_row(row)

    def server_by_token(self, token: str) -> Server | None:
        with self.main(readonly=True) as db:
            row = db.one(
                "SELECT * FROM servers WHERE token = %s AND deleted_at IS NULL", (token.lower(),)
            )
        return Server.from_row(row) if row else None

    # -- domains and tracking domains ---------------------------------------

    def ensure_domain(self, db: Db, server_id: int, name: str) -> int:
        """The id of sending domain ``name`` of the server, added if missing."""
        row = db.one(
            "SELECT id FROM domains WHERE name = %s AND (server_id = %s OR "
            "(owner_type = 'Server' AND owner_id = %s)) ORDER BY id",
            (name, server_id, server_id),
        )
        if row:
            return int(row["id"])
        now = utcnow()
        return db.insert(
            "INSERT INTO domains (server_id, uuid, name, verification_method, verified_at, "
            "created_at, updated_at, outgoing, incoming, owner_type, owner_id) "
            "VALUES (%s, %s, %s, 'DNS', %s, %s, %s, 1, 1, 'Server', %s)",
            (server_id, str(uuid.uuid4()), name, now, now, now, server_id),
        )

    def add_track_domain(
        self,
        server: Server,
        full_name: str,
        *,
        ssl_enabled: bool = True,
        track_clicks: bool = True,
        track_loads: bool = True,
        excluded_click_domains: Sequence[str] = (),
        dns_status: str | None = None,
        dns_error: str | None = None,
    ) -> TrackDomain:
        label, _, domain_name = full_name.lower().strip(".").partition(".")
        if not label or "." not in domain_name:
            raise StoreError(
                f"{full_name!r} is not a tracking domain name: give the full name, "
                f"such as click.example.com"
            )
        now = utcnow()
        with self.main() as db:
            if db.one(_TRACK_DOMAIN_SQL + "WHERE td.name = %s AND d.name = %s", (label, domain_name)):
                raise AlreadyExists(f"tracking domain {full_name} exists already")
            domain_id = self.ensure_domain(db, server.id, domain_name)
            db.insert(
                "INSERT INTO track_domains (uuid, server_id, domain_id, name, dns_checked_at, "
                "dns_status, dns_error, created_at, updated_at, ssl_enabled, track_clicks, "
                "track_loads, excluded_click_domains) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    str(uuid.uuid4()),
                    server.id,
                    domain_id,
                    label,
                    now if dns_status else None,
                    dns_status,
                    dns_error,
                    now,
                    now,
                    int(ssl_enabled),
                    int(track_clicks),
                    int(track_loads),
                    "\n".join(excluded_click_domains) or None,
                ),
            )
        return self.get_track_domain(full_name)

    def list_track_domains(self, server_id: int | None = None) -> list[TrackDomain]:
        sql = _TRACK_DOMAIN_SQL
        params: tuple[Any, ...] = ()
        if server_id is not None:
            sql += "WHERE td.server_id = %s "
            params = (server_id,)
        with self.main(readonly=True) as db:
            rows = db.query(sql + "ORDER BY td.id", params)
        return [TrackDomain.from_row(r) for r in rows]

    def find_track_domain(self, full_name: str) -> TrackDomain | None:
        label, _, domain_name = full_name.lower().strip(".").partition(".")
        with self.main(readonly=True) as db:
            row = db.one(
                _TRACK_DOMAIN_SQL + "WHERE td.name = %s AND d.name = %s", (label, domain_name)
            )
        return TrackDomain.from_row(row) if row else None

    def get_track_domain(self, full_name: str) -> TrackDomain:
        found = self.find_track_domain(full_name)
        if found is None:
            raise NotFound(
                f"no tracking domain {full_name}: `postal-tracking track-domains list` shows them"
            )
        return found

    def track_domain_for_sender(self, server_id: int, sender_domain: str) -> TrackDomain | None:
        """The server's tracking domain for mail from ``sender_domain`` whose DNS is OK."""
        with self.main(readonly=True) as db:
            row = db.one(
                _TRACK_DOMAIN_SQL + "WHERE td.server_id = %s AND d.name = %s "
                "AND td.dns_status = 'OK' ORDER BY td.id",
                (server_id, sender_domain.lower()),
            )
        return TrackDomain.from_row(row) if row else None

    _SETTABLE = {
        "ssl_enabled",
        "track_clicks",
        "track_loads",
        "excluded_click_domains",
        "dns_status",
        "dns_error",
        "dns_checked_at",
    }

    def update_track_domain(self, track_domain: TrackDomain, **changes: Any) -> TrackDomain:
        """Change settings of a tracking domain (keys: see ``_SETTABLE``)."""
        bad = set(changes) - self._SETTABLE
        if bad:
            raise StoreError(f"cannot change {', '.join(sorted(bad))} of a tracking domain")
        if "excluded_click_domains" in changes:
            value = changes["excluded_click_domains"]
            changes["excluded_click_domains"] = "\n".join(value) or None
        for key in ("ssl_enabled", "track_clicks", "track_loads"):
            if key in changes:
                changes[key] = int(bool(changes[key]))
        changes["updated_at"] = utcnow()
        assignments = ", ".join(f"`{k}` = %s" for k in changes)
        with self.main() as db:
            db.execute(
                f"UPDATE track_domains SET {assignments} WHERE id = %s",
                (*changes.values(), track_domain.id),
            )
        return self.get_track_domain(track_domain.full_name)

    def remove_track_domain(self, track_domain: TrackDomain) -> None:
        with self.main() as db:
            db.execute("DELETE FROM track_domains WHERE id = %s", (track_domain.id,))

    # -- certificates ----------------------------------------------------------

    def get_certificate(self, domain: str) -> Certificate | None:
        with self.main(readonly=True) as db:
            row = db.one(
                "SELECT * FROM track_certificates WHERE domain = %s ORDER BY id", (domain.lower(),)
            )
        return Certificate.from_row(row) if row else None

    def list_certificates(self) -> list[Certificate]:
        with self.main(readonly=True) as db:
            rows = db.query("SELECT * FROM track_certificates ORDER BY domain")
        return [Certificate.from_row(r) for r in rows]

    def save_certificate(self, domain: str, **fields: Any) -> Certificate:
        """Create or update the ``track_certificates`` row of ``domain``."""
        domain = domain.lower()
        now = utcnow()
        fields["updated_at"] = now
        with self.main() as db:
            row = db.one("SELECT id FROM track_certificates WHERE domain = %s", (domain,))
            if row is None:
                fields.setdefault("created_at", now)
                names = ["domain", *fields]
                db.insert(
                    f"INSERT INTO track_certificates ({', '.join(f'`{n}`' for n in names)}) "
                    f"VALUES ({', '.join(['%s'] * len(names))})",
                    (domain, *fields.values()),
                )
            else:
                assignments = ", ".join(f"`{k}` = %s" for k in fields)
                db.execute(
                    f"UPDATE track_certificates SET {assignments} WHERE id = %s",
                    (*fields.values(), row["id"]),
                )
        found = self.get_certificate(domain)
        assert found is not None
        return found

    # -- messages, links and events -------------------------------------------

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


def _migrate(db: Db, migrations: dict[int, tuple[_schema.Table, ...]]) -> None:
    for statement in _schema.create_statements(_schema.TRACKING_MIGRATIONS, db.dialect):
        db.execute(statement)
    done = {int(r["version"]) for r in db.query("SELECT version FROM tracking_migrations")}
    for version in sorted(migrations):
        if version in done:
            continue
        for table in migrations[version]:
            for statement in _schema.create_statements(table, db.dialect):
                db.execute(statement)
        db.execute(
            "INSERT INTO tracking_migrations (version, applied_at) VALUES (%s, %s)",
            (version, utcnow()),
        )
