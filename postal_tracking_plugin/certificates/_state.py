"""Issuance state the store keeps beside Postal's ``track_certificates``.

Postal's table has no room for "why did the last attempt fail, and when do we
try again", so that lives in our own ``tracking_certificate_status`` table. The
renewal lock (``tracking_locks``) keeps a cluster of fast servers from asking
the CA for the same certificates at once. All SQL is the subset SQLite and
MariaDB share, apart from the one ``INSERT ... IGNORE`` spelling.
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
import time
from dataclasses import dataclass

from ..store import Db
from ..store import SqlValue
from ..store import Store
from ..store import utcnow

#: Waits after the 1st, 2nd and 3rd-or-later failure in a row: the CA is not
#: hammered while DNS or a firewall gets fixed.
BACKOFF = (_dt.timedelta(hours=1), _dt.timedelta(hours=6), _dt.timedelta(hours=24))

LOCK_NAME = "certificates"


@dataclass(frozen=True)
class Status:
    """A ``tracking_certificate_status`` row."""

    domain: str
    status: str | None
    last_error: str | None
    attempts: int
    next_attempt_at: _dt.datetime | None
    updated_at: _dt.datetime | None


def backoff(attempts: int) -> _dt.timedelta:
    """How long to wait after ``attempts`` failures in a row (1 h, 6 h, then 24 h)."""
    return BACKOFF[min(max(attempts, 1), len(BACKOFF)) - 1]


def get_status(store: Store, domain: str) -> Status | None:
    with store.main(readonly=True) as db:
        row = db.one(
            "SELECT * FROM tracking_certificate_status WHERE domain = %s", (domain.lower(),)
        )
    return _status(row) if row else None


def all_statuses(store: Store) -> dict[str, Status]:
    with store.main(readonly=True) as db:
        rows = db.query("SELECT * FROM tracking_certificate_status")
    return {r["domain"]: _status(r) for r in rows}


def _status(row: dict) -> Status:
    return Status(
        domain=row["domain"],
        status=row.get("status"),
        last_error=row.get("last_error"),
        attempts=int(row.get("attempts") or 0),
        next_attempt_at=row.get("next_attempt_at"),
        updated_at=row.get("updated_at"),
    )


def _write(store: Store, domain: str, **fields: SqlValue) -> None:
    domain = domain.lower()
    fields["updated_at"] = utcnow()
    with store.main() as db:
        _insert_ignore(db, "tracking_certificate_status", ("domain", "attempts"), (domain, 0))
        assignments = ", ".join(f"`{k}` = %s" for k in fields)
        db.execute(
            f"UPDATE tracking_certificate_status SET {assignments} WHERE domain = %s",
            (*fields.values(), domain),
        )


def mark_pending(store: Store, domain: str) -> None:
    """An attempt is starting now."""
    _write(store, domain, status="pending")


def mark_active(store: Store, domain: str) -> None:
    """A certificate was issued and stored: forget earlier failures."""
    _write(store, domain, status="active", last_error=None, attempts=0, next_attempt_at=None)


def mark_failed(store: Store, domain: str, error: str) -> Status:
    """Record a failure in words and schedule the next attempt after the back-off."""
    previous = get_status(store, domain)
    attempts = (previous.attempts if previous else 0) + 1
    now = utcnow()
    _write(
        store,
        domain,
        status="failed",
        last_error=error[:2000],
        attempts=attempts,
        next_attempt_at=now + backoff(attempts),
    )
    found = get_status(store, domain)
    assert found is not None
    return found


def _insert_ignore(db: Db, table: str, columns: tuple[str, ...], values: tuple) -> None:
    verb = "INSERT OR IGNORE" if db.dialect == "sqlite" else "INSERT IGNORE"
    names = ", ".join(f"`{c}`" for c in columns)
    marks = ", ".join(["%s"] * len(columns))
    db.execute(f"{verb} INTO `{table}` ({names}) VALUES ({marks})", values)


# -- the renewal lock ----------------------------------------------------------


def lock_holder() -> str:
    """Who holds a lock: this host and process, for messages to the user."""
    return f"{socket.gethostname()}:{os.getpid()}"


def acquire_lock(store: Store, holder: str, ttl: float, name: str = LOCK_NAME) -> bool:
    """Take the named lock for ``ttl`` seconds unless someone else holds it.

    An expired lock (its holder died) is taken over. Calling it again while
    holding the lock extends it.
    """
    now = time.time()
    with store.main() as db:
        _insert_ignore(db, "tracking_locks", ("name", "holder", "expires_at"), (name, None, 0))
    with store.main() as db:
        db.execute(
            "UPDATE tracking_locks SET holder = %s, expires_at = %s WHERE name = %s "
            "AND (holder IS NULL OR holder = %s OR expires_at < %s)",
            (holder, now + ttl, name, holder, now),
        )
        row = db.one("SELECT holder FROM tracking_locks WHERE name = %s", (name,))
    return bool(row and row["holder"] == holder)


def release_lock(store: Store, holder: str, name: str = LOCK_NAME) -> None:
    with store.main() as db:
        db.execute(
            "UPDATE tracking_locks SET holder = NULL, expires_at = 0 "
            "WHERE name = %s AND holder = %s",
            (name, holder),
        )


def lock_owner(store: Store, name: str = LOCK_NAME) -> tuple[str, float] | None:
    """``(holder, expires_at)`` of a live lock, or None when it is free."""
    with store.main(readonly=True) as db:
        row = db.one("SELECT holder, expires_at FROM tracking_locks WHERE name = %s", (name,))
    if not row or not row["holder"] or float(row["expires_at"] or 0) < time.time():
        return None
    return row["holder"], float(row["expires_at"])
