"""Webhooks for recorded clicks and opens: Postal's queue, or our own delivery.

Two ways out, chosen by the configuration:

Postal mode (``tracking.store: mysql``, on Postal's own database)
    For each of the server's enabled webhooks subscribed to
    ``MessageLinkClicked`` / ``MessageLoaded`` (or to all events), one row in
    Postal's ``webhook_requests``, its ``payload`` a Ruby Hash serialised the
    way Rails' YAML column coder writes it, so Postal's workers deliver, sign
    and retry it exactly like the rows Postal queues itself.

Standalone (``tracking.webhooks.urls``)
    One row per URL in ``tracking_webhook_deliveries``, POSTed by a deliverer
    running beside the writer: JSON ``{event, timestamp, payload, uuid}``,
    signed with HMAC-SHA256 over ``<timestamp>.<body>`` in the header
    ``X-Postal-Tracking-Signature: t=<timestamp>,v1=<hex>`` (the timestamp is
    the moment of sending, so a receiver can refuse old replays), retried
    after 2, 3, 6, 10 and 15 minutes as Postal does, and kept in the store so
    retries survive restarts. URLs resolving to loopback, link-local, private
    or otherwise non-global addresses are refused unless
    ``tracking.webhooks.allow_private_addresses`` is true.

The payload is Postal's: ``{message, url, token, ip_address, user_agent}`` for
a click, ``{message, ip_address, user_agent}`` for an open, plus our ``bot``
and ``bot_reason``. Queueing is idempotent (request uuids derive from the event
id), and events recorded but not yet queued when a process died are queued by
the next one (``tracking_events.webhooks_queued``).
"""

from __future__ import annotations

import datetime as _dt
import http.client
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from ..config import Config
from ..store import Store
from ._webhook_http import Refused
from ._webhook_http import post
from ._webhook_payloads import SIGNATURE_HEADER
from ._webhook_payloads import payload_for
from ._webhook_payloads import rails_yaml
from ._webhook_payloads import sign

log = logging.getLogger("postal_tracking_plugin.events")

EVENT_NAMES = {"click": "MessageLinkClicked", "open": "MessageLoaded"}
#: Postal's retry schedule: attempt number -> seconds until the next one.
RETRIES = {1: 120, 2: 180, 3: 360, 4: 600, 5: 900}
_NAMESPACE = uuid.UUID("5d0c1c44-7a8e-4f0e-9f5e-3a6f2f7b9c21")
_LOCK_SECONDS = 60.0
#: Finished standalone deliveries are kept this long (for inspection), then deleted.
KEEP_SECONDS = 7 * 86400


# -- queueing --------------------------------------------------------------------


def _utc(ts: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).replace(tzinfo=None)


