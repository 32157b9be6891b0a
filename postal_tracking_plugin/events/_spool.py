"""The local event spool: append-only files that survive ``kill -9`` and are replayed.

Each recording process owns one *stream* in ``<data_dir>/spool/``:

- ``<stream>.<seq>.jsonl`` segments, one JSON event per line, appended with a
  single ``write(2)`` per event. Once that call returns the line is in the
  kernel's page cache, so it survives the death of the process (``kill -9``,
  an OOM kill, a crash). It does not survive a power cut or a kernel crash:
  there is no ``fsync`` per event, by design (it would cost milliseconds per
  click); the last moments before a power cut may be lost.
- ``<stream>.pos``: how far the store has caught up (segment and offset),
  replaced atomically after each batch the writer commits.
- ``<stream>.lock``: held with ``flock`` for as long as the process lives. A
  stream whose lock is free belongs to a process that died; the next recorder
  to start (or its periodic scan) adopts it and replays it from its ``.pos``.
  Events already in the store are skipped by their id, so a replay that
  overlaps what was committed before the crash writes nothing twice.

Segments rotate at ``tracking.events.spool_segment_bytes`` and are deleted once
the store holds everything in them. Memory stays flat while the store is down:
the writer reads events back from the files, not from a queue in RAM.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

from .._recorded_event import RecordedEvent

log = logging.getLogger("postal_tracking_plugin.events")

#: Bytes read from a segment at a time by the writer.
_READ_CHUNK = 1 << 20

Position = tuple[int, int]  # (segment number, byte offset)

#: Bumped in a forked child, so a spool (and the recorder's event ids) inherited
#: across ``fork`` are never shared with the parent: cheaper than ``getpid()``
#: (a system call) per event.
fork_generation = [0]


def _after_fork_in_child() -> None:
    fork_generation[0] += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


class Stream:
    """One process's sequence of spool segments, or an adopted dead one."""

    def __init__(self, directory: Path, name: str, lock_fd: int, *, owned: bool) -> None:
        self.directory = directory
        self.name = name
        self.owned = owned
        self._lock_fd = lock_fd
        self.committed = self._load_position()
        self.read_pos = self.committed
        self.pending_bytes = 0  # appended (or found, if adopted) and not yet committed
        self._append_fd: int | None = None
        self._append_seq = self.committed[0]
        self._append_size = 0
        self._torn_warned: set[int] = set()

    # -- naming ---------------------------------------------------------------

    def segment_path(self, seq: int) -> Path:
        return self.directory / f"{self.name}.{seq:08d}.jsonl"

    @property
    def pos_path(self) -> Path:
        return self.directory / f"{self.name}.pos"

    @property
    def lock_path(self) -> Path:
        return self.directory / f"{self.name}.lock"

    def segments(self) -> list[int]:
        """Segment numbers on disk, oldest first."""
        seqs = []
        prefix = self.name + "."
        for entry in os.scandir(self.directory):
            n = entry.name
            if n.startswith(prefix) and n.endswith(".jsonl"):
                with contextlib.suppress(ValueError):
                    seqs.append(int(n[len(prefix) : -len(".jsonl")]))
        return sorted(seqs)

    def _load_position(self) -> Position:
        try:
            text = self.pos_path.read_text()
            seq, offset = (int(x) for x in text.split())
            return seq, offset
        except (OSError, ValueError):
            seqs = self.segments()
            return (seqs[0] if seqs else 0), 0

    # -- appending (the owning process only) --------------------------------

    def open_for_append(self, segment_bytes: int) -> None:
        self._segment_bytes = segment_bytes
        seqs = self.segments()
        self._append_seq = seqs[-1] if seqs else self.committed[0]
        self._open_segment()

    def _open_segment(self) -> None:
        path = self.segment_path(self._append_seq)
        self._append_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._append_size = os.fstat(self._append_fd).st_size

    def append(self, line: bytes) -> None:
        """Append one complete line (one ``write``); rotate when the segment is full."""
        assert self._append_fd is not None
        if self._append_size >= self._segment_bytes:
            os.close(self._append_fd)
            self._append_seq += 1
            self._open_segment()
        view = memoryview(line)
        while view:
            written = os.write(self._append_fd, view)
            view = view[written:]
        self._append_size += len(line)
        self.pending_bytes += len(line)

    # -- reading back (the writer) -------------------------------------------

    def read(self, max_events: int) -> tuple[list[RecordedEvent], Position, int]:
        """Up to ``max_events`` events after :attr:`read_pos`.

        Returns the events, the position after the last one, and the bytes
        consumed. A line cut short in a segment that is no longer appended to
        (a power cut mid-write) or that is not JSON is logged and skipped.
        """
        events: list[RecordedEvent] = []
        seq, offset = self.read_pos
        consumed = 0
        rechecked = False
        while len(events) < max_events:
            path = self.segment_path(seq)
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read(_READ_CHUNK)
            except FileNotFoundError:
                data = b""
            end = data.rfind(b"\n")
            if end < 0:
                if self.owned and seq == self._append_seq:
                    break
                later = [s for s in self.segments() if s > seq]
                if not later:
                    break
                if not rechecked:
                    # The segment was rotated away: read it once more, for a
                    # line written just before the rotation was seen.
                    rechecked = True
                    continue
                if data and seq not in self._torn_warned:
                    self._torn_warned.add(seq)
                    log.warning("spool %s ends in a torn line (%d bytes): skipped", path, len(data))
                consumed += len(data)
                seq, offset = later[0], 0
                rechecked = False
                continue
            start = 0
            while start <= end and len(events) < max_events:
                stop = data.index(b"\n", start)
                line = data[start:stop]
                start = stop + 1
                try:
                    event = json.loads(line)
                    if not isinstance(event, dict) or "event_id" not in event:
                        raise ValueError("not an event")
                except ValueError:
                    log.error("spool %s: unreadable line at byte %d skipped", path, offset)
                else:
                    # Written by the recorder (or set aside from it): trusted, not validated.
                    events.append(cast(RecordedEvent, event))
            offset += start
            consumed += start
        self.read_pos = (seq, offset)
        return events, (seq, offset), consumed

    def rewind(self) -> None:
        """Read again from the last committed position (after a failed write)."""
        self.read_pos = self.committed

    def commit(self, pos: Position, nbytes: int) -> None:
        """Record that the store holds everything before ``pos``; drop finished segments."""
        tmp = self.pos_path.with_suffix(".pos.tmp")
        tmp.write_text(f"{pos[0]} {pos[1]}\n")
        os.replace(tmp, self.pos_path)
        self.committed = pos
        self.pending_bytes = max(0, self.pending_bytes - nbytes)
        for seq in self.segments():
            if seq < pos[0]:
                with contextlib.suppress(FileNotFoundError):
                    self.segment_path(seq).unlink()

    def exhausted(self) -> bool:
        """An adopted stream whose every event has been committed."""
        if self.owned or self.read_pos != self.committed:
            return False
        seqs = self.segments()
        if not seqs:
            return True
        seq, offset = self.committed
        if seq < seqs[-1]:
            return False
        try:
            return os.path.getsize(self.segment_path(seq)) <= offset or not self._has_line(
                seq, offset
            )
        except FileNotFoundError:
            return True

    def fully_committed(self) -> bool:
        """Whether every line appended so far is committed (this process's stream)."""
        if self.read_pos != self.committed:
            return False
        seq, offset = self.committed
        return seq == self._append_seq and offset >= self._append_size

    def _has_line(self, seq: int, offset: int) -> bool:
        with open(self.segment_path(seq), "rb") as f:
            f.seek(offset)
            return b"\n" in f.read(_READ_CHUNK)

    def remove(self) -> None:
        """Delete every file of this stream and release its lock."""
        for seq in self.segments():
            with contextlib.suppress(FileNotFoundError):
                self.segment_path(seq).unlink()
        for path in (self.pos_path, self.lock_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.close()

    def close(self) -> None:
        if self._append_fd is not None:
            os.close(self._append_fd)
            self._append_fd = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


class Spool:
    """The spool directory: this process's stream plus any dead ones it adopted.

    Appending is thread- and greenlet-safe. Reading back is for one writer.
    """

    def __init__(self, directory: Path, *, segment_bytes: int, max_bytes: int) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.own: Stream | None = None
        self._generation = -1
        self.adopted: list[Stream] = []
        self.appended = 0  # events this process appended
        self.committed_own = 0  # of those, how many the store holds

    def _own_stream(self) -> Stream:
        if self.own is None or self._generation != fork_generation[0]:
            # First use, or a forked child: never share a stream across processes.
            self.directory.mkdir(parents=True, exist_ok=True)
            name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
            fd = _lock(self.directory / f"{name}.lock", create=True)
            assert fd is not None
            self.own = Stream(self.directory, name, fd, owned=True)
            self.own.open_for_append(self.segment_bytes)
            self._generation = fork_generation[0]
            self.appended = self.committed_own = 0
        return self.own

    def open(self) -> None:
        """Create this process's stream (done lazily by :meth:`append` too)."""
        with self._lock:
            self._own_stream()

    def append(self, line: bytes) -> None:
        with self._lock:
            self._own_stream().append(line)
            self.appended += 1

    def backlog_bytes(self) -> int:
        """Spooled bytes the store does not hold yet, over every stream here."""
        total = sum(s.pending_bytes for s in self.adopted)
        if self.own is not None:
            total += self.own.pending_bytes
        return total

    def adopt_orphans(self) -> int:
        """Take over streams whose process died; returns how many were adopted."""
        if not self.directory.exists():
            return 0
        known = {s.name for s in self.adopted}
        if self.own is not None:
            known.add(self.own.name)
        count = 0
        for entry in sorted(os.scandir(self.directory), key=lambda e: e.stat().st_mtime):
            if not entry.name.endswith(".lock"):
                continue
            name = entry.name[: -len(".lock")]
            if name in known:
                continue
            fd = _lock(Path(entry.path), create=False)
            if fd is None:
                continue  # alive: another process is appending to it
            stream = Stream(self.directory, name, fd, owned=False)
            stream.pending_bytes = _stream_backlog(stream)
            self.adopted.append(stream)
            count += 1
            log.info(
                "adopted spool stream %s of a process that stopped: %d bytes to replay",
                name,
                stream.pending_bytes,
            )
        return count

    def streams(self) -> Iterator[Stream]:
        """Adopted streams first (their events are older), then our own."""
        yield from list(self.adopted)
        if self.own is not None:
            yield self.own

    def retire(self, stream: Stream) -> None:
        """Delete an adopted stream whose events are all in the store."""
        stream.remove()
        self.adopted.remove(stream)
        log.info("spool stream %s fully replayed and removed", stream.name)

    def close(self) -> None:
        """Close every stream; this process's is deleted if the store holds all of it."""
        with self._lock:
            own = self.own
            if own is not None and self._generation == fork_generation[0] and own.fully_committed():
                own.remove()
            for stream in self.streams():
                stream.close()
            self.adopted.clear()
            self.own = None


def _lock(path: Path, *, create: bool) -> int | None:
    """An fd holding an exclusive ``flock`` on ``path``, or None if another process holds it."""
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not path.exists():  # retired by another process between scandir and flock
        os.close(fd)
        return None
    return fd


def spool_backlog(directory: Path) -> tuple[int, int]:
    """(streams, bytes) spooled in ``directory`` that the store does not hold yet.

    Read only, for a health page: no lock is taken and nothing is written.
    """
    if not directory.is_dir():
        return 0, 0
    streams = total = 0
    for lock in directory.glob("*.lock"):
        streams += 1
        total += _stream_backlog(Stream(directory, lock.name[: -len(".lock")], -1, owned=False))
    return streams, total


def _stream_backlog(stream: Stream) -> int:
    seq, offset = stream.committed
    total = 0
    for s in stream.segments():
        if s < seq:
            continue
        try:
            size = os.path.getsize(stream.segment_path(s))
        except FileNotFoundError:
            continue
        total += size - (offset if s == seq else 0)
    return max(0, total)
