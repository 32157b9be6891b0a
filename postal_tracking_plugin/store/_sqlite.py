"""SQLite backend, the embedded default: ``main.sqlite`` plus one file per server.

Files live under ``tracking.data_dir``: ``main.sqlite`` for Postal's main
tables and ``messages/server-<id>.sqlite`` for each server's message database,
mirroring Postal's one-database-per-server layout. WAL mode lets the fast
server's processes read while one writes.
"""

from __future__ import annotations

import datetime as _dt
import sqlite3
import threading
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import AbstractContextManager
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

from ..errors import StoreError
from ._db import Db
from ._db import Row
from ._db import SqlValue
from ._store import Store


def _convert_datetime(value: bytes) -> _dt.datetime:
    return _dt.datetime.fromisoformat(value.decode())


sqlite3.register_converter("datetime", _convert_datetime)
sqlite3.register_converter("datetime(6)", _convert_datetime)


def _param(value: SqlValue) -> str | int | float | bytes | _dt.date | None:
    if isinstance(value, _dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, Decimal):
        return float(value)
    return value


class _SqliteDb:
    dialect = "sqlite"
    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[SqlValue] = ()) -> int:
        return self._conn.execute(_sql(sql), [_param(p) for p in params]).rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[SqlValue]]) -> int:
        converted = [[_param(p) for p in row] for row in rows]
        return self._conn.executemany(_sql(sql), converted).rowcount

    def insert(self, sql: str, params: Sequence[SqlValue] = ()) -> int:
        cursor = self._conn.execute(_sql(sql), [_param(p) for p in params])
        return int(cursor.lastrowid or 0)

    def query(self, sql: str, params: Sequence[SqlValue] = ()) -> list[Row]:
        cursor = self._conn.execute(_sql(sql), [_param(p) for p in params])
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def one(self, sql: str, params: Sequence[SqlValue] = ()) -> Row | None:
        cursor = self._conn.execute(_sql(sql), [_param(p) for p in params])
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in cursor.description], row, strict=True))


_SQL_CACHE: dict[str, str] = {}


def _sql(sql: str) -> str:
    """``%s`` placeholders (the MySQL form every query is written in) to ``?``."""
    converted = _SQL_CACHE.get(sql)
    if converted is None:
        converted = _SQL_CACHE[sql] = sql.replace("%s", "?")
    return converted


class SqliteStore(Store):
    """The embedded store. One connection per file, shared under a lock."""

    dialect = "sqlite"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._conns: dict[str, sqlite3.Connection] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()

    def describe(self) -> str:
        return f"SQLite in {self.data_dir}"

    def main_path(self) -> Path:
        return self.data_dir / "main.sqlite"

    def message_path(self, server_id: int) -> Path:
        return self.data_dir / "messages" / f"server-{int(server_id)}.sqlite"

    def _connection(self, path: Path, create: bool) -> tuple[sqlite3.Connection, threading.RLock]:
        key = str(path)
        with self._guard:
            conn = self._conns.get(key)
            if conn is None:
                if not create and not path.exists():
                    raise StoreError(
                        f"database {path} does not exist: run `postal-tracking init` first"
                    )
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    conn = sqlite3.connect(
                        key,
                        timeout=10,
                        isolation_level=None,
                        check_same_thread=False,
                        detect_types=sqlite3.PARSE_DECLTYPES,
                    )
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA synchronous=NORMAL")
                    conn.execute("PRAGMA foreign_keys=OFF")
                except (sqlite3.Error, OSError) as exc:
                    raise StoreError(f"cannot open SQLite database {path}: {exc}") from None
                self._conns[key] = conn
                self._locks[key] = threading.RLock()
            return conn, self._locks[key]

    @contextmanager
    def _transaction(self, path: Path, create: bool, readonly: bool) -> Iterator[_SqliteDb]:
        conn, lock = self._connection(path, create)
        with lock:
            try:
                # A reader must not take the write lock (the click path reads);
                # a writer takes it first, so it never fails upgrading later.
                conn.execute("BEGIN" if readonly else "BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot use SQLite database {path}: {exc}") from None
            try:
                yield _SqliteDb(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    conn.execute("ROLLBACK")
                    raise StoreError(f"cannot write SQLite database {path}: {exc}") from None

    def main(self, *, create: bool = False, readonly: bool = False) -> AbstractContextManager[Db]:
        return self._transaction(self.main_path(), create, readonly)

    def messages(
        self, server_id: int, *, create: bool = False, readonly: bool = False
    ) -> AbstractContextManager[Db]:
        return self._transaction(self.message_path(server_id), create, readonly)

    def message_database_exists(self, server_id: int) -> bool:
        return self.message_path(server_id).exists()

    def close(self) -> None:
        with self._guard:
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()
            self._locks.clear()
