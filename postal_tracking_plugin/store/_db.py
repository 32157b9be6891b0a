"""The small interface both backends implement: a transaction on one database.

All SQL in this package is written once, in the subset SQLite and MariaDB
share, with ``%s`` placeholders and backtick-quoted names; :class:`Db` runs it.
``dialect`` is there for the rare statement that differs (upserts).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any
from typing import Protocol

Row = dict[str, Any]


class Db(Protocol):
    """One open transaction; committed when its ``with`` block ends normally."""

    dialect: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return the number of rows it changed."""

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run one statement for many parameter rows (one multi-row INSERT on MySQL)."""

    def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run an INSERT; return the new row's id."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Return every row, as dicts keyed by column name."""

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """Return the first row, or None."""


def utcnow() -> _dt.datetime:
    """Naive UTC, second precision: what Postal's datetime columns hold."""
    return _dt.datetime.now(_dt.UTC).replace(tzinfo=None, microsecond=0)
