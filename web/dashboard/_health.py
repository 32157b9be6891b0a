"""The health page's checks: each a (name, what was found, whether it is fine) triple.

Read-only and cheap: one ping, a directory scan of the local spool, one row per
server, two counts and the certificate status table. The spool is this
machine's (``<data_dir>/spool``); fast servers on other machines have their own.
"""

from __future__ import annotations

import time

from postal_tracking_plugin.config import Config
from postal_tracking_plugin.store import Store

#: A writer that stored its newest event this long after the event happened is behind.
LAG_WARNING = 60.0


def checks(config: Config, store: Store) -> list[tuple[str, str, bool]]:
    out: list[tuple[str, str, bool]] = []
    try:
        store.ping()
    except Exception as exc:  # noqa: BLE001 - shown to the operator, not raised
        out.append(("Store", f"not reachable ({store.describe()}): {exc}", False))
        return out
    out.append(("Store", f"reachable ({store.describe()})", True))
    from postal_tracking_plugin.events import spool_backlog

    streams, backlog = spool_backlog(config.data_dir / "spool")
    out.append(
        (
            "Spool backlog",
            f"{backlog} bytes not yet in the store, {streams} stream(s)",
            backlog == 0,
        )
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
    runs = store.certificate_runs()
    if not runs:
        out.append(("Last certificate run", "none yet", True))
    else:
        last = runs[0]
        failed = [r["domain"] for r in runs if r["status"] == "failed"]
        text = f"{last['updated_at']:%Y-%m-%d %H:%M} UTC: {last['domain']} {last['status']}"
        if last["last_error"] and last["status"] == "failed":
            text += f" ({last['last_error']})"
        if failed:
            text += f"; {len(failed)} domain(s) failing: {', '.join(failed)}"
        out.append(("Last certificate run", text, not failed))
    return out
