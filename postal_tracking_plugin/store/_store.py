"""What the rest of the package asks of the store, written once for both backends.

A backend supplies two context managers, :meth:`Store.main` and
:meth:`Store.messages`, each one transaction on one database (see
:class:`~postal_tracking_plugin.store._db.Db`); everything here is plain SQL on
Postal's tables above them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import cast

from ..errors import AlreadyExists
from ..errors import NotFound
from ..errors import StoreError
from . import _schema
from ._dashboard_ops import DashboardOperations
from ._db import Db
from ._db import SqlValue
from ._db import utcnow
from ._event_ops import column_exists
from ._event_ops import rebuild_rollups
from ._message_ops import MessageOperations
from ._models import Certificate
from ._models import Server
from ._models import TrackDomain
from ._tokens import SERVER_TOKEN_RE
from ._tokens import server_token

_TRACK_DOMAIN_SQL = (
    "SELECT td.*, d.name AS domain_name, s.token AS server_token, s.name AS server_name "
    "FROM track_domains td JOIN domains d ON d.id = td.domain_id "
    "JOIN servers s ON s.id = td.server_id "
)


class Store(MessageOperations, DashboardOperations):
    """Base of :class:`SqliteStore`, :class:`MysqlStore` and :class:`PostalStore`."""

    dialect: str = ""

    #: Whether the rewriter stores messages here and tracks them. False for
    #: Postal's own databases: Postal tracks the mail it sends itself.
    tracks_outgoing_mail: bool = True

    # -- provided by each backend ------------------------------------------

    def main(self, *, create: bool = False, readonly: bool = False) -> AbstractContextManager[Db]:
        """A transaction on the main database (``with store.main() as db:``)."""
        raise NotImplementedError

    def messages(
        self, server_id: int, *, create: bool = False, readonly: bool = False
    ) -> AbstractContextManager[Db]:
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

    def create_schema(self) -> list[str]:
        """Create the main database's missing tables, and every server's message tables.

        Idempotent; never drops or alters Postal's tables (our own may gain an
        index). Returns notes for the user (nothing to say here).
        """
        with self.main(create=True) as db:
            _migrate(db, _schema.MAIN_MIGRATIONS, _schema.MAIN_COLLATION)
        for server in self.list_servers():
            self.create_message_schema(server.id)
        return []

    def create_message_schema(self, server_id: int) -> None:
        with self.messages(server_id, create=True) as db:
            _migrate(db, _schema.MESSAGE_MIGRATIONS, _schema.MESSAGE_COLLATION)

    def check_changeable(self, what: str) -> None:
        """Raise :class:`PostalOwnsThis` when ``what`` (servers, tracking domains) is Postal's.

        The store's own methods refuse such changes anyway; a command calls this
        first so that it refuses before doing anything else (a DNS lookup).
        """

    def check_can_issue_certificates(self) -> None:
        """Raise :class:`PostalOwnsThis` where Postal's own job issues certificates."""

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

    def ensure_domain(self, db: Db, server: Server, name: str) -> int:
        """The id of sending domain ``name`` of the server, added if missing.

        A domain may belong to the server or to its organisation (Postal's
        ``owner_type 'Organization'``, ``server_id`` NULL). An existing row of
        either kind is used, never shadowed: Postal picks among a name's rows
        with ``ORDER BY owner_type DESC``, so a new server-owned row would win
        over the organisation's and DKIM would sign with the wrong key.
        """
        row = db.one(
            "SELECT id FROM domains WHERE name = %s AND (server_id = %s "
            "OR (owner_type = 'Server' AND owner_id = %s) "
            "OR (owner_type = 'Organization' AND owner_id = %s)) "
            "ORDER BY owner_type DESC, id",
            (name, server.id, server.id, server.organization_id),
        )
        if row:
            return int(row["id"])
        server_id = server.id
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
        label, domain_name = split_track_domain_name(full_name)
        now = utcnow()
        with self.main() as db:
            if db.one(
                _TRACK_DOMAIN_SQL + "WHERE td.name = %s AND d.name = %s", (label, domain_name)
            ):
                raise AlreadyExists(f"tracking domain {full_name} exists already")
            domain_id = self.ensure_domain(db, server, domain_name)
            taken = db.one(
                _TRACK_DOMAIN_SQL + "WHERE td.domain_id = %s AND td.server_id = %s",
                (domain_id, server.id),
            )
            if taken:
                raise AlreadyExists(
                    f"{domain_name} has a tracking domain on server {server.name!r} already "
                    f"({taken['name']}.{domain_name}); Postal allows one per domain and server: "
                    f"remove it first"
                )
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
        params: tuple[SqlValue, ...] = ()
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

    def update_track_domain(
        self, track_domain: TrackDomain, **changes: SqlValue | Iterable[str]
    ) -> TrackDomain:
        """Change settings of a tracking domain (keys: see ``_SETTABLE``).

        ``excluded_click_domains`` is given as the host names, one per item.
        """
        bad = set(changes) - self._SETTABLE
        if bad:
            raise StoreError(f"cannot change {', '.join(sorted(bad))} of a tracking domain")
        values: dict[str, SqlValue] = {}
        for key, value in changes.items():
            if key == "excluded_click_domains":
                values[key] = "\n".join(cast("Iterable[str]", value)) or None
            elif key in ("ssl_enabled", "track_clicks", "track_loads"):
                values[key] = int(bool(value))
            else:
                values[key] = cast("SqlValue", value)
        values["updated_at"] = utcnow()
        assignments = ", ".join(f"`{k}` = %s" for k in values)
        with self.main() as db:
            db.execute(
                f"UPDATE track_domains SET {assignments} WHERE id = %s",
                (*values.values(), track_domain.id),
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

    def certificate_versions(self) -> dict[str, tuple[object, object]]:
        """Each domain that has a certificate and key: its ``(updated_at, expires_at)``.

        What the fast server compares, every few seconds, with the version it
        loaded, to notice a certificate issued, renewed or removed; the PEM text
        is read (with :meth:`get_certificate`) only for a domain whose version changed.
        """
        with self.main(readonly=True) as db:
            rows = db.query(
                "SELECT domain, updated_at, expires_at FROM track_certificates "
                "WHERE certificate IS NOT NULL AND `key` IS NOT NULL"
            )
        return {str(r["domain"]).lower(): (r["updated_at"], r["expires_at"]) for r in rows}

    def list_certificates(self) -> list[Certificate]:
        with self.main(readonly=True) as db:
            rows = db.query("SELECT * FROM track_certificates ORDER BY domain")
        return [Certificate.from_row(r) for r in rows]

    def save_certificate(self, domain: str, **fields: SqlValue) -> Certificate:
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


#: A tracking domain's label, as Postal's TrackDomain validates it.
_LABEL_RE = re.compile(r"\A[a-z0-9-]+\Z")


def split_track_domain_name(full_name: str) -> tuple[str, str]:
    """``click.example.com`` -> ``("click", "example.com")``, by Postal's rules, or StoreError."""
    label, _, domain_name = full_name.lower().strip(".").partition(".")
    if not label or "." not in domain_name:
        raise StoreError(
            f"{full_name!r} is not a tracking domain name: give the full name, "
            f"such as click.example.com"
        )
    if not _LABEL_RE.match(label):
        raise StoreError(
            f"{full_name!r}: a tracking domain's first label may hold only a-z, 0-9 and '-' "
            f"(Postal's rule), such as click.example.com"
        )
    return label, domain_name


Step = _schema.Table | _schema.Index | _schema.Seed | _schema.Column | _schema.Backfill


def _migrate(
    db: Db,
    migrations: Mapping[int, Sequence[Step]],
    collation: str,
    keep: Callable[[Step], bool] = lambda step: True,
) -> None:
    """Run the migrations ``db`` lacks, each step only where ``keep`` allows it."""
    for statement in _schema.create_statements(_schema.TRACKING_MIGRATIONS, db.dialect, collation):
        db.execute(statement)
    done = {int(r["version"]) for r in db.query("SELECT version FROM tracking_migrations")}
    for version in sorted(migrations):
        if version in done:
            continue
        for table in migrations[version]:
            if not keep(table):
                continue
            if isinstance(table, _schema.Seed):
                _seed(db, table)
                continue
            if isinstance(table, _schema.Backfill):
                rebuild_rollups(db)
                continue
            if isinstance(table, _schema.Index) and _index_done(db, table):
                continue  # done by a run that stopped before recording its version
            if isinstance(table, _schema.Column) and column_exists(db, table.table, table.name):
                continue
            for statement in _schema.create_statements(table, db.dialect, collation):
                db.execute(statement)
        db.execute(
            "INSERT INTO tracking_migrations (version, applied_at) VALUES (%s, %s)",
            (version, utcnow()),
        )


def _seed(db: Db, seed: _schema.Seed) -> None:
    present = {int(r["v"]) for r in db.query(f"SELECT `{seed.column}` AS v FROM `{seed.table}`")}
    missing = [(v,) for v in seed.values if v not in present]
    if missing:
        db.executemany(f"INSERT INTO `{seed.table}` (`{seed.column}`) VALUES (%s)", missing)


def _index_done(db: Db, index: _schema.Index) -> bool:
    """Whether the index is already made (or dropped); SQLite's statements check themselves."""
    if db.dialect != "mysql":
        return False
    exists = bool(
        db.query(
            "SELECT 1 FROM information_schema.statistics WHERE table_schema = DATABASE() "
            "AND table_name = %s AND index_name = %s LIMIT 1",
            (index.table, index.name_in(db.dialect)),
        )
    )
    return exists != index.drop
