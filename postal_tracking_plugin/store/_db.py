"""The small interface both backends implement: a transaction on one database.

All SQL in this package is written once, in the subset SQLite and MariaDB
share, with ``%s`` placeholders and backtick-quoted names; :class:`Db` runs it.
``dialect`` is there for the rare statement that differs (upserts).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from collections.abc import Sequence
from decimal import Decimal
from typing import Any
from typing import Protocol

#: What a statement's parameters may be: the types both drivers convert (SQLite's
#: through :func:`~._sqlite._param`). ``bool`` is an ``int``.
SqlValue = str | int | float | Decimal | bytes | _dt.datetime | _dt.date | None

#: One result row keyed by column name. The values stay ``Any``: a row's shape is
#: the query's (``SELECT *`` of one of some thirty tables, or a join), and the
#: models in :mod:`._models` are where a fixed shape gets its types.
Row = dict[str, Any]


class Db(Protocol):
    """One open transaction; committed when its ``with`` block ends normally."""

    dialect: str

    def execute(self, sql: str, params: Sequence[SqlValue] = ()) -> int:
        """Run one statement; return the number of rows it changed."""

    def executemany(self, sql: str, rows: Iterable[Sequence[SqlValue]]) -> int:
        """Run one statement for many parameter rows (one multi-row INSERT on MySQL)."""

    def insert(self, sql: str, params: Sequence[SqlValue] = ()) -> int:
        """Run an INSERT; return the new row's id."""

    def query(self, sql: str, params: Sequence[SqlValue] = ()) -> list[Row]:
        """Return every row, as dicts keyed by column name."""

    def one(self, sql: str, params: Sequence[SqlValue] = ()) -> Row | None:
        """Return the first row, or None."""


def utcnow() -> _dt.datetime:
    """Naive UTC, second precision: what Postal's datetime columns hold."""
    return _dt.datetime.now(_dt.UTC).replace(tzinfo=None, microsecond=0)
