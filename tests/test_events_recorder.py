"""The event recorder: clicks and opens reach Postal's tables once, with flags, on both backends."""

from __future__ import annotations

import dataclasses
import time
import typing
from pathlib import Path
from typing import Any

import pytest

from postal_tracking_plugin.config import Config
from postal_tracking_plugin.events import EVENT_KEYS
from postal_tracking_plugin.events import EventRecorder
from postal_tracking_plugin.events import HookEvent
from postal_tracking_plugin.hooks import TrackingEvent
from postal_tracking_plugin.store import Link
from postal_tracking_plugin.store import Store
from postal_tracking_plugin.store import random_token

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


def test_the_hook_event_is_the_plugins_tracking_event_with_every_key() -> None:
    """events.HookEvent (what the recorder builds) is hooks.TrackingEvent (what plugins
    read), with exactly EVENT_KEYS, all present."""
    assert TrackingEvent is HookEvent
    assert set(typing.get_type_hints(HookEvent)) == set(EVENT_KEYS)
    assert HookEvent.__required_keys__ == frozenset(EVENT_KEYS)


def _with_data_dir(config: Config, data_dir: Path) -> Config:
    tracking = dataclasses.replace(config.tracking, data_dir=str(data_dir))
    return dataclasses.replace(config, tracking=tracking)


@pytest.fixture
def message(store: Store) -> dict[str, Any]:
    """A server and a message sent an hour ago with three tracked links."""
    server = store.add_server("Main")
    token = random_token()
    links = [Link(token=random_token(), url=f"https://example.com/page/{i}") for i in range(3)]
    message_id = store.save_tracked_message(
        server.id,
        {
            "token": token,
            "scope": "outgoing",
            "rcpt_to": "reader@example.net",
            "mail_from": "news@example.com",
            "subject": "Hello",
            "timestamp": time.time() - 3600,
            "tracked_links": 3,
            "tracked_images": 1,
            "parsed": 1,
        },
        links,
    )
    rows = [store.find_link(server.id, link.token) for link in links]
    return {"server": server, "id": message_id, "token": token, "links": rows}


@pytest.fixture
def config(backend_config: Config, tmp_path: Path) -> Config:
    return _with_data_dir(backend_config, tmp_path / "data")


def _click(rec: EventRecorder, message: dict[str, Any], i: int = 0, **kw: Any) -> str | None:
    link = message["links"][i]
    args = {
        "server_id": message["server"].id,
        "server_token": message["server"].token,
        "message_id": message["id"],
        "link_id": link["id"],
        "url": link["url"],
        "ip_address": "203.0.113.7",
        "user_agent": CHROME,
        **kw,
    }
    return rec.click(**args)


def _rows(store: Store, server_id: int, sql: str) -> list[dict[str, Any]]:
    with store.messages(server_id, readonly=True) as db:
        return db.query(sql)


def test_click_and_open_are_written_with_hook_after_commit(
    store: Store, config: Config, message: dict[str, Any]
) -> None:
    seen: list[dict[str, Any]] = []
    server = message["server"]

    def hook(event: dict[str, Any]) -> None:
        # Called only once the event is in the store.
        rows = _rows(store, server.id, "SELECT event_id FROM tracking_events")
        assert event["event_id"] in {r["event_id"] for r in rows}
        seen.append(event)

    rec = EventRecorder(config, store, hook=hook, webhooks=False)
    rec.start()
    click_id = _click(rec, message)
    open_id = rec.open(
        server_id=server.id,
        server_token=server.token,
        message_id=message["id"],
        message_token=message["token"],
        ip_address="198.51.100.2",
        user_agent=CHROME,
    )
    assert rec.flush(10)
    assert rec.stop(5)

    clicks = _rows(store, server.id, "SELECT * FROM clicks")
    loads = _rows(store, server.id, "SELECT * FROM loads")
    assert [(c["link_id"], c["ip_address"], c["user_agent"]) for c in clicks] == [
        (message["links"][0]["id"], "203.0.113.7", CHROME)
    ]
    assert [(x["ip_address"], x["message_id"]) for x in loads] == [("198.51.100.2", message["id"])]
    msg = _rows(store, server.id, "SELECT clicked, loaded FROM messages")[0]
    assert msg["clicked"] is not None and msg["loaded"] is not None

    by_id = {e["event_id"]: e for e in seen}
    assert set(by_id) == {click_id, open_id}
    assert all(set(e) == set(EVENT_KEYS) for e in seen)
    click = by_id[click_id]
    assert click["kind"] == "click"
    assert click["message_token"] == message["token"]  # filled in from the store
    assert click["url"] == "https://example.com/page/0"
    assert click["bot"] is False and click["bot_reason"] is None
    assert by_id[open_id]["kind"] == "open"


