"""The event recorder the fast server hands every counted click and open to.

``click()`` and ``open()`` append one line to this process's spool and return:
no store round trip, no lock held across I/O other than one ``write(2)``, no
exception. A writer (a greenlet under gevent's monkey-patching, a thread
otherwise) drains the spool into the store in batches and then, for each event
newly in the store, calls the tracking-event hook and queues webhooks.

Create one recorder per process, after any ``fork``: each process appends to
a spool stream of its own (a forked child that inherits a recorder opens a
new stream on its first event).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import cast

from .._hub import Runner
from .._hub import cooperate
from .._hub import spawn
from .._recorded_event import HookEvent
from .._recorded_event import RecordedEvent
from .._recorded_event import known_id
from ..config import Config
from ..store import Store
from ._bots import Flagger
from ._privacy import Pruner
from ._privacy import anonymize_ip
from ._spool import Spool
from ._spool import fork_generation
from ._webhooks import WebhookQueue
from ._writer import Writer

log = logging.getLogger("postal_tracking_plugin.events")


#: The tracking-event hook: called with each recorded event (``postal_tracking_plugin.hooks``
#: passes it on to the plugins' ``postal_tracking_event``).
TrackingHook = Callable[[HookEvent], None]

#: The keys of the event dict passed to the tracking-event hook.
EVENT_KEYS = (
    "kind",
    "server_id",
    "server_token",
    "message_id",
    "message_token",
    "link_id",
    "url",
    "ip_address",
    "user_agent",
    "timestamp",
    "bot",
    "bot_reason",
    "event_id",
)

_WARN_FRACTION = 0.8
#: Events queued for webhooks, and messages read, at a time.
_ANNOUNCE_CHUNK = 100
_LOG_EVERY = 10.0


class EventRecorder:
    """Durable, batched recording of clicks and opens.

    :param config: the configuration (``tracking.data_dir``, ``tracking.events``,
        ``tracking.webhooks``, ``tracking.store``, ``tracking.privacy``,
        ``tracking.retention_days``).
    :param store: the store events are written to.
    :param hook: called as ``hook(event)`` once per event, after the event is
        durably in the store, with the keys in :data:`EVENT_KEYS`. It runs in
        the writer, never on the request path; its exceptions are logged.
    :param webhooks: queue webhooks for recorded events (Postal's
        ``webhook_requests`` in MySQL mode, ``tracking.webhooks.urls`` otherwise).
        Default: on when either applies.

    Only counted requests should be passed (``GET``): Postal counts no ``HEAD``.
    A caller may still pass ``method="HEAD"``: such an event is kept in
    ``tracking_events`` with ``bot`` true and reason ``head-request``, goes to
    the hook, but gets no ``clicks``/``loads`` row and no webhook.
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        hook: TrackingHook | None = None,
        *,
        webhooks: bool | None = None,
    ) -> None:
        ev = config.tracking.events
        self.config = config
        self.store = store
        self.hook = hook
        self.spool = Spool(
            config.data_dir / "spool",
            segment_bytes=ev.spool_segment_bytes,
            max_bytes=ev.spool_max_bytes,
        )
        self._flagger = Flagger.from_config(config)
        self._webhooks: WebhookQueue | None = None
        if webhooks is None:
            webhooks = bool(config.tracking.webhooks.urls) or config.tracking.store in (
                "mysql",
                "postal",
            )
        if webhooks:
            self._webhooks = WebhookQueue(config, store)
        self._anonymize = config.tracking.privacy.anonymize_ip
        self._pruner = Pruner(config, store, self.spool)
        self.writer = Writer(
            self.spool,
            store,
            batch_size=ev.batch_size,
            interval=ev.batch_interval,
            flag=self._flagger,
            on_recorded=self._recorded,
            webhooks_pending=self._webhooks is not None,
            periodic=self._periodic,
        )
        if self._webhooks is not None:
            self.writer.claimant = self._webhooks.name
        self._webhooks_behind = self._webhooks is not None  # catch up once at start
        self._runner: Runner | None = None
        self._dropped = 0
        self._last_full_log = 0.0
        self._last_warn_log = 0.0
        self._queued = 0  # appended since the writer was last woken for a full batch
        self._id_generation = -1
        self._id_prefix = ""
        self._id_counter = itertools.count(1)

    # -- life cycle -----------------------------------------------------------

    def start(self) -> None:
        """Start the writer (and adopt spool streams of processes that died)."""
        if self._runner is not None:
            return
        self.spool.open()
        self.spool.adopt_orphans()
        if self._webhooks is not None:
            self._webhooks.start()
        self._runner = spawn(self._run, "event-writer")

    def _run(self) -> None:
        self.writer.run()

    def _periodic(self) -> None:
        """Every 30 s in the writer: prune once a day; queue webhooks an earlier failure left."""
        self._pruner.maybe_run()
        if self._webhooks is None or not self._webhooks_behind:
            return
        try:
            self._webhooks.catch_up()
        except Exception as exc:  # noqa: BLE001 - tried again at the next tick
            log.warning("could not queue webhooks left behind (will retry): %s", exc)
        else:
            self._webhooks_behind = False

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every event appended so far is in the store; False on timeout."""
        target = self.spool.appended
        deadline = time.monotonic() + timeout
        self.writer.wake.set()
        with self.writer.progress:
            while self.spool.committed_own < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.writer.progress.wait(min(left, 0.05))
                self.writer.wake.set()
        return True

    def stop(self, timeout: float = 5.0) -> bool:
        """Flush (bounded by ``timeout``) and stop the writer; False if events were left.

        Events left are not lost: they stay in the spool and the next recorder
        to start replays them.
        """
        flushed = self.flush(timeout) if self._runner is not None else False
        self.writer.stopping.set()
        self.writer.wake.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.join(timeout)
        if self._webhooks is not None:
            self._webhooks.stop(timeout)
        self.spool.close()
        return flushed

    # -- the request path -------------------------------------------------------

    def click(
        self,
        *,
        server_id: int,
        server_token: str,
        message_id: int | None,
        link_id: int | None,
        url: str | None,
        ip_address: str | None,
        user_agent: str | None,
        method: str = "GET",
        timestamp: float | None = None,
    ) -> str | None:
        """Spool a click. Returns the event id, or None if it could not be spooled."""
        try:
            event_id = self._next_id()
            if self._anonymize and ip_address:
                ip_address = anonymize_ip(ip_address)
            if user_agent and not user_agent.isascii():
                user_agent = decode_agent(user_agent)
            line = (
                f'{{"event_id":"{event_id}","kind":"click","method":{_str(method)},'
                f'"server_id":{int(server_id)},"server_token":{_str(server_token)},'
                f'"message_id":{_int(message_id)},"message_token":null,'
                f'"link_id":{_int(link_id)},"url":{_str(url)},'
                f'"ip_address":{_str(ip_address)},"user_agent":{_str(user_agent)},'
                f'"timestamp":{_time(timestamp)}}}\n'
            )
        except Exception:  # the click path must never fail on recording
            log.exception("could not spool a click event")
            return None
        return self._append(line.encode("ascii"), event_id)

    def open(
        self,
        *,
        server_id: int,
        server_token: str,
        message_id: int | None,
        message_token: str | None,
        ip_address: str | None,
        user_agent: str | None,
        method: str = "GET",
        timestamp: float | None = None,
    ) -> str | None:
        """Spool an open. Returns the event id, or None if it could not be spooled."""
        try:
            event_id = self._next_id()
            if self._anonymize and ip_address:
                ip_address = anonymize_ip(ip_address)
            if user_agent and not user_agent.isascii():
                user_agent = decode_agent(user_agent)
            line = (
                f'{{"event_id":"{event_id}","kind":"open","method":{_str(method)},'
                f'"server_id":{int(server_id)},"server_token":{_str(server_token)},'
                f'"message_id":{_int(message_id)},"message_token":{_str(message_token)},'
                f'"link_id":null,"url":null,'
                f'"ip_address":{_str(ip_address)},"user_agent":{_str(user_agent)},'
                f'"timestamp":{_time(timestamp)}}}\n'
            )
        except Exception:  # the pixel must never fail on recording
            log.exception("could not spool an open event")
            return None
        return self._append(line.encode("ascii"), event_id)

    def _next_id(self) -> str:
        """A unique event id: a random 128-bit prefix per process, then a counter.

        Cheaper than a UUID per event on the click path, and as unique: the
        prefix is drawn again in a forked child.
        """
        generation = fork_generation[0]
        if generation != self._id_generation:
            self._id_generation = generation
            self._id_prefix = uuid.uuid4().hex
            self._id_counter = itertools.count(1)
        return f"{self._id_prefix}-{next(self._id_counter):x}"

    def _append(self, line: bytes, event_id: str) -> str | None:
        try:
            spool = self.spool
            backlog = spool.backlog_bytes()
            limit = spool.max_bytes
            if backlog + len(line) > limit:
                self._refuse(backlog, limit)
                return None
            if backlog > limit * _WARN_FRACTION:
                self._warn_full(backlog, limit)
            spool.append(line)
        except Exception:  # the click path must never fail on recording
            log.exception("could not spool an event")
            return None
        self._queued += 1
        if self._queued >= self.writer.batch_size:
            self._queued = 0
            self.writer.wake.set()
        return event_id

    def _refuse(self, backlog: int, limit: int) -> None:
        self._dropped += 1
        now = time.monotonic()
        if now - self._last_full_log > _LOG_EVERY:
            self._last_full_log = now
            log.error(
                "EVENT SPOOL FULL (%d bytes, tracking.events.spool_max_bytes = %d): "
                "%d events not recorded so far; the store has been unreachable for "
                "too long, bring it back or raise the bound",
                backlog,
                limit,
                self._dropped,
            )

    def _warn_full(self, backlog: int, limit: int) -> None:
        now = time.monotonic()
        if now - self._last_warn_log > _LOG_EVERY:
            self._last_warn_log = now
            log.warning(
                "event spool is %d%% full (%d of %d bytes): the store is not keeping up "
                "or is down; events will be dropped at the bound",
                backlog * 100 // limit,
                backlog,
                limit,
            )

    # -- after the store ------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Events refused because the spool was full."""
        return self._dropped

    def _recorded(self, server_id: int, events: list[RecordedEvent]) -> None:
        if self.hook is None and self._webhooks is None:
            return
        messages = self.store.messages_by_id(
            server_id,
            [known_id(e["message_id"]) for e in events if e.get("message_id") is not None],
        )
        for event in events:
            message = messages.get(event.get("message_id") or -1)
            if event.get("message_token") is None and message is not None:
                event["message_token"] = message.get("token")
        if self._webhooks is not None:
            # A hundred events at a time, with a yield between: building the
            # payloads of a whole batch would hold gevent's hub for milliseconds.
            try:
                for start in range(0, len(events), _ANNOUNCE_CHUNK):
                    if start:
                        cooperate()
                    self._webhooks.queue(
                        server_id, events[start : start + _ANNOUNCE_CHUNK], messages
                    )
            except Exception as exc:  # noqa: BLE001 - queued later by the catch-up
                self._webhooks_behind = True
                log.warning("could not queue webhooks now (%s); they are queued later", exc)
        if self.hook is not None:
            for event in events:
                # EVENT_KEYS are HookEvent's keys; .get() gives None for one the dict lacks.
                public = cast(HookEvent, {key: event.get(key) for key in EVENT_KEYS})
                public["bot"] = bool(public["bot"])
                try:
                    self.hook(public)
                except Exception:  # a plugin must not stop recording
                    log.exception("tracking-event hook failed for event %s", event["event_id"])


_quote = json.encoder.encode_basestring_ascii


def _str(value: str | None) -> str:
    """A JSON string (ASCII, so the line is one ``write`` of bytes), or null."""
    return "null" if value is None else str(_quote(value))


def _int(value: int | None) -> str:
    return "null" if value is None else str(int(value))


def _time(value: float | None) -> str:
    return repr(time.time() if value is None else float(value))


def decode_agent(value: str) -> str:
    """A User-Agent header as the client sent it: UTF-8 where it decodes, else latin-1.

    WSGI hands headers over as latin-1 (PEP 3333), so a UTF-8 agent arrives as
    ``cafÃ©``; its bytes are read again as UTF-8. Text that is not latin-1
    (already decoded by a caller) or not UTF-8 is kept as it is.
    """
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value
