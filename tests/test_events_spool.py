"""The event spool: rotation, torn lines after a power cut, and adoption of dead streams."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from postal_tracking_plugin.config import Config
from postal_tracking_plugin.events import EventRecorder
from postal_tracking_plugin.events._spool import Spool
from postal_tracking_plugin.store import Link
from postal_tracking_plugin.store import Store
from postal_tracking_plugin.store import random_token


def _event(i: int) -> bytes:
    return json.dumps({"event_id": f"e{i}", "kind": "click", "n": i}).encode() + b"\n"


def test_segments_rotate_and_are_deleted_once_committed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", segment_bytes=4096, max_bytes=10**9)
    for i in range(300):
        spool.append(_event(i))
    own = spool.own
    assert own is not None
    assert len(own.segments()) > 3  # rotated
    seen = []
    while True:
        events, pos, nbytes = own.read(64)
        if not events:
            break
        seen += [e["n"] for e in events]
        own.commit(pos, nbytes)
    assert seen == list(range(300))  # all, in order, across segments
    assert len(own.segments()) == 1  # only the segment being appended to is left
    assert own.pending_bytes == 0
    spool.close()
    assert list((tmp_path / "spool").iterdir()) == []  # fully committed: tidied away


def test_a_torn_last_line_is_skipped_and_the_rest_replayed(tmp_path: Path) -> None:
    """A power cut can leave half a line at the end of a segment; nothing else is lost."""
    directory = tmp_path / "spool"
    directory.mkdir()
    whole = b"".join(_event(i) for i in range(5))
    (directory / "dead-1.00000000.jsonl").write_bytes(whole + _event(5)[:17])
    (directory / "dead-1.00000001.jsonl").write_bytes(_event(6))
    (directory / "dead-1.lock").touch()
    spool = Spool(directory, segment_bytes=1 << 20, max_bytes=10**9)
    assert spool.adopt_orphans() == 1
    (stream,) = spool.adopted
    events, pos, nbytes = stream.read(100)
    assert [e["n"] for e in events] == [0, 1, 2, 3, 4, 6]
    stream.commit(pos, nbytes)
    assert stream.exhausted()
    spool.retire(stream)
    assert list(directory.iterdir()) == []


def test_a_live_stream_is_not_adopted(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    first = Spool(directory, segment_bytes=1 << 20, max_bytes=10**9)
    first.append(_event(1))
    second = Spool(directory, segment_bytes=1 << 20, max_bytes=10**9)
    assert second.adopt_orphans() == 0  # its process (here: this one) holds the lock
    first.own.close()  # type: ignore[union-attr]  # the lock is released, as by death
    assert second.adopt_orphans() == 1


@pytest.fixture
def message(store: Store) -> dict[str, Any]:
    server = store.add_server("Main")
    link = Link(random_token(), "https://example.com/")
    message_id = store.save_tracked_message(
        server.id,
        {"token": random_token(), "scope": "outgoing", "timestamp": time.time() - 60},
        [link],
    )
    return {"server": server, "id": message_id, "link": store.find_link(server.id, link.token)}


def test_a_forked_child_appends_to_its_own_stream(
    store: Store, backend_config: Config, tmp_path: Path, message: dict[str, Any]
) -> None:
    """The fast server forks its workers: events of parent and child must not interleave
    in one file nor be lost when the child dies."""
    config = dataclasses.replace(
        backend_config,
        tracking=dataclasses.replace(backend_config.tracking, data_dir=str(tmp_path / "data")),
    )
    rec = EventRecorder(config, store, webhooks=False)
    kw = {
        "server_id": message["server"].id,
        "server_token": message["server"].token,
        "message_id": message["id"],
        "link_id": message["link"]["id"],
        "url": message["link"]["url"],
        "ip_address": "203.0.113.3",
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    }
    parent_id = rec.click(**kw)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: append one event and die without tidying up
        try:
            child_id = rec.click(**kw) or ""
            os.write(write, child_id.encode())
        finally:
            os._exit(0)
    os.close(write)
    child_id = os.read(read, 200).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child_id and child_id != parent_id
    assert child_id.split("-")[0] != (parent_id or "").split("-")[0]  # a new id prefix
    rec.start()  # adopts the child's stream
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with store.messages(message["server"].id, readonly=True) as db:
            ids = {r["event_id"] for r in db.query("SELECT event_id FROM tracking_events")}
        if {parent_id, child_id} <= ids:
            break
        time.sleep(0.05)
    assert rec.stop(10)
    assert {parent_id, child_id} <= ids
    with store.messages(message["server"].id, readonly=True) as db:
        assert db.one("SELECT COUNT(*) AS n FROM clicks")["n"] == 2


def test_recorder_under_gevent_uses_a_greenlet(tmp_path: Path) -> None:
    """In a monkey-patched process (the fast server) the writer is a greenlet, not a thread."""
    script = textwrap.dedent(
        f"""
        from gevent import monkey
        monkey.patch_all()
        import threading, time
        import gevent
        from postal_tracking_plugin.config import parse_config
        from postal_tracking_plugin.store import open_store, random_token, Link
        from postal_tracking_plugin.events import EventRecorder
        config = parse_config("tracking:\\n  data_dir: {tmp_path / "data"}\\n")
        store = open_store(config)
        store.create_schema()
        server = store.add_server("Main")
        link = Link(random_token(), "https://example.com/")
        mid = store.save_tracked_message(server.id, {{"token": random_token(),
            "scope": "outgoing", "timestamp": time.time() - 60}}, [link])
        row = store.find_link(server.id, link.token)
        rec = EventRecorder(config, store, webhooks=False)
        rec.start()
        print("greenlet" if isinstance(rec._runner, gevent.Greenlet) else "thread")
        rec.click(server_id=server.id, server_token=server.token, message_id=mid,
                  link_id=row["id"], url=row["url"], ip_address="203.0.113.1", user_agent="x/1")
        print("flushed" if rec.stop(10) else "left")
        with store.messages(server.id) as db:
            print(db.one("SELECT COUNT(*) AS n FROM clicks")["n"])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["greenlet", "flushed", "1"]
