"""The writer: drains the spool into the store in batches, in order, exactly once.

It wakes every ``batch_interval`` (100 ms) or as soon as ``batch_size`` (500)
events are waiting, reads them back from the spool files, and records each
server's events in one transaction (:meth:`Store.record_events`: multi-row
INSERTs, ``messages.clicked``/``loaded``, our ``tracking_events`` row with the
bot flags). Only then does it move the spool's committed position. If the store
will not write (down, a full disk, read-only, lock timeouts: see
:meth:`Store.write_refused`) it keeps the events where
they are and retries with a back-off, however long it takes, logging the
outage once and the recovery once. A batch that fails for any other reason is
split until the events that fail on their own are found; only those are set
aside, each with its error, in ``spool/rejected-*.jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import ParamSpec
from typing import TypeVar

from .._hub import cooperate
from .._hub import off_hub
from .._recorded_event import RecordedEvent
from ..store import FlagQueries
from ..store import Store
from ._spool import Position
from ._spool import Spool
from ._spool import Stream

log = logging.getLogger("postal_tracking_plugin.events")

#: Events read from the spool at a time, with a yield between the reads.
READ_STEP = 100

Recorded = Callable[[int, list[RecordedEvent]], None]

_P = ParamSpec("_P")
_R = TypeVar("_R")


class Writer:
    """The loop run by the recorder's greenlet or thread."""

    def __init__(
        self,
        spool: Spool,
        store: Store,
        *,
        batch_size: int,
        interval: float,
        flag: Callable[[FlagQueries, list[RecordedEvent]], None] | None,
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
        self.set_aside = 0  # events that failed on their own, in rejected-*.jsonl
        #: Who claims the webhooks of the events this writer records (see WebhookQueue).
        self.claimant: str | None = None
        self._next_adopt = 0.0
        self._schema_checked: set[int] = set()

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

    def _read(self, stream: Stream) -> tuple[list[RecordedEvent], Position, int]:
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

    def _write(self, events: list[RecordedEvent]) -> None:
        """Record each server's events; announce each server's as soon as it is committed.

        If a later server fails, the whole batch is read again, and the servers
        already committed find their events present (skipped, not announced twice).
        """
        by_server: dict[int, list[RecordedEvent]] = {}
        for event in events:
            by_server.setdefault(int(event["server_id"]), []).append(event)
        for server_id, batch in by_server.items():
            self._write_server(server_id, batch)

    def _write_server(self, server_id: int, batch: list[RecordedEvent]) -> None:
        """Write one server's events, splitting the batch around events that fail alone.

        "The store will not write now" (:meth:`Store.write_refused`: lost
        connections, a full disk, a read-only server, lock timeouts, ...)
        propagates: the events stay in the spool and the loop retries with a
        back-off, however long it takes. Any other failure splits the batch in
        halves, each written on its own, down to single events; an event that
        fails alone while the store answers is set aside with its error. A
        batch with one bad event costs about ``2 * log2(batch)`` transactions.
        """
        try:
            if server_id not in self._schema_checked:
                self._ensure_schema(server_id)
            fresh = self._run_blocking(
                self.store.record_events,
                server_id,
                batch,
                self.flag,
                webhooks_pending=self.webhooks_pending,
                claimant=self.claimant,
            )
        except Exception as exc:
            if self.store.write_refused(exc):
                raise
            if len(batch) > 1:
                middle = len(batch) // 2
                self._write_server(server_id, batch[:middle])
                self._write_server(server_id, batch[middle:])
                return
            if not self._store_answers():
                raise  # it failed because the store went away meanwhile
            self._set_aside(server_id, batch[0], exc)
            return
        cooperate()
        self._announce(server_id, fresh)

    def _run_blocking(self, func: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Run a store write; under gevent on SQLite, in gevent's thread pool.

        SQLite calls block the whole process (no socket to yield on), so a
        batch written from the writer greenlet would stall every request for
        its duration; in a native thread (sqlite3 releases the GIL) requests go
        on. PyMySQL yields to the hub by itself and needs none of this.
        """
        if self.store.dialect == "sqlite":
            return off_hub(func, *args, **kwargs)
        return func(*args, **kwargs)

    def _ensure_schema(self, server_id: int) -> None:
        """Add our tables to a server's message database the first time it is written to.

        Postal creates a new server's message database itself, without our
        ``tracking_events``; creating what is missing (never altering) makes it
        usable. A database that does not exist is left alone: its events fail
        alone and are set aside. A failure here is the server's batch's: an
        outage is retried, anything else sets that server's events aside and
        lets the other servers' through.
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

    def _set_aside(self, server_id: int, event: RecordedEvent, exc: BaseException) -> None:
        """Append one event that fails on its own to ``spool/rejected-<date>.jsonl``.

        The line is the event with its error under ``"error"``: moved back into
        the spool it replays as it is (the writer ignores the key).
        """
        path = self.spool.directory / f"rejected-{time.strftime('%Y%m%d')}.jsonl"
        error = f"{type(exc).__name__}: {exc}"
        line = json.dumps({**event, "error": error}, separators=(",", ":"), ensure_ascii=True)
        with open(path, "ab") as f:
            f.write(line.encode("ascii", "backslashreplace") + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self.set_aside += 1
        log.error(
            "event %s of server %s fails on its own while the store answers (%s): set aside "
            "in %s; fix the cause, then move the file into the spool directory as "
            "NAME.00000000.jsonl beside an empty NAME.lock and it is replayed",
            event.get("event_id"),
            server_id,
            error,
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

    def _announce(self, server_id: int, fresh: list[RecordedEvent]) -> None:
        if self.on_recorded is None or not fresh:
            return
        try:
            self.on_recorded(server_id, fresh)
        except Exception:  # a hook must never stop recording
            log.exception("event hook or webhook queueing failed for server %s", server_id)
