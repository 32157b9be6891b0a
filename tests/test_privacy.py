"""Privacy (issue 14): shortened addresses, retention, erasure of one recipient."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_postal_mode import Postal
from test_postal_mode import _installation
from test_postal_mode import changes
from test_postal_mode import cli as postal_cli
from test_postal_mode import only_ours_or_allowed
from test_postal_mode import write_config as postal_write_config

from postal_tracking_plugin.cli import main
from postal_tracking_plugin.config import Config
from postal_tracking_plugin.config import load_config
from postal_tracking_plugin.events import EventRecorder
from postal_tracking_plugin.events import anonymize_ip
from postal_tracking_plugin.events import forget
from postal_tracking_plugin.events import prune
from postal_tracking_plugin.store import Link
from postal_tracking_plugin.store import Store
from postal_tracking_plugin.store import open_store
from postal_tracking_plugin.store import random_token

FULL_V4 = "203.0.113.77"
FULL_V6 = "2001:db8:abcd:12:34:56:78:9a"


def _config(base: Config, tmp_path: Path, **tracking: Any) -> Config:
    return dataclasses.replace(
        base,
        tracking=dataclasses.replace(base.tracking, data_dir=str(tmp_path / "data"), **tracking),
    )


def _message(store: Store, server: Any, rcpt: str, when: float) -> tuple[int, Any]:
    link = Link(random_token(), f"https://example.com/{random_token()}")
    message_id = store.save_tracked_message(
        server.id,
        {
            "token": random_token(),
            "scope": "outgoing",
            "rcpt_to": rcpt,
            "timestamp": when,
            "tracked_links": 1,
            "parsed": 1,
        },
        [link],
    )
    return message_id, store.find_link(server.id, link.token)


def _record(
    rec: EventRecorder, server: Any, message_id: int, link: Any, ip: str, ts: float
) -> None:
    rec.click(
        server_id=server.id,
        server_token=server.token,
        message_id=message_id,
        link_id=link["id"],
        url=link["url"],
        ip_address=ip,
        user_agent="UA",
        timestamp=ts,
    )
    rec.open(
        server_id=server.id,
        server_token=server.token,
        message_id=message_id,
        message_token=None,
        ip_address=ip,
        user_agent="UA",
        timestamp=ts,
    )


def _count(store: Store, server_id: int, sql: str, params: tuple = ()) -> int:
    with store.messages(server_id, readonly=True) as db:
        return int(db.one(sql, params)["n"])


def test_anonymize_ip_keeps_the_24_and_the_48() -> None:
    assert anonymize_ip(FULL_V4) == "203.0.113.0"
    assert anonymize_ip(FULL_V6) == "2001:db8:abcd::"
    assert anonymize_ip("::ffff:203.0.113.77") == "203.0.113.0"
    assert anonymize_ip("fe80::1%eth0") == "fe80::"
    assert anonymize_ip("not an address") == "unknown"


def test_with_anonymize_ip_no_full_address_reaches_disk_or_the_store(
    store: Store, backend_config: Config, tmp_path: Path
) -> None:
    config = _config(
        backend_config,
        tmp_path,
        privacy=dataclasses.replace(backend_config.tracking.privacy, anonymize_ip=True),
    )
    server = store.add_server("Main")
    message_id, link = _message(store, server, "reader@example.net", time.time())
    rec = EventRecorder(config, store, webhooks=False)
    _record(rec, server, message_id, link, FULL_V4, time.time())
    _record(rec, server, message_id, link, FULL_V6, time.time())
    spooled = b"".join(p.read_bytes() for p in (tmp_path / "data" / "spool").glob("*.jsonl"))
    assert b"203.0.113.0" in spooled  # spooled, shortened
    rec.start()
    assert rec.stop(10)
    for table in ("clicks", "loads", "tracking_events"):
        with store.messages(server.id, readonly=True) as db:
            ips = {r["ip_address"] for r in db.query(f"SELECT ip_address FROM {table}")}
        assert ips == {"203.0.113.0", "2001:db8:abcd::"}, table
    # Nothing under data_dir (spool files, SQLite databases and their WAL) holds the full ones.
    for root, _dirs, files in os.walk(tmp_path):
        for name in files:
            data = Path(root, name).read_bytes()
            assert FULL_V4.encode() not in data, name
            assert FULL_V6.encode() not in data, name


def test_prune_removes_rows_older_than_the_retention_and_orphans(
    store: Store, backend_config: Config, tmp_path: Path
) -> None:
    config = _config(backend_config, tmp_path, retention_days=30)
    server = store.add_server("Main")
    now = time.time()
    old_id, old_link = _message(store, server, "old@example.net", now - 40 * 86400)
    new_id, new_link = _message(store, server, "new@example.net", now - 3600)
    gone_id, gone_link = _message(store, server, "gone@example.net", now - 3600)
    rec = EventRecorder(config, store, webhooks=False)
    _record(rec, server, old_id, old_link, FULL_V4, now - 40 * 86400)
    _record(rec, server, new_id, new_link, FULL_V4, now - 3600)
    _record(rec, server, gone_id, gone_link, FULL_V4, now - 3600)
    rec.start()
    assert rec.stop(10)
    with store.messages(server.id) as db:  # Postal's retention removed this message
        db.execute("DELETE FROM messages WHERE id = %s", (gone_id,))
    spool = tmp_path / "data" / "spool"
    stale, fresh = spool / "rejected-20000101.jsonl", spool / "rejected-29990101.jsonl"
    stale.write_text("{}\n")
    fresh.write_text("{}\n")
    os.utime(stale, (now - 40 * 86400, now - 40 * 86400))

    report = prune(config, store)
    removed = {what: n for _where, what, n in report}
    assert removed["tracking_events"] == 4  # the old click and open, the orphaned two
    assert removed["clicks"] == 1 and removed["loads"] == 1
    assert removed["rejected-*.jsonl files"] == 1
    assert not stale.exists() and fresh.exists()
    assert _count(store, server.id, "SELECT COUNT(*) AS n FROM tracking_events") == 2
    assert (
        _count(
            store, server.id, "SELECT COUNT(*) AS n FROM clicks WHERE message_id = %s", (new_id,)
        )
        == 1
    )
    assert prune(config, store) == []  # nothing left to do


def test_forget_erases_one_recipient_prints_it_and_is_idempotent(
    store: Store, backend_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(backend_config, tmp_path)
    server = store.add_server("Main")
    now = time.time()
    gone_id, gone_link = _message(store, server, "Leaver@Example.net", now - 60)
    kept_id, kept_link = _message(store, server, "stayer@example.net", now - 60)
    rec = EventRecorder(config, store, webhooks=False)
    _record(rec, server, gone_id, gone_link, "198.51.100.1", now - 30)
    _record(rec, server, kept_id, kept_link, "198.51.100.2", now - 30)
    rec.start()
    assert rec.stop(10)

    assert main(["-c", str(backend_config.source), "forget", "leaver@example.net"]) == 0
    out = capsys.readouterr().out
    rows = [re.split(r"\s{2,}", line) for line in out.splitlines()[1:-1]]
    removed = {what: int(n) for _where, what, n in rows}
    assert removed == {"clicks": 1, "loads": 1, "tracking_events": 2, "links": 1, "messages": 1}
    assert out.splitlines()[-1] == "6 rows removed for leaver@example.net."
    for table in ("clicks", "loads", "tracking_events", "links"):
        assert (
            _count(
                store,
                server.id,
                f"SELECT COUNT(*) AS n FROM {table} WHERE message_id = %s",
                (gone_id,),
            )
            == 0
        )
        assert (
            _count(
                store,
                server.id,
                f"SELECT COUNT(*) AS n FROM {table} WHERE message_id = %s",
                (kept_id,),
            )
            >= 1
        )
    assert (
        _count(
            store,
            server.id,
            "SELECT COUNT(*) AS n FROM messages WHERE rcpt_to LIKE %s",
            ("%leaver%",),
        )
        == 0
    )
    assert (
        _count(
            store,
            server.id,
            "SELECT COUNT(*) AS n FROM tracking_events WHERE ip_address = %s",
            ("198.51.100.1",),
        )
        == 0
    )

    # Again: nothing left to remove.
    assert all(n == 0 for _where, _what, n in forget(config, store, "leaver@example.net"))
    assert main(["-c", str(backend_config.source), "forget", "not-an-address"]) == 1


def test_a_running_recorder_prunes_once_a_day(
    store: Store, backend_config: Config, tmp_path: Path
) -> None:
    config = _config(backend_config, tmp_path, retention_days=1)
    server = store.add_server("Main")
    old = time.time() - 3 * 86400
    message_id, link = _message(store, server, "old@example.net", old)
    rec = EventRecorder(config, store, webhooks=False)
    _record(rec, server, message_id, link, FULL_V4, old)
    rec.start()
    assert rec.flush(10)
    assert _count(store, server.id, "SELECT COUNT(*) AS n FROM tracking_events") == 2
    rec._pruner.next_run = 0.0  # the daily run is due
    rec.writer._next_adopt = 0.0  # and the writer's periodic tick comes now
    rec.writer.wake.set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _count(
        store, server.id, "SELECT COUNT(*) AS n FROM tracking_events"
    ):
        time.sleep(0.05)
    assert rec.stop(10)
    assert _count(store, server.id, "SELECT COUNT(*) AS n FROM tracking_events") == 0
    assert rec._pruner.next_run > time.monotonic() + 86000  # next one tomorrow


@pytest.fixture
def postal3() -> Iterator[Postal]:
    """Postal 3's databases, built as test_postal_mode builds them."""
    yield from _installation(3)


