"""The store: Postal's tables in SQLite (embedded default) or MySQL/MariaDB.

:func:`open_store` picks the backend from ``tracking.store``: ``sqlite`` and
``mysql`` are this project's own databases, ``postal`` is Postal's (read as
Postal wrote it, see :mod:`._postal`). All implement :class:`Store`, whose
operations are written once above a two-method interface (a transaction on the
main database, one on a server's message database).
"""

from __future__ import annotations

from ..config import Config
from ._dashboard_ops import Filter as Filter
from ._dashboard_ops import SeriesPoint as SeriesPoint
from ._dashboard_ops import TopLink as TopLink
from ._dashboard_ops import TrackingStats as TrackingStats
from ._db import Db as Db
from ._db import Row as Row
from ._db import SqlValue as SqlValue
from ._db import utcnow as utcnow
from ._event_ops import FlagQueries as FlagQueries
from ._models import Certificate as Certificate
from ._models import Link as Link
from ._models import Server as Server
from ._models import TrackDomain as TrackDomain
from ._store import Store as Store
from ._store import split_track_domain_name as split_track_domain_name
from ._tokens import random_token as random_token
from ._tokens import url_hash as url_hash


def open_store(config: Config) -> Store:
    """The store ``config`` names; nothing is connected until first use."""
    if config.tracking.store == "postal":
        from ._postal import PostalStore

        return PostalStore(config)
    if config.tracking.store == "mysql":
        from ._mysql import MysqlStore

        return MysqlStore(config)
    from ._sqlite import SqliteStore

    return SqliteStore(config.data_dir)


__all__ = [
    "Certificate",
    "Db",
    "Filter",
    "FlagQueries",
    "Link",
    "Row",
    "SeriesPoint",
    "Server",
    "SqlValue",
    "Store",
    "TopLink",
    "TrackDomain",
    "TrackingStats",
    "open_store",
    "random_token",
    "split_track_domain_name",
    "url_hash",
    "utcnow",
]
