"""MySQL/MariaDB backend through PyMySQL: Postal-shaped databases of this project's own.

``tracking.store: mysql`` is for a MariaDB this project owns (several nodes
sharing one store); a main database that is Postal's is refused, and
:class:`~postal_tracking_plugin.store._postal.PostalStore` (``postal``) is
what reads Postal's own. ``main_db.database`` holds the main tables; each server's message database is
``<prefix>-server-<id>`` on the ``message_db`` host, exactly as Postal names
them. PyMySQL is pure Python, so once gevent has patched ``socket`` its queries
yield to other greenlets instead of blocking the fast server.

Each database gets a small pool of connections, made lazily. A connection idle
for a while is pinged (and reconnected) before use, and one that fails with a
lost-connection error is thrown away rather than returned to the pool, as is
one left by anything but an error the server answered (a greenlet killed
mid-query would leave its answer on the wire for the next user).
"""

from __future__ import annotations

import functools
import queue
import ssl
import threading
import time
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import AbstractContextManager
from contextlib import contextmanager
from typing import NotRequired
from typing import Protocol
from typing import TypedDict

import pymysql
import pymysql.connections
import pymysql.cursors
import pymysql.err

from ..config import Config
from ..errors import ConfigError
from ..errors import StoreError
from . import _schema
from ._db import Db
from ._db import Row
from ._db import SqlValue
from ._store import Store

#: Client error codes that mean the connection is gone (CR_SERVER_GONE_ERROR,
#: CR_SERVER_LOST, CR_CONN_HOST_ERROR, ...), and the server's ER_CON_COUNT_ERROR.
_LOST = {2003, 2006, 2013, 2055, 1040, 1927}
_PING_AFTER = 30.0
_UNKNOWN_DATABASE = 1049


class _MysqlDb:
    dialect = "mysql"
    __slots__ = ("_cursor",)

    def __init__(self, cursor: pymysql.cursors.DictCursor) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[SqlValue] = ()) -> int:
        return int(self._cursor.execute(sql, tuple(params)))

    def executemany(self, sql: str, rows: Iterable[Sequence[SqlValue]]) -> int:
        tuples = [tuple(r) for r in rows]
        if not tuples:
            return 0
        return int(self._cursor.executemany(sql, tuples) or 0)

    def insert(self, sql: str, params: Sequence[SqlValue] = ()) -> int:
        self._cursor.execute(sql, tuple(params))
        return int(self._cursor.lastrowid)

    def query(self, sql: str, params: Sequence[SqlValue] = ()) -> list[Row]:
        self._cursor.execute(sql, tuple(params))
        return list(self._cursor.fetchall())

    def one(self, sql: str, params: Sequence[SqlValue] = ()) -> Row | None:
        self._cursor.execute(sql, tuple(params))
        return self._cursor.fetchone()


@functools.cache
def _preferred_tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Connection(pymysql.connections.Connection):
    """PyMySQL's connection, with its opportunistic TLS context made once.

    Given no TLS settings (Postal's database config has none), PyMySQL tries
    TLS if the server offers it, without verifying, and builds a fresh context
    for every connection: loading the system's CA store took 10-20 ms of CPU,
    a stall of the fast server's whole event loop. The same settings, shared.
    """

    def _create_ssl_ctx(self, sslp: dict[str, object] | None) -> ssl.SSLContext:
        if not sslp:
            return _preferred_tls_context()
        ctx: ssl.SSLContext = super()._create_ssl_ctx(sslp)  # type: ignore[misc]  # not in the stubs
        return ctx


class _Params(TypedDict):
    """What :class:`_Connection` is made with (PyMySQL's ``connect`` arguments)."""

    host: str
    port: int
    user: str
    password: str
    charset: str
    autocommit: bool
    connect_timeout: int
    read_timeout: int
    write_timeout: int
    cursorclass: type[pymysql.cursors.DictCursor]
    database: NotRequired[str]


def _params(*, host: str, port: int, user: str, password: str) -> _Params:
    return _Params(
        host=host,
        port=port,
        user=user,
        password=password,
        charset="utf8mb4",
        autocommit=False,
        connect_timeout=5,
        read_timeout=30,
        write_timeout=30,
        cursorclass=pymysql.cursors.DictCursor,
    )


class _Closeable(Protocol):
    def close(self) -> None: ...