def test_in_postal_mode_prune_follows_postals_retention_and_forget_keeps_postals_rows(
    postal3: Postal, tmp_path: Path
) -> None:
    """``tracking.store: postal``: retention defaults to the server's
    ``message_retention_days`` (60 in the fixture); ``forget`` removes only what
    the sidecar or Postal's fast server wrote, and Postal's messages stay."""
    config_path = postal_write_config(tmp_path, postal3.name)
    assert postal_cli(config_path, "init").returncode == 0
    config = load_config(config_path)
    store = open_store(config)
    message_db = f"{postal3.name}-server-1"
    try:
        server = store.list_servers()[0]
        (message,) = postal3.query(message_db, "SELECT id FROM messages")
        (link,) = postal3.query(message_db, "SELECT id, url FROM links")
        rec = EventRecorder(config, store)
        now = time.time()
        for age_days in (70, 30):
            _record(rec, server, message["id"], link, "198.51.100.5", now - age_days * 86400)
        rec.start()
        assert rec.stop(10)
        before = postal3.snapshot()

        removed = {what: n for _where, what, n in prune(config, store)}
        assert removed == {"tracking_events": 2}  # the click and open of 70 days ago
        count = "SELECT COUNT(*) AS n FROM {}"
        assert postal3.query(message_db, count.format("clicks"))[0]["n"] == 2  # Postal's

        report = {what: n for _where, what, n in forget(config, store, "Reader@Example.net")}
        assert report["clicks"] == 2 and report["loads"] == 2 and report["tracking_events"] == 2
        assert report["messages (opened/clicked times)"] == 1
        assert report["webhook_requests (queued webhooks)"] == 4
        assert "messages" not in report and "links" not in report
        for table in ("clicks", "loads", "tracking_events"):
            assert postal3.query(message_db, count.format(table))[0]["n"] == 0
        (row,) = postal3.query(message_db, "SELECT rcpt_to, clicked, loaded FROM messages")
        assert row == {"rcpt_to": "reader@example.net", "clicked": None, "loaded": None}
        assert postal3.query(postal3.name, count.format("webhook_requests"))[0]["n"] == 0
        only_ours_or_allowed(changes(before, postal3.snapshot()), postal3)
        assert all(n == 0 for _w, _what, n in forget(config, store, "reader@example.net"))
    finally:
        store.close()