def test_head_probe_is_kept_flagged_but_not_counted(
    store: Store, config: Config, message: dict[str, Any]
) -> None:
    rec = EventRecorder(config, store, webhooks=False)
    rec.start()
    event_id = _click(rec, message, method="HEAD")
    assert rec.stop(10)
    server_id = message["server"].id
    assert _rows(store, server_id, "SELECT * FROM clicks") == []
    assert _rows(store, server_id, "SELECT clicked FROM messages")[0]["clicked"] is None
    (row,) = _rows(store, server_id, "SELECT * FROM tracking_events")
    assert (row["event_id"], row["bot"], row["reason"], row["counted"]) == (
        event_id,
        1,
        "head-request",
        0,
    )


def test_replay_of_spooled_events_writes_nothing_twice(
    store: Store, config: Config, message: dict[str, Any]
) -> None:
    """A process that dies after the store committed but before its spool position
    was saved leaves events that the next recorder replays: they are skipped."""
    first = EventRecorder(config, store, webhooks=False)
    first.start()
    ids = [
        _click(rec=first, message=message, i=i % 3, ip_address=f"192.0.2.{i}") for i in range(20)
    ]
    assert first.flush(10)
    # Simulate the crash: stop the writer without tidying the spool, and put the
    # committed position back to the start, as if it had never been saved.
    first.writer.stopping.set()
    first.writer.wake.set()
    first._runner.join(5)
    own = first.spool.own
    assert own is not None
    own.pos_path.unlink()
    own.close()  # releases the lock, like the death of the process

    second = EventRecorder(config, store, webhooks=False)
    second.start()
    _click(second, message, i=1, ip_address="192.0.2.200")
    assert second.flush(10)
    deadline = time.monotonic() + 10
    while second.spool.adopted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert second.spool.adopted == []  # replayed and removed
    assert second.stop(5)

    clicks = _rows(store, message["server"].id, "SELECT ip_address FROM clicks")
    assert len(clicks) == 21
    events = _rows(store, message["server"].id, "SELECT event_id FROM tracking_events")
    assert {e["event_id"] for e in events} >= set(ids)
    assert list(Path(config.data_dir, "spool").glob("*.jsonl")) == []


def test_many_events_are_batched_in_order(
    store: Store, config: Config, message: dict[str, Any]
) -> None:
    rec = EventRecorder(config, store, webhooks=False)
    rec.start()
    for i in range(1200):
        _click(rec, message, i=i % 3, ip_address=f"10.0.{i // 250}.{i % 250}", timestamp=1e9 + i)
    assert rec.stop(30)
    rows = _rows(store, message["server"].id, "SELECT timestamp FROM clicks ORDER BY id")
    assert [float(r["timestamp"]) for r in rows] == [1e9 + i for i in range(1200)]
    assert rec.writer.written == 1200