class _Pool:
    """At most ``size`` connections to one database, handed out LIFO."""

    def __init__(self, params: _Params, size: int, timeout: float) -> None:
        self._params = params
        self._idle: queue.LifoQueue[tuple[_Connection, float]] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._timeout = timeout

    def _describe(self) -> str:
        p = self._params
        return f"MySQL {p['user']}@{p['host']}:{p['port']}/{p.get('database') or ''}"

    def acquire(self) -> _Connection:
        if not self._slots.acquire(timeout=self._timeout):
            # From a TimeoutError: the event writer reads "not now, retry", not "bad event".
            raise StoreError(
                f"no free connection to {self._describe()} within {self._timeout} s"
            ) from TimeoutError()
        try:
            conn, last_used = self._idle.get_nowait()
        except queue.Empty:
            return self._connect()
        try:
            if time.monotonic() - last_used > _PING_AFTER:
                conn.ping(reconnect=True)
        except pymysql.err.Error:
            _close_quietly(conn)
            return self._connect()
        return conn

    def _connect(self) -> _Connection:
        try:
            return _Connection(**self._params)
        except pymysql.err.Error as exc:
            self._slots.release()
            hint = ": run `postal-tracking init` first" if _code(exc) == _UNKNOWN_DATABASE else ""
            raise StoreError(
                f"cannot connect to {self._describe()}: {_reason(exc)}{hint}"
            ) from None

    def release(
        self, conn: _Connection, *, discard: bool = False, server_gone: bool = False
    ) -> None:
        """Put ``conn`` back, or close it (``discard``); ``server_gone`` closes the idle ones too."""
        if discard or server_gone:
            _close_quietly(conn)
        else:
            self._idle.put((conn, time.monotonic()))
        if server_gone:
            # The server went away or restarted: the idle connections are most
            # likely dead too, so the next caller starts afresh.
            self.close()
        self._slots.release()

    def close(self) -> None:
        while True:
            try:
                conn, _ = self._idle.get_nowait()
            except queue.Empty:
                return
            _close_quietly(conn)


def _close_quietly(conn: _Closeable) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - it is being thrown away
        pass


def _reason(exc: BaseException) -> str:
    args: tuple[object, ...] = tuple(getattr(exc, "args", ()))
    if len(args) >= 2:
        return f"{args[1]} (error {args[0]})"
    return str(exc) or type(exc).__name__


