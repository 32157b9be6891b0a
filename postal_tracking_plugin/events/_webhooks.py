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
and ``bot_reason``. Each event's webhooks are queued once across processes and
nodes: by the process holding its claim (:class:`WebhookQueue`); request uuids
derive from the event id, so receivers can dedupe; events recorded but not
queued when a process died are claimed and queued by another once the claim
expires (``tracking_events.webhooks_queued``). No SQL here: the store's named
methods do it (``store/_event_ops.py``).
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

from .._hub import Runner
from .._hub import spawn
from .._recorded_event import RecordedEvent
from .._recorded_event import known_id
from ..config import Config
from ..store import Row
from ..store import Server
from ..store import Store
from ._webhook_http import Refused
from ._webhook_http import post
from ._webhook_payloads import SIGNATURE_HEADER
from ._webhook_payloads import PayloadTooLarge
from ._webhook_payloads import WebhookPayload
from ._webhook_payloads import payload_for
from ._webhook_payloads import postal_payload
from ._webhook_payloads import sign

log = logging.getLogger("postal_tracking_plugin.events")

EVENT_NAMES = {"click": "MessageLinkClicked", "open": "MessageLoaded"}
#: Postal's retry schedule: attempt number -> seconds until the next one.
RETRIES = {1: 120, 2: 180, 3: 360, 4: 600, 5: 900}
_NAMESPACE = uuid.UUID("5d0c1c44-7a8e-4f0e-9f5e-3a6f2f7b9c21")
_LOCK_SECONDS = 60.0
#: A claim on an event's webhooks older than this is taken over by another
#: process's catch-up: its holder died between recording and queueing.
CLAIM_LEASE = 120.0
#: Finished standalone deliveries are kept this long (for inspection), then deleted.
KEEP_SECONDS = 7 * 86400


# -- queueing --------------------------------------------------------------------


def _event_of(server: Server, row: Row) -> RecordedEvent:
    """The event dict of a ``tracking_events`` row (its URL is filled in from ``links``)."""
    return {
        "event_id": row["event_id"],
        "kind": row["kind"],
        "method": row["method"],
        "server_id": server.id,
        "server_token": server.token,
        "message_id": row["message_id"],
        "link_id": row["link_id"],
        "url": None,
        "ip_address": row["ip_address"],
        "user_agent": row["user_agent"],
        "timestamp": float(row["timestamp"]),
        "bot": bool(row["bot"]),
        "bot_reason": row["reason"],
    }


def _utc(ts: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).replace(tzinfo=None)