def test_a_batch_is_read_in_steps_and_written_whole(
    store: Store, config: Config, message: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer parses the spool 100 lines at a time (yielding between), but
    writes up to ``batch_size`` events in one transaction, in order, once."""
    rec = EventRecorder(config, store, webhooks=False)
    assert rec.writer.batch_size == 500
    for i in range(1234):
        _click(rec, message, i=i % 3, timestamp=1e9 + i)
    sizes: list[int] = []
    real = store.record_events

    def spy(server_id: int, batch: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(batch))
        return real(server_id, batch, *args, **kwargs)

    monkeypatch.setattr(store, "record_events", spy)
    rec.start()
    assert rec.flush(30)
    assert sizes == [500, 500, 234]
    assert rec.stop(10)
    rows = _rows(store, message["server"].id, "SELECT timestamp FROM tracking_events")
    assert sorted(float(r["timestamp"]) for r in rows) == [1e9 + i for i in range(1234)]


def test_click_never_raises_and_spool_bound_drops_loudly(
    store: Store, backend_config: Config, tmp_path: Path, message: dict[str, Any], caplog: Any
) -> None:
    config = _with_data_dir(backend_config, tmp_path / "data")
    events = dataclasses.replace(config.tracking.events, spool_max_bytes=1024 * 1024)
    config = dataclasses.replace(
        config, tracking=dataclasses.replace(config.tracking, events=events)
    )
    rec = EventRecorder(config, store, webhooks=False)  # writer not started: nothing drains
    big = "x" * 4000
    results = [_click(rec, message, user_agent=big) for _ in range(400)]
    accepted = [r for r in results if r]
    assert 0 < len(accepted) < 400
    assert rec.dropped == 400 - len(accepted)
    assert "EVENT SPOOL FULL" in caplog.text
    rec.start()
    assert rec.stop(20)
    rows = _rows(store, message["server"].id, "SELECT COUNT(*) AS n FROM clicks")
    assert rows[0]["n"] == len(accepted)


def test_an_event_that_cannot_be_written_is_set_aside_not_blocking_others(
    store: Store, config: Config, message: dict[str, Any]
) -> None:
    seen: list[str] = []
    rec = EventRecorder(config, store, hook=lambda e: seen.append(e["event_id"]), webhooks=False)
    rec.start()
    # A server whose message database does not exist (deleted under its events).
    bad = rec.click(
        server_id=4242,
        server_token="zzzzzz",
        message_id=1,
        link_id=1,
        url="https://example.com/",
        ip_address="192.0.2.1",
        user_agent=CHROME,
    )
    good = _click(rec, message)
    assert rec.flush(30)
    assert rec.stop(5)
    assert seen == [good]
    clicks = _rows(store, message["server"].id, "SELECT COUNT(*) AS n FROM clicks")
    assert clicks[0]["n"] == 1
    (rejected,) = Path(config.data_dir, "spool").glob("rejected-*.jsonl")
    assert bad in rejected.read_text()
    assert good not in rejected.read_text()


def test_message_times_follow_postal_rules_across_batches(
    store: Store, config: Config, message: dict[str, Any]
) -> None:
    """``clicked`` is the latest click, ``loaded`` the earliest open, whatever the batching
    and whatever order the spools drain in (issue 14, row 5)."""
    server = message["server"]
    rec = EventRecorder(config, store, webhooks=False)

    def opened(ts: float) -> None:
        rec.open(
            server_id=server.id,
            server_token=server.token,
            message_id=message["id"],
            message_token=message["token"],
            ip_address="198.51.100.1",
            user_agent=CHROME,
            timestamp=ts,
        )

    _click(rec, message, 0, timestamp=2_000_000_300.5)
    _click(rec, message, 1, timestamp=2_000_000_100.25, ip_address="198.51.100.9")
    opened(2_000_000_200.0)
    opened(2_000_000_150.0)
    rec.start()  # after the first four: one batch, whenever the writer wakes
    assert rec.flush(10)
    _click(rec, message, 2, timestamp=2_000_000_250.0, ip_address="198.51.100.10")  # older
    opened(2_000_000_100.0)  # written last (a spool drained late), yet the earliest open
    assert rec.stop(10)
    row = _rows(store, server.id, "SELECT clicked, loaded FROM messages")[0]
    assert float(row["clicked"]) == 2_000_000_300.5
    assert float(row["loaded"]) == 2_000_000_100.0


def test_a_message_database_postal_made_gets_our_table_on_first_write(
    store: Store, config: Config, message: dict[str, Any]
) -> None:
    """Postal creates a new server's message database itself, without our tables."""
    server_id = message["server"].id
    with store.messages(server_id) as db:
        db.execute("DROP TABLE tracking_events")
        db.execute("DROP TABLE tracking_migrations")
    rec = EventRecorder(config, store)  # webhooks on where they apply: the catch-up copes too
    rec.start()
    event_id = _click(rec, message)
    assert rec.stop(10)
    (row,) = _rows(store, server_id, "SELECT event_id FROM tracking_events")
    assert row["event_id"] == event_id
    assert len(_rows(store, server_id, "SELECT id FROM clicks")) == 1


def test_numbers_written_into_mysql_statements_are_pymysqls_own_text() -> None:
    """The writer writes ints, floats and NULLs into its MySQL statements itself
    (PyMySQL's escaping per value was most of a batch's cost): the same text."""
    import math
    import random

    import pymysql
    from pymysql.converters import escape_item

    from postal_tracking_plugin.store import _message_ops

    class Capture:
        dialect = "mysql"

        def __init__(self) -> None:
            self.statements: list[str] = []

        def execute(self, sql: str, params: Any = ()) -> int:
            self.statements.append(sql % tuple(escape_item(p, "utf8mb4") for p in params))
            return 0

    rng = random.Random(5)
    values: list[Any] = [0, -1, 2**63, 1.0, -0.0, 1e-7, 1e16, 5e-324, 1.5e300, None, True]
    values += ["it's", "50%", b"\x00"]
    values += [rng.uniform(-2e9, 2e9) for _ in range(500)] + [time.time() for _ in range(99)]
    rows = [tuple(values[i : i + 4]) for i in range(0, len(values) - 3, 4)]
    db = Capture()
    _message_ops._insert_rows(db, "INSERT INTO t (a, b, c, d) VALUES", rows)
    expected = [
        "INSERT INTO t (a, b, c, d) VALUES "
        + ", ".join(
            "(" + ", ".join(escape_item(v, "utf8mb4") for v in row) + ")"
            for row in rows[start : start + _message_ops.ROWS_PER_STATEMENT]
        )
        for start in range(0, len(rows), _message_ops.ROWS_PER_STATEMENT)
    ]
    assert len(db.statements) == len(expected) > 1
    assert db.statements == expected
    for value in values:
        params: list[Any] = []
        text = _message_ops._value(value, params, True)
        assert (text % tuple(escape_item(p, "utf8mb4") for p in params)) == escape_item(
            value, "utf8mb4"
        )
    # Not finite: left to PyMySQL, which refuses them as before.
    db = Capture()
    with pytest.raises(pymysql.err.ProgrammingError):
        _message_ops._insert_rows(db, "INSERT INTO t (a) VALUES", [(1,), (math.inf,)])
    params = []
    assert _message_ops._value(math.nan, params, True) == "%s" and params
