"""``tracking.store: postal``: Postal's own databases, which Postal owns.

Postal owns its organisations, servers, domains, tracking domains, webhooks
and messages. Beside it this store writes only what Postal's own fast server
wrote (``clicks``, ``loads``, ``messages.clicked`` / ``loaded``,
``webhook_requests``, ``track_certificates``) and tables of this project's own,
named ``tracking_*`` (a prefix Postal never uses). Everything else that would
create or change Postal's objects raises :class:`PostalOwnsThis`, one line that
names where the change is made instead; the rewriter does not track mail here
(Postal tracks the mail it sends, and would store it twice).

Not here: the SQL itself (inherited from :class:`MysqlStore` and the shared
:class:`Store`), nor retention (``postal-tracking prune``).
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import NoReturn

from ..errors import PostalOwnsThis
from . import _schema
from ._db import Db
from ._db import SqlValue
from ._models import Certificate
from ._models import Link
from ._models import Server
from ._models import TrackDomain
from ._mysql import MysqlStore
from ._store import _migrate


def _refuse(what: str) -> NoReturn:
    raise PostalOwnsThis(
        f"{what} belong to Postal (tracking.store: postal): change them in Postal's web "
        f"interface; the sidecar only reads them"
    )


class PostalStore(MysqlStore):
    """Postal's main and message databases, read as Postal wrote them."""

    #: Postal's fast server writes ``clicks``/``loads`` too (docs/dashboard.md).
    postal_writes_events = True

    expects_postal = True
    tracks_outgoing_mail = False

    def describe(self) -> str:
        return "Postal's " + super().describe()

    # -- schema: our own tables only, in databases that exist ------------------

    def create_schema(self) -> list[str]:
        """Add our own tables (and a missing ``track_certificates``); create no database.

        Message databases are Postal's to provision: a server whose database
        is missing is skipped and named in the returned notes.
        """
        with self.main() as db:
            _migrate(
                db, _schema.MAIN_MIGRATIONS, _schema.MAIN_COLLATION, _schema.created_beside_postal
            )
        notes = []
        for server in self.list_servers():
            if self.message_database_exists(server.id):
                self.create_message_schema(server.id)
            else:
                notes.append(
                    f"server {server.name!r}: its message database "
                    f"`{self.message_database(server.id)}` does not exist (Postal makes it); "
                    f"skipped"
                )
        return notes

    def create_message_schema(self, server_id: int) -> None:
        with self.messages(server_id) as db:
            _migrate(db, _schema.MESSAGE_MIGRATIONS, _schema.MESSAGE_COLLATION, _schema.is_ours)

    _major_version: int | None = None

    def postal_major_version(self) -> int:
        """3 when the schema has Postal 3's ``worker_roles``, else 2 (or older)."""
        if self._major_version is None:
            self._major_version = 3 if self.has_main_table("worker_roles") else 2
        return self._major_version

    # -- what Postal owns ------------------------------------------------------

    def check_changeable(self, what: str) -> None:
        _refuse(what)

    def check_can_issue_certificates(self) -> None:
        """Refuse on a schema older than Postal 3, where Postal's own job may issue.

        Before 2.0, Postal's ``RenewTrackCertificatesJob`` ran every 15 minutes
        from its cron, over every ``track_certificates`` row whose
        ``renew_after`` is NULL or past, read ``key`` as RSA and rewrote the
        challenge columns: issuing beside it would fight it. Its schema is the
        same as 2.x's (which has no job), so a pre-3 schema is refused as a
        whole; the certificates Postal writes are served either way.
        """
        if self.postal_major_version() < 3:
            raise PostalOwnsThis(
                "this Postal database is older than Postal 3 (no worker_roles table), whose "
                "own RenewTrackCertificatesJob may issue track_certificates: the sidecar "
                "serves the certificates Postal writes and issues none; upgrade Postal to 3.x "
                "to have the sidecar issue them"
            )

    def add_server(self, name: str, token: str | None = None) -> Server:
        _refuse("servers")

    def ensure_domain(self, db: Db, server: Server, name: str) -> int:
        _refuse("domains")

    def add_track_domain(self, server: Server, full_name: str, **settings: object) -> TrackDomain:
        _refuse("tracking domains")

    def update_track_domain(
        self, track_domain: TrackDomain, **changes: SqlValue | Iterable[str]
    ) -> TrackDomain:
        _refuse("tracking domains and their settings")

    def remove_track_domain(self, track_domain: TrackDomain) -> None:
        _refuse("tracking domains")

    def save_certificate(self, domain: str, **fields: SqlValue) -> Certificate:
        self.check_can_issue_certificates()
        return super().save_certificate(domain, **fields)

    def save_tracked_message(
        self, server_id: int, message: Mapping[str, SqlValue], links: Sequence[Link]
    ) -> int:
        _refuse("outgoing messages and their links (Postal tracks the mail it sends)")
