"""The writer: drains the spool into the store in batches, in order, exactly once.

It wakes every ``batch_interval`` (100 ms) or as soon as ``batch_size`` (500)
events are waiting, reads them back from the spool files, and records each
server's events in one transaction (:meth:`Store.record_events`: multi-row
INSERTs, ``messages.clicked``/``loaded``, our ``tracking_events`` row with the
bot flags). Only then does it move the spool's committed position. If the store
is down it keeps the events where they are and retries with a back-off, logging
the outage once and the recovery once. A batch that keeps failing while the
store answers (a server deleted under its events, say) is set aside in
``spool/rejected-*.jsonl`` after a few attempts, so one bad event cannot stall
all the others.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from ..store import Store
from ..store._message_ops import cooperate
from ._spool import Spool
from ._spool import Stream

log = logging.getLogger("postal_tracking_plugin.events")

#: Attempts of a batch, while the store answers pings, before it is set aside.
POISON_ATTEMPTS = 5
#: Events read from the spool at a time, with a yield between the reads.
READ_STEP = 100

Recorded = Callable[[int, list[dict[str, Any]]], None]


class Writer:
    """The loop run by the recorder's greenlet or thread."""

    def __init__(
        self,
        spool: Spool,
        store: Store,
        *,
        batch_size: int,
        interval: float,
        flag: Callable[[Any, list[dict[str, Any]]], None] | None,
        on_recorded: Recorded | None,
        webhooks_pending: bool = False,
        periodic: Callable[[], None] | None = None,
    ) -> None:
        self.spool = spool
        self.store = store
        self.batch_size = batch_size
        self.interval = interval
        self.flag = flag
        self.on_recorded = on_recorded
        self.webhooks_pending = webhooks_pending
        self.periodic = periodic
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.progress = threading.Condition()
        self.failing_since: float | None = None
        self.written = 0  # events this writer committed (new or already present)
        self._bad_attempts = 0
        self._next_adopt = 0.0
        self._schema_checked: set[int] = set()
        self._offload: bool | None = None

    def run(self) -> None:
        backoff = self.interval
        while True:
            now = time.monotonic()
            if now >= self._next_adopt:
                self._next_adopt = now + 30.0
                try:
                    self.spool.adopt_orphans()
                except OSError as exc:
                    log.error("cannot scan the spool directory %s: %s", self.spool.directory, exc)
                if self.periodic is not None:
                    self.periodic()
            try:
                did = self._drain_once()
            except Exception as exc:  # noqa: BLE001 - the store is down or a row is bad
                self._failed(exc)
                if self.stopping.is_set():
                    return
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = self.interval
            if self.stopping.is_set():
                return  # stop() flushed first; anything left is replayed at the next start
            if did:
                # More may be waiting: drain on, but let requests run between
                # batches (a greenlet on SQLite would otherwise hold the hub).
                time.sleep(0)
                continue
            self.wake.wait(self.interval)
            self.wake.clear()

    def _drain_once(self) -> bool:
        """Write one batch from the first stream that has events; False when all are idle."""
        for stream in list(self.spool.streams()):
            events, pos, nbytes = self._read(stream)
            if not events:
                if nbytes:
                    stream.commit(pos, nbytes)  # only a torn tail was skipped
                if not stream.owned and stream.exhausted():
                    self.spool.retire(stream)
                continue
            cooperate()
            try:
                self._write(events)
            except Exception:
                stream.rewind()
                raise
            stream.commit(pos, nbytes)
            self._succeeded(stream, len(events))
            return True
        return False

    def _read(self, stream: Stream) -> tuple[list[dict[str, Any]], Any, int]:
        """Up to ``batch_size`` events of ``stream``, read (and parsed) 100 at a time.

        A yield between the reads lets requests run: parsing a whole batch's
        JSON lines at once would hold gevent's hub for milliseconds.
        """
        step = min(self.batch_size, READ_STEP)
        events, pos, nbytes = stream.read(step)
        while len(events) < self.batch_size and events and len(events) % step == 0:
            cooperate()
            more, pos, more_bytes = stream.read(min(step, self.batch_size - len(events)))
            events += more
            nbytes += more_bytes
            if not more:
                break
        return events, pos, nbytes

    def _write(self, events: list[dict[str, Any]]) -> None:
        """Record each server's events; announce each server's as soon as it is committed.

        If a later server fails, the whole batch is read again, and the servers
        already committed find their events present (skipped, not announced twice).
        """
        by_server: dict[int, list[dict[str, Any]]] = {}
        for event in events:
            by_server.setdefault(int(event["server_id"]), []).append(event)
        for server_id, batch in by_server.items():
            if server_id not in self._schema_checked:
                self._ensure_schema(server_id)
            try:
                fresh = self._run_blocking(
                    self.store.record_events,
                    server_id,
                    batch,
                    self.flag,
                    webhooks_pending=self.webhooks_pending,
                )
            except Exception as exc:
                # Only failures while the store answers count towards setting a
                # batch aside; an outage (or the first query after one) does not.
                if not self._store_answers():
                    self._bad_attempts = 0
                    raise
                self._bad_attempts += 1
                if self._bad_attempts >= POISON_ATTEMPTS:
                    self._bad_attempts = 0
                    self._set_aside(server_id, batch, exc)
                    continue
                raise
            cooperate()
            self._announce(server_id, fresh)

    def _run_blocking(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a store write; under gevent on SQLite, in gevent's thread pool.

        SQLite calls block the whole process (no socket to yield on), so a
        batch written from the writer greenlet would stall every request for
        its duration; in a native thread (sqlite3 releases the GIL) requests go
        on. PyMySQL yields to the hub by itself and needs none of this.
        """
        if self._offload is None:
            from ._recorder import gevent_patched

            self._offload = bool(gevent_patched() and self.store.dialect == "sqlite")
        if self._offload:
            import gevent

            return gevent.get_hub().threadpool.apply(func, args, kwargs)
        return func(*args, **kwargs)

    def _ensure_schema(self, server_id: int) -> None:
        """Add our tables to a server's message database the first time it is written to.

        Postal creates a new server's message database itself, without our
        ``tracking_events``; creating what is missing (never altering) makes it
        usable. A database that does not exist is left alone: its events fail
        and are eventually set aside.
        """
        if self.store.message_database_exists(server_id):
            self.store.create_message_schema(server_id)
            self._schema_checked.add(server_id)

    def _store_answers(self) -> bool:
        try:
            self.store.ping()
        except Exception:  # noqa: BLE001 - any failure means "not now"
            return False
        return True

    def _set_aside(self, server_id: int, batch: list[dict[str, Any]], exc: BaseException) -> None:
        path = self.spool.directory / f"rejected-{time.strftime('%Y%m%d')}.jsonl"
        with open(path, "ab") as f:
            for event in batch:
                f.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        log.error(
            "%d events of server %s failed %d times while the store answers (%s): set aside "
            "in %s; fix the cause, then move the file into the spool directory as "
            "NAME.00000000.jsonl beside an empty NAME.lock and it is replayed",
            len(batch),
            server_id,
            POISON_ATTEMPTS,
            exc,
            path,
        )

    def _failed(self, exc: BaseException) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            log.error(
                "cannot write events to the store (%s); they stay in the spool %s and are "
                "written when it is back",
                exc,
                self.spool.directory,
            )
        else:
            log.debug("store still failing: %s", exc)

    def _succeeded(self, stream: Stream, count: int) -> None:
        self._bad_attempts = 0
        if self.failing_since is not None:
            log.warning(
                "the store is back after %.1f s; writing the spooled events",
                time.monotonic() - self.failing_since,
            )
            self.failing_since = None
        with self.progress:
            if stream.owned:
                self.spool.committed_own += count
            self.written += count
            self.progress.notify_all()

    def _announce(self, server_id: int, fresh: list[dict[str, Any]]) -> None:
        if self.on_recorded is None or not fresh:
            return
        try:
            self.on_recorded(server_id, fresh)
        except Exception:  # noqa: BLE001 - a hook must never stop recording
            log.exception("event hook or webhook queueing failed for server %s", server_id)
