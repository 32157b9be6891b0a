"""Privacy operators can promise: shortened addresses, retention, erasure per recipient.

- :func:`anonymize_ip`: with ``tracking.privacy.anonymize_ip`` the recorder
  keeps only the /24 of an IPv4 and the /48 of an IPv6 address, before the
  event is spooled, so the full address never reaches disk or the store.
- :func:`prune`: deletes per-event rows older than the retention (our
  ``tracking_events``, and in the plugin's own stores ``clicks``/``loads``),
  our rows whose message Postal's retention removed, and spool leftovers
  (``rejected-*.jsonl``) older than the retention. Run by ``postal-tracking
  prune`` and once a day by every recorder (:class:`Pruner`).
- :func:`forget`: erases what was tracked for one recipient address.

Not here: the fast server's access log (``tracking.log``), which is the
operator's to rotate, and Postal's own tables in ``postal`` mode beyond what
Postal's fast server would have written.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from typing import ParamSpec
from typing import TypeVar

from .._hub import off_hub
from ..config import Config
from ..store import Store

if TYPE_CHECKING:
    from ._spool import Spool

_P = ParamSpec("_P")
_R = TypeVar("_R")

log = logging.getLogger("postal_tracking_plugin.events")

DEFAULT_RETENTION_DAYS = 90
#: How often a running recorder prunes.
PRUNE_EVERY = 86400.0
_DAY = 86400.0


def anonymize_ip(address: str) -> str:
    """The /24 network of an IPv4 address, the /48 of an IPv6 one (``1.2.3.0``, ``2001:db8:1::``).

    An IPv4-mapped IPv6 address is shortened as IPv4. Text that is no address
    becomes ``"unknown"``: never the original, which might hold one.
    """
    head, dot, _last = address.rpartition(".")
    if dot and head.count(".") == 2 and ":" not in head:
        # Dotted IPv4, the common case: 0.5 us instead of 3 us through ipaddress.
        return head + ".0"
    return _network_of(address)


@functools.lru_cache(maxsize=4096)
def _network_of(address: str) -> str:
    """:func:`anonymize_ip` through :mod:`ipaddress` (IPv6 and the odd forms), cached:
    parsing IPv6 costs tens of microseconds, and the same readers come back."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            return str(ipaddress.IPv6Address(int(ip) & _V6_48))
        ip = ip.ipv4_mapped
    return str(ipaddress.IPv4Address(int(ip) & _V4_24))


_V4_24 = 0xFFFFFF00
_V6_48 = ((1 << 48) - 1) << 80


def postal_mode(config: Config) -> bool:
    """Whether the store is Postal's own databases (``tracking.store: postal``)."""
    return str(config.tracking.store) == "postal"


def retention_days(config: Config, store: Store, server_id: int) -> int:
    """``tracking.retention_days``; unset, Postal's per-server setting in postal mode, else 90."""
    if config.tracking.retention_days:
        return int(config.tracking.retention_days)
    if postal_mode(config):
        return store.server_retention_days(server_id) or DEFAULT_RETENTION_DAYS
    return DEFAULT_RETENTION_DAYS


def prune(
    config: Config, store: Store, spool_dir: Path | None = None, *, now: float | None = None
) -> list[tuple[str, str, int]]:
    """Delete what is older than the retention; returns ``(where, what, count)`` lines."""
    now = time.time() if now is None else now
    own = not postal_mode(config)
    report: list[tuple[str, str, int]] = []
    for server in store.list_servers():
        if not store.message_database_exists(server.id) or not store.has_events_table(server.id):
            continue
        days = retention_days(config, store, server.id)
        removed = store.prune_events(server.id, now - days * _DAY, own_messages=own)
        for table, count in sorted(removed.items()):
            report.append((f"server {server.name}", table, count))
    spool_dir = spool_dir or config.data_dir / "spool"
    days = int(config.tracking.retention_days or DEFAULT_RETENTION_DAYS)
    removed_files = 0
    if spool_dir.is_dir():
        for path in spool_dir.glob("rejected-*.jsonl"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < now - days * _DAY:
                    path.unlink()
                    removed_files += 1
    if removed_files:
        report.append((str(spool_dir), "rejected-*.jsonl files", removed_files))
    return report


def forget(config: Config, store: Store, address: str) -> list[tuple[str, str, int]]:
    """Erase what was tracked for ``address`` on every server; returns ``(where, what, count)``."""
    address = address.strip()
    own = not postal_mode(config)
    report: list[tuple[str, str, int]] = []
    for server in store.list_servers():
        if not store.message_database_exists(server.id) or not store.has_events_table(server.id):
            continue
        for table, count in store.forget_recipient(server.id, address, own_messages=own).items():
            report.append((f"server {server.name}", table, count))
    for table, count in store.forget_webhooks(address).items():
        report.append(("main database", f"{table} (queued webhooks)", count))
    return report


class Pruner:
    """Runs :func:`prune` from the recorder's writer once a day (first ten minutes after start)."""

    def __init__(self, config: Config, store: Store, spool: Spool) -> None:
        self.config = config
        self.store = store
        self.spool = spool
        self.next_run = time.monotonic() + 600.0 + (os.getpid() % 60)

    def maybe_run(self) -> None:
        if time.monotonic() < self.next_run:
            return
        self.next_run = time.monotonic() + PRUNE_EVERY
        try:
            # SQLite blocks without a socket to yield on: off the hub, as the writer's batches.
            run = off_hub if self.store.dialect == "sqlite" else _call
            report = run(prune, self.config, self.store, self.spool.directory)
        except Exception as exc:  # noqa: BLE001 - tried again tomorrow; recording goes on
            log.warning("daily prune failed (run `postal-tracking prune` to see why): %s", exc)
            return
        total = sum(n for _where, _what, n in report)
        if total:
            log.info("daily prune removed %d rows and files older than the retention", total)


def _call(func: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """``func(*args, **kwargs)``, here: :func:`off_hub`'s form, for the other stores."""
    return func(*args, **kwargs)