class WebhookQueue:
    """Queues webhooks for newly recorded events, and (standalone) delivers them."""

    def __init__(self, config: Config, store: Store) -> None:
        self.store = store
        self.settings = config.tracking.webhooks
        self.postal_mode = config.tracking.store in ("mysql", "postal")
        self.urls = tuple(self.settings.urls)
        self._runner: Any = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    # -- after the writer committed -------------------------------------------

    def queue(
        self,
        server_id: int,
        events: Sequence[dict[str, Any]],
        messages: dict[int, Any],
    ) -> int:
        """Queue webhooks for ``events`` (already in the store); returns rows queued."""
        counted = [
            e
            for e in events
            if (e.get("method") or "GET").upper() != "HEAD"
            and e.get("message_id") is not None
            and int(e["message_id"]) in messages
        ]
        link_tokens = self._link_tokens(server_id, [e for e in counted if e["kind"] == "click"])
        items = [
            (
                e,
                EVENT_NAMES[e["kind"]],
                payload_for(e, messages[int(e["message_id"])], link_tokens.get(e.get("link_id"))),
            )
            for e in counted
        ]
        queued = 0
        if items and self.postal_mode:
            queued += self._queue_postal(server_id, items)
        if items and self.urls:
            queued += self._queue_standalone(items)
            self._wake.set()
        self._mark_queued(server_id, [e["event_id"] for e in events])
        return queued

    def _link_tokens(self, server_id: int, clicks: list[dict[str, Any]]) -> dict[Any, str]:
        ids = sorted({int(e["link_id"]) for e in clicks if e.get("link_id") is not None})
        if not ids:
            return {}
        with self.store.messages(server_id, readonly=True) as db:
            rows = db.query(
                f"SELECT id, token FROM links WHERE id IN ({', '.join(['%s'] * len(ids))})", ids
            )
        return {int(r["id"]): r["token"] for r in rows}

    def _queue_postal(self, server_id: int, items: list[tuple[dict[str, Any], str, Any]]) -> int:
        now = time.time()
        rows = []
        with self.store.main() as db:
            hooks: dict[str, list[Any]] = {}
            for name in {name for _e, name, _p in items}:
                hooks[name] = db.query(
                    "SELECT DISTINCT w.id, w.url FROM webhooks w "
                    "LEFT JOIN webhook_events we ON we.webhook_id = w.id "
                    "WHERE w.server_id = %s AND w.enabled = 1 "
                    "AND (w.all_events = 1 OR we.event = %s) ORDER BY w.id",
                    (server_id, name),
                )
            for event, name, payload in items:
                for hook in hooks[name]:
                    request_uuid = str(uuid.uuid5(_NAMESPACE, f"{event['event_id']}:{hook['id']}"))
                    rows.append(
                        (
                            server_id,
                            hook["id"],
                            hook["url"],
                            name,
                            request_uuid,
                            rails_yaml(payload),
                        )
                    )
            if not rows:
                return 0
            existing = _existing(db, "webhook_requests", [r[4] for r in rows])
            fresh = [r for r in rows if r[4] not in existing]
            # retry_after in the past: Postal 3's workers take rows that are
            # "ready", Postal 2's requeue job those whose retry_after has passed.
            created = _utc(now)
            db.executemany(
                "INSERT INTO webhook_requests (server_id, webhook_id, url, event, uuid, payload, "
                "attempts, retry_after, created_at) VALUES (%s, %s, %s, %s, %s, %s, 0, %s, %s)",
                [(*r, _utc(now - 1), created) for r in fresh],
            )
        return len(fresh)

    def _queue_standalone(self, items: list[tuple[dict[str, Any], str, Any]]) -> int:
        now = time.time()
        rows = []
        for event, name, payload in items:
            for url in self.urls:
                request_uuid = str(uuid.uuid5(_NAMESPACE, f"{event['event_id']}:{url}"))
                rows.append((request_uuid, url, name, json.dumps(payload), now, now))
        with self.store.main() as db:
            existing = _existing(db, "tracking_webhook_deliveries", [r[0] for r in rows])
            fresh = [r for r in rows if r[0] not in existing]
            db.executemany(
                "INSERT INTO tracking_webhook_deliveries (uuid, url, event, payload, attempts, "
                "retry_after, status, created_at) VALUES (%s, %s, %s, %s, 0, %s, 'pending', %s)",
                fresh,
            )
        return len(fresh)

    def _mark_queued(self, server_id: int, event_ids: list[str]) -> None:
        if not event_ids:
            return
        with self.store.messages(server_id) as db:
            db.execute(
                "UPDATE tracking_events SET webhooks_queued = 1 WHERE event_id IN "
                f"({', '.join(['%s'] * len(event_ids))})",
                event_ids,
            )

    def catch_up(self) -> int:
        """Queue webhooks of events recorded before a crash cut their queueing short."""
        from ._recorder import load_messages

        total = 0
        for server in self.store.list_servers():
            if not self.store.message_database_exists(server.id):
                continue
            while True:
                try:
                    with self.store.messages(server.id, readonly=True) as db:
                        rows = db.query(
                            "SELECT * FROM tracking_events WHERE webhooks_queued = 0 "
                            "ORDER BY timestamp LIMIT 500"
                        )
                except Exception as exc:  # noqa: BLE001 - e.g. a database Postal made, without our table
                    if self._has_events_table(server.id):
                        raise
                    log.debug("server %s has no tracking_events yet: %s", server.id, exc)
                    break
                if not rows:
                    break
                events = []
                for r in rows:
                    events.append(
                        {
                            "event_id": r["event_id"],
                            "kind": r["kind"],
                            "method": r["method"],
                            "server_id": server.id,
                            "server_token": server.token,
                            "message_id": r["message_id"],
                            "link_id": r["link_id"],
                            "url": None,
                            "ip_address": r["ip_address"],
                            "user_agent": r["user_agent"],
                            "timestamp": float(r["timestamp"]),
                            "bot": bool(r["bot"]),
                            "bot_reason": r["reason"],
                        }
                    )
                urls = self._link_urls(server.id, events)
                for e in events:
                    e["url"] = urls.get(e["link_id"])
                total += self.queue(server.id, events, load_messages(self.store, server.id, events))
        if total:
            log.info("queued %d webhooks of events recorded before a restart", total)
        return total

    def _has_events_table(self, server_id: int) -> bool:
        try:
            with self.store.messages(server_id, readonly=True) as db:
                db.query("SELECT event_id FROM tracking_events LIMIT 1")
        except Exception:  # noqa: BLE001 - missing table (or database)
            return False
        return True

    def _link_urls(self, server_id: int, events: list[dict[str, Any]]) -> dict[Any, str]:
        ids = sorted({int(e["link_id"]) for e in events if e.get("link_id") is not None})
        if not ids:
            return {}
        with self.store.messages(server_id, readonly=True) as db:
            rows = db.query(
                f"SELECT id, url FROM links WHERE id IN ({', '.join(['%s'] * len(ids))})", ids
            )
        return {int(r["id"]): r["url"] for r in rows}

    # -- standalone delivery -------------------------------------------------

    def start(self) -> None:
        if not self.urls or self._runner is not None:
            return
        if not self.settings.secret:
            log.warning(
                "tracking.webhooks.secret is not set: webhooks are sent unsigned; set a secret "
                "so receivers can check the %s header",
                SIGNATURE_HEADER,
            )
        from ._recorder import gevent_patched

        if gevent_patched():
            import gevent

            self._runner = gevent.spawn(self._run)
        else:
            self._runner = threading.Thread(target=self._run, name="webhooks", daemon=True)
            self._runner.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.join(timeout)

    def prune(self, older_than: float = KEEP_SECONDS) -> int:
        """Delete finished deliveries (delivered, failed, refused) older than ``older_than`` s."""
        with self.store.main() as db:
            return db.execute(
                "DELETE FROM tracking_webhook_deliveries WHERE status <> 'pending' "
                "AND created_at < %s",
                (time.time() - older_than,),
            )

    def _run(self) -> None:
        next_prune = 0.0
        while not self._stopping.is_set():
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + 3600
                try:
                    self.prune()
                except Exception as exc:  # noqa: BLE001 - tried again in an hour
                    log.warning("could not prune old webhook deliveries: %s", exc)
            try:
                sent = self.deliver_due()
            except Exception as exc:  # noqa: BLE001 - the store may be down; try again later
                log.warning("webhook delivery paused: %s", exc)
                sent = 0
            if not sent:
                self._wake.wait(1.0)
                self._wake.clear()

    def deliver_due(self, limit: int = 50) -> int:
        """Send the deliveries whose time has come; returns how many were attempted."""
        now = time.time()
        with self.store.main() as db:
            due = db.query(
                "SELECT id FROM tracking_webhook_deliveries WHERE status = 'pending' "
                "AND retry_after <= %s AND (locked_by IS NULL OR locked_at < %s) "
                f"ORDER BY id LIMIT {int(limit)}",
                (now, now - _LOCK_SECONDS),
            )
            claimed = [
                r["id"]
                for r in due
                if db.execute(
                    "UPDATE tracking_webhook_deliveries SET locked_by = %s, locked_at = %s "
                    "WHERE id = %s AND (locked_by IS NULL OR locked_at < %s)",
                    (self._name, now, r["id"], now - _LOCK_SECONDS),
                )
            ]
        for delivery_id in claimed:
            if self._stopping.is_set():
                break
            self._deliver(delivery_id)
        return len(claimed)

    def _deliver(self, delivery_id: int) -> None:
        with self.store.main(readonly=True) as db:
            row = db.one("SELECT * FROM tracking_webhook_deliveries WHERE id = %s", (delivery_id,))
        if row is None:
            return
        body = json.dumps(
            {
                "event": row["event"],
                "timestamp": float(row["created_at"]),
                "payload": json.loads(row["payload"]),
                "uuid": row["uuid"],
            }
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "postal-tracking-plugin webhooks",
            "X-Postal-Tracking-Event": row["event"],
            "X-Postal-Tracking-UUID": row["uuid"],
        }
        if self.settings.secret:
            ts = int(time.time())
            headers[SIGNATURE_HEADER] = f"t={ts},v1={sign(self.settings.secret, ts, body)}"
        status: int | None = None
        try:
            status = post(
                row["url"], body, headers, allow_private=self.settings.allow_private_addresses
            )
            error = None if 200 <= status < 300 else f"received status {status}"
        except Refused as exc:
            log.error("webhook to %s refused: %s", row["url"], exc)
            self._finish(delivery_id, "refused", status, str(exc), int(row["attempts"]) + 1)
            return
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
        attempts = int(row["attempts"]) + 1
        if error is None:
            self._finish(delivery_id, "delivered", status, None, attempts)
            return
        delay = RETRIES.get(attempts)
        if delay is None:
            log.error(
                "webhook %s to %s failed %d times, giving up: %s",
                row["uuid"],
                row["url"],
                attempts,
                error,
            )
            self._finish(delivery_id, "failed", status, error, attempts)
            return
        log.warning("webhook to %s failed (%s); retrying in %d s", row["url"], error, delay)
        with self.store.main() as db:
            db.execute(
                "UPDATE tracking_webhook_deliveries SET attempts = %s, retry_after = %s, "
                "last_status_code = %s, error = %s, locked_by = NULL, locked_at = NULL "
                "WHERE id = %s",
                (attempts, time.time() + delay, status, error, delivery_id),
            )

    def _finish(
        self, delivery_id: int, status: str, code: int | None, error: str | None, attempts: int
    ) -> None:
        with self.store.main() as db:
            db.execute(
                "UPDATE tracking_webhook_deliveries SET status = %s, attempts = %s, "
                "last_status_code = %s, error = %s, delivered_at = %s, locked_by = NULL, "
                "locked_at = NULL WHERE id = %s",
                (
                    status,
                    attempts,
                    code,
                    error,
                    time.time() if status == "delivered" else None,
                    delivery_id,
                ),
            )


def _existing(db: Any, table: str, uuids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(uuids), 500):
        chunk = uuids[start : start + 500]
        rows = db.query(
            f"SELECT uuid FROM {table} WHERE uuid IN ({', '.join(['%s'] * len(chunk))})", chunk
        )
        found.update(str(r["uuid"]) for r in rows)
    return found
