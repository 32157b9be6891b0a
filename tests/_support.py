"""Helpers the tests share: MariaDB settings, free ports, skip-or-fail.

Plain functions and constants, imported as ``from _support import ...``; the
fixtures stay in ``conftest.py``, which pytest loads by itself (a test module
never imports ``conftest``). ``benchmarks/_support.py`` loads this file too, so
the benchmarks use the same ``PTP_MYSQL_*`` settings and ports without a copy.

MariaDB tests use 127.0.0.1:3306 as root without a password (override with
``PTP_MYSQL_HOST``, ``PTP_MYSQL_PORT``, ``PTP_MYSQL_USER``, ``PTP_MYSQL_PASSWORD``).
When MariaDB cannot be reached a test is skipped with the reason, except under
CI (``CI=true``), where it fails: CI must prove the MariaDB path.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import pymysql
import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

MYSQL = {
    "host": os.environ.get("PTP_MYSQL_HOST", "127.0.0.1"),
    "port": int(os.environ.get("PTP_MYSQL_PORT", "3306")),
    "username": os.environ.get("PTP_MYSQL_USER", "root"),
    "password": os.environ.get("PTP_MYSQL_PASSWORD", ""),
}


def _test_ports() -> range:
    """Ports for the servers tests start: outside the kernel's ephemeral range.

    A port picked by binding port 0 comes from that range, and any client
    connection made before the server binds it (Pebble, certbot, MariaDB, the
    tests' own) may be given it: a CI run once failed with "port ... is in use".
    """
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(20000, low - 16) if low > 24000 else range(high + 1, 65520)


_TEST_PORTS = _test_ports()


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", *, span: int = 1) -> int:
    """A port nothing uses on ``host`` (and the ``span - 1`` after it, span <= 16)."""
    while True:
        port = random.randrange(_TEST_PORTS.start, _TEST_PORTS.stop)
        if all(port_free(port + i, host) for i in range(span)):
            return port


def need(condition: bool, reason: str) -> None:
    """Skip with ``reason`` unless ``condition``; under CI, fail instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def mysql_reachable() -> str | None:
    """None if MariaDB answers, else why not."""
    try:
        conn = pymysql.connect(
            host=MYSQL["host"],
            port=MYSQL["port"],
            user=MYSQL["username"],
            password=MYSQL["password"],
            connect_timeout=3,
        )
    except pymysql.err.Error as exc:
        return f"MariaDB at {MYSQL['host']}:{MYSQL['port']} is not reachable: {exc}"
    conn.close()
    return None


def drop_mysql_databases(prefix: str) -> None:
    conn = pymysql.connect(
        host=MYSQL["host"], port=MYSQL["port"], user=MYSQL["username"], password=MYSQL["password"]
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute("SHOW DATABASES")
            for (name,) in cursor.fetchall():
                if name == prefix or name.startswith(prefix + "-"):
                    cursor.execute(f"DROP DATABASE `{name}`")
    finally:
        conn.close()


def mysql_config_data(database: str) -> dict:
    return {
        "main_db": {**MYSQL, "database": database},
        "message_db": {"prefix": database},
        "tracking": {"store": "mysql"},
    }