class MysqlStore(Store):
    """Postal's main database plus one message database per server."""

    dialect = "mysql"

    def __init__(self, config: Config, *, pool_size: int = 8, timeout: float = 10.0) -> None:
        main, msg = config.main_db, config.message_db
        self.database = main.database
        self.prefix = config.message_db_prefix
        self._main_params = _params(
            host=main.host,
            port=main.port,
            user=main.username,
            password=main.password or "",
        )
        self._msg_params = _params(
            host=msg.host or main.host,
            port=msg.port or main.port,
            user=msg.username or main.username,
            password=(msg.password if msg.password is not None else main.password) or "",
        )
        self._pool_size = pool_size
        self._timeout = timeout
        self._pools: dict[str, _Pool] = {}
        self._guard = threading.Lock()

    def describe(self) -> str:
        p = self._main_params
        return f"MySQL {p['user']}@{p['host']}:{p['port']}/{self.database}"

    def message_database(self, server_id: int) -> str:
        return f"{self.prefix}-server-{int(server_id)}"

    def _pool(self, database: str, params: _Params) -> _Pool:
        with self._guard:
            pool = self._pools.get(database)
            if pool is None:
                pool = self._pools[database] = _Pool(
                    {**params, "database": database}, self._pool_size, self._timeout
                )
            return pool

    def _create_database(self, database: str, params: _Params, collation: str) -> None:
        try:
            conn = pymysql.connect(**params)
        except pymysql.err.Error as exc:
            where = f"{params['user']}@{params['host']}:{params['port']}"
            raise StoreError(f"cannot connect to MySQL {where}: {_reason(exc)}") from None
        try:
            with conn.cursor() as cursor:
                cursor.execute(
                    f"CREATE DATABASE IF NOT EXISTS `{database}` "
                    f"CHARACTER SET utf8mb4 COLLATE {collation}"
                )
            conn.commit()
        except pymysql.err.Error as exc:
            raise StoreError(f"cannot create database `{database}`: {_reason(exc)}") from None
        finally:
            _close_quietly(conn)

    @contextmanager
    def _transaction(self, database: str, params: _Params, create: str | None) -> Iterator[Db]:
        """One transaction on ``database``, made first with collation ``create`` when given."""
        if not self._owner_checked:
            self._check_owner()
        if create:
            self._create_database(database, params, create)
        pool = self._pool(database, params)
        conn = pool.acquire()
        gone = discard = False
        try:
            with conn.cursor(pymysql.cursors.DictCursor) as cursor:  # its cursorclass
                yield _MysqlDb(cursor)
            conn.commit()
        except pymysql.err.Error as exc:
            # An error the server answered leaves the connection in step: kept.
            gone = _is_lost(exc)
            if not gone:
                _rollback_quietly(conn)
            if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError):
                raise StoreError(f"MySQL database `{database}`: {_reason(exc)}") from exc
            raise
        except BaseException:
            # Anything else may have struck mid-query (a greenlet killed while
            # it waited for the answer, a timeout, Ctrl-C): the answer may still
            # be on the wire, and the next user would read it as its own (or
            # fail with "error 0"). Thrown away; the server rolls back on close.
            discard = True
            raise
        finally:
            pool.release(conn, discard=discard, server_gone=gone)

    def main(self, *, create: bool = False, readonly: bool = False) -> AbstractContextManager[Db]:
        collation = _schema.MAIN_COLLATION if create else None
        return self._transaction(self.database, self._main_params, collation)

    def messages(
        self, server_id: int, *, create: bool = False, readonly: bool = False
    ) -> AbstractContextManager[Db]:
        collation = _schema.MESSAGE_COLLATION if create else None
        return self._transaction(self.message_database(server_id), self._msg_params, collation)

    # -- whose database is this? -------------------------------------------

    #: Whether the main database must be Postal's (``tracking.store: postal``).
    expects_postal = False
    _owner_checked = False

    def _check_owner(self) -> None:
        """Refuse a main database owned by the other kind of store, before any use.

        Postal's main database always has ``organizations``; ours never does.
        ``tracking.store: mysql`` on Postal's database would add servers and
        domains behind Postal's back; ``postal`` on ours would find no Postal.
        """
        is_postal = self.has_main_table("organizations")  # its own connection, not main()
        where = f"`{self.database}` ({self.describe()})"
        if is_postal and not self.expects_postal:
            raise ConfigError(
                f"{where} is Postal's database (it has Postal's organizations table): "
                f"set tracking.store: postal, so that Postal's servers, domains and messages "
                f"are only read"
            )
        if self.expects_postal and not is_postal:
            raise ConfigError(
                f"tracking.store is postal, but {where} has no Postal organizations table: "
                f"point main_db at Postal's database, or set tracking.store: mysql for a "
                f"database of this project's own"
            )
        self._owner_checked = True

    def has_main_table(self, table: str) -> bool:
        """Whether the main database has ``table`` (False when the database is missing)."""
        try:
            conn = pymysql.connect(**self._main_params)
        except pymysql.err.Error as exc:
            p = self._main_params
            where = f"{p['user']}@{p['host']}:{p['port']}"
            raise StoreError(f"cannot connect to MySQL {where}: {_reason(exc)}") from None
        try:
            with conn.cursor() as cursor:
                cursor.execute(
                    "SELECT 1 FROM information_schema.TABLES "
                    "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                    (self.database, table),
                )
                return cursor.fetchone() is not None
        except pymysql.err.Error as exc:
            raise StoreError(f"MySQL: {_reason(exc)}") from None
        finally:
            _close_quietly(conn)

    def message_database_exists(self, server_id: int) -> bool:
        with self.main(readonly=True) as db:
            row = db.one(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                (self.message_database(server_id),),
            )
        return row is not None

    def close(self) -> None:
        with self._guard:
            for pool in self._pools.values():
                pool.close()
            self._pools.clear()


def _code(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _is_lost(exc: BaseException) -> bool:
    return isinstance(exc, pymysql.err.InterfaceError) or _code(exc) in _LOST


def _rollback_quietly(conn: _Connection) -> None:
    try:
        conn.rollback()
    except Exception:  # noqa: BLE001 - the connection may be gone; it is discarded then
        pass
