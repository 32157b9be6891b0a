"""The health page's checks: each a (name, what was found, whether it is fine) triple.

Read-only and cheap: one ping, a directory scan of the local spool, one row per
server, two counts and the certificate status table. The spool is this
machine's (``<data_dir>/spool``); fast servers on other machines have their own.
"""

from __future__ import annotations

import datetime as _dt
import time
from typing import Any

from postal_tracking_plugin.config import Config

#: A writer that stored its newest event this long after the event happened is behind.
LAG_WARNING = 60.0


def spool_backlog(config: Config) -> tuple[int, int]:
    """(streams, bytes) in ``<data_dir>/spool`` that the store does not hold yet."""
    from postal_tracking_plugin.events._spool import Stream
    from postal_tracking_plugin.events._spool import _stream_backlog

    directory = config.data_dir / "spool"
    if not directory.is_dir():
        return 0, 0
    streams = total = 0
    for lock in directory.glob("*.lock"):
        # Read only: the stream's lock fd is never used (-1), nothing is written.
        stream = Stream(directory, lock.name[: -len(".lock")], -1, owned=False)
        streams += 1
        total += _stream_backlog(stream)
    return streams, total


def checks(config: Config, store: Any) -> list[tuple[str, str, bool]]:
    out: list[tuple[str, str, bool]] = []
    try:
        store.ping()
    except Exception as exc:  # noqa: BLE001 - shown to the operator, not raised
        out.append(("Store", f"not reachable ({store.describe()}): {exc}", False))
        return out
    out.append(("Store", f"reachable ({store.describe()})", True))
    streams, backlog = spool_backlog(config)
    out.append(
        ("Spool backlog", f"{backlog} bytes not yet in the store, {streams} stream(s)", backlog == 0)
    )
    now = time.time()
    for server in store.list_servers():
        if not store.message_database_exists(server.id):
            continue
        try:
            latest = store.latest_event(server.id)
        except Exception:  # noqa: BLE001 - a message database without our tables yet
            latest = None
        if latest is None or latest["recorded_at"] is None:
            out.append((f"Writer, {server.name}", "no events recorded yet", True))
            continue
        lag = float(latest["recorded_at"]) - float(latest["timestamp"])
        age = now - float(latest["timestamp"])
        out.append(
            (
                f"Writer, {server.name}",
                f"newest event {age:.0f} s ago, stored {lag:.1f} s after it happened",
                lag < LAG_WARNING,
            )
        )
    waiting = store.webhooks_waiting()
    out.append(
        (
            "Webhooks waiting",
            f"{waiting['standalone']} standalone deliveries, {waiting['postal']} in Postal's queue",
            True,
        )
    )
    from postal_tracking_plugin.certificates._state import all_statuses

    statuses = [s for s in all_statuses(store).values() if s.updated_at is not None]
    if not statuses:
        out.append(("Last certificate run", "none yet", True))
    else:
        last = max(statuses, key=lambda s: s.updated_at or _dt.datetime.min)
        failed = [s for s in statuses if s.status == "failed"]
        text = f"{last.updated_at:%Y-%m-%d %H:%M} UTC: {last.domain} {last.status}"
        if last.last_error and last.status == "failed":
            text += f" ({last.last_error})"
        if failed:
            text += f"; {len(failed)} domain(s) failing: {', '.join(s.domain for s in failed)}"
        out.append(("Last certificate run", text, not failed))
    return out