class WebhookQueue:
    """Queues webhooks for newly recorded events, and (standalone) delivers them.

    Exactly once across processes and nodes: an event's webhooks are queued
    only by the process that holds its claim (``tracking_events.webhooks_claimed_by``).
    The writer claims the events it records in the same INSERT; the catch-up
    claims events left unqueued with one ``UPDATE ... WHERE webhooks_queued = 0``
    that only one process wins, taking over claims older than
    :data:`CLAIM_LEASE` (their process died between recording and queueing).
    """

    def __init__(self, config: Config, store: Store) -> None:
        self.store = store
        self.settings = config.tracking.webhooks
        self.postal_mode = config.tracking.store in ("mysql", "postal")
        self.urls = tuple(self.settings.urls)
        self._runner: Runner | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        #: This process's claims on events and on deliveries.
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # -- after the writer committed -------------------------------------------

    def queue(
        self,
        server_id: int,
        events: Sequence[RecordedEvent],
        messages: dict[int, Row],
    ) -> int:
        """Queue webhooks for ``events`` (in the store, claimed by this process); returns rows queued."""
        counted = [
            e
            for e in events
            if (e.get("method") or "GET").upper() != "HEAD"
            and e.get("message_id") is not None
            and known_id(e["message_id"]) in messages
        ]
        links = self.store.links_by_id(
            server_id,
            [known_id(e["link_id"]) for e in counted if e["kind"] == "click" and e.get("link_id")],
        )
        items: list[tuple[RecordedEvent, str, WebhookPayload]] = []
        for e in counted:
            link = links.get(known_id(e["link_id"])) if e.get("link_id") is not None else None
            token = link["token"] if link is not None else None
            payload = payload_for(e, messages[known_id(e["message_id"])], token)
            items.append((e, EVENT_NAMES[e["kind"]], payload))
        queued = 0
        if items and self.postal_mode:
            queued += self._queue_postal(server_id, items)
        if items and self.urls:
            queued += self._queue_standalone(items)
            self._wake.set()
        self.store.mark_webhooks_queued(server_id, [e["event_id"] for e in events])
        return queued

    def _queue_postal(
        self, server_id: int, items: list[tuple[RecordedEvent, str, WebhookPayload]]
    ) -> int:
        now = time.time()
        names = {name for _e, name, _p in items}
        hooks = {name: self.store.subscribed_webhooks(server_id, name) for name in names}
        # retry_after in the past: Postal 3's workers take rows that are
        # "ready", Postal 2's requeue job those whose retry_after has passed.
        ready, created = _utc(now - 1), _utc(now)
        rows = []
        for event, name, payload in items:
            if not hooks[name]:
                continue
            try:
                text = postal_payload(payload)
            except PayloadTooLarge as exc:
                log.error("webhook of event %s not queued: %s", event["event_id"], exc)
                continue
            for hook in hooks[name]:
                request_uuid = str(uuid.uuid5(_NAMESPACE, f"{event['event_id']}:{hook['id']}"))
                rows.append(
                    (server_id, hook["id"], hook["url"], name, request_uuid, text, ready, created)
                )
        inserted, errors = self.store.queue_webhook_requests(rows)
        for error in errors:
            log.error("skipped (the others are queued): %s", error)
        return inserted

    def _queue_standalone(self, items: list[tuple[RecordedEvent, str, WebhookPayload]]) -> int:
        now = time.time()
        rows = []
        for event, name, payload in items:
            for url in self.urls:
                request_uuid = str(uuid.uuid5(_NAMESPACE, f"{event['event_id']}:{url}"))
                rows.append((request_uuid, url, name, json.dumps(payload), now, now))
        return self.store.queue_webhook_deliveries(rows)

    def catch_up(self) -> int:
        """Queue webhooks of events recorded but not queued (a crash, a failed queueing).

        Events are claimed first, so processes catching up at once (every
        fast-server worker does at start) queue each event once.
        """
        total = 0
        for server in self.store.list_servers():
            if not self.store.message_database_exists(server.id):
                continue
            if not self.store.has_events_table(server.id):
                continue  # a database Postal made, without our table yet
            while True:
                rows = self.store.claim_unqueued_events(server.id, self.name, lease=CLAIM_LEASE)
                if not rows:
                    break
                events = [_event_of(server, r) for r in rows]
                links = self.store.links_by_id(
                    server.id, [e["link_id"] for e in events if e["link_id"] is not None]
                )
                for e in events:
                    link = links.get(int(e["link_id"])) if e["link_id"] is not None else None
                    e["url"] = link["url"] if link is not None else None
                messages = self.store.messages_by_id(
                    server.id, [e["message_id"] for e in events if e["message_id"] is not None]
                )
                total += self.queue(server.id, events, messages)
        if total:
            log.info("queued %d webhooks of events recorded before a restart", total)
        return total

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
        self._runner = spawn(self._run, "webhooks")

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.join(timeout)

    def prune(self, older_than: float = KEEP_SECONDS) -> int:
        """Delete finished deliveries (delivered, failed, refused) older than ``older_than`` s."""
        return self.store.prune_webhook_deliveries(time.time() - older_than)

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
        claimed = self.store.claim_due_deliveries(
            self.name, now=time.time(), lock_seconds=_LOCK_SECONDS, limit=limit
        )
        for delivery_id in claimed:
            if self._stopping.is_set():
                break
            self._deliver(delivery_id)
        return len(claimed)

    def _deliver(self, delivery_id: int) -> None:
        row = self.store.webhook_delivery(delivery_id)
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
        self.store.retry_webhook_delivery(
            delivery_id,
            attempts=attempts,
            retry_after=time.time() + delay,
            code=status,
            error=error,
        )

    def _finish(
        self, delivery_id: int, status: str, code: int | None, error: str | None, attempts: int
    ) -> None:
        self.store.finish_webhook_delivery(
            delivery_id, status=status, code=code, error=error, attempts=attempts
        )
