"""Exactly once under partial failures (issue 14): bad events, webhook claims, pooled connections.

The store-wide outage under load is in test_faults.py; these are the pieces,
each against the real backends.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import sqlite3
import time
from pathlib import Path
from typing import Any

import pymysql
import pytest
import yaml

from postal_tracking_plugin.config import Config
from postal_tracking_plugin.errors import StoreError
from postal_tracking_plugin.events import EventRecorder
from postal_tracking_plugin.events._webhook_payloads import POSTAL_PAYLOAD_BYTES
from postal_tracking_plugin.events._webhooks import WebhookQueue
from postal_tracking_plugin.store import Link
from postal_tracking_plugin.store import Store
from postal_tracking_plugin.store import open_store
from postal_tracking_plugin.store import random_token
from postal_tracking_plugin.store._event_ops import write_refused


def _config(base: Config, tmp_path: Path, **tracking: Any) -> Config:
    return dataclasses.replace(
        base,
        tracking=dataclasses.replace(base.tracking, data_dir=str(tmp_path / "data"), **tracking),
    )


def _sent(store: Store, name: str = "Main", links: int = 1, url: str = "https://example.com/a"):
    server = store.add_server(name)
    made = [Link(random_token(), f"{url}?n={i}") for i in range(links)]
    message_id = store.save_tracked_message(
        server.id,
        {
            "token": random_token(),
            "scope": "outgoing",
            "rcpt_to": "reader@example.net",
            "timestamp": time.time() - 3600,
            "tracked_links": links,
            "parsed": 1,
        },
        made,
    )
    found = [store.find_link(server.id, link.token) for link in made]
    return server, message_id, found


def _click(rec: EventRecorder, server: Any, message_id: int, link: Any, agent: str, **kw: Any):
    return rec.click(
        server_id=server.id,
        server_token=server.token,
        message_id=message_id,
        link_id=link["id"],
        url=link["url"],
        ip_address=kw.pop("ip_address", "198.51.100.7"),
        user_agent=agent,
        **kw,
    )


def _agents(store: Store, server_id: int) -> list[str | None]:
    with store.messages(server_id, readonly=True) as db:
        return [r["user_agent"] for r in db.query("SELECT user_agent FROM clicks ORDER BY id")]


def _rejected(tmp_path: Path) -> list[dict[str, Any]]:
    lines = []
    for path in sorted((tmp_path / "data" / "spool").glob("rejected-*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


# -- outage versus bad event ------------------------------------------------------


def test_write_refused_tells_an_outage_from_a_bad_event() -> None:
    def wrapped(exc: BaseException) -> StoreError:
        try:
            raise exc
        except BaseException:  # noqa: BLE001 - the store wraps driver errors like this
            try:
                raise StoreError("MySQL database `x`: failed") from None
            except StoreError as outer:
                return outer

    for code in (1114, 1021, 1290, 1205, 1213, 1047, 1142, 2003, 2013):
        assert write_refused(wrapped(pymysql.err.OperationalError(code, "refused")))
    for code in (1406, 1062, 1146, 1049, 1366):
        assert not write_refused(wrapped(pymysql.err.OperationalError(code, "bad")))
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = 5  # type: ignore[attr-defined]
    assert write_refused(wrapped(locked))
    missing = sqlite3.OperationalError("no such table: tracking_events")
    missing.sqlite_errorcode = 1  # type: ignore[attr-defined]
    assert not write_refused(wrapped(missing))
    assert not write_refused(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates"))
    assert not write_refused(StoreError("database x does not exist"))


def test_a_poisoned_event_among_good_ones_is_the_only_one_set_aside(
    store: Store, backend_config: Config, tmp_path: Path
) -> None:
    server, message_id, (link,) = _sent(store)
    rec = EventRecorder(_config(backend_config, tmp_path), store, webhooks=False)
    agents = [f"good/{i}" for i in range(9)]
    for agent in agents[:4]:
        _click(rec, server, message_id, link, agent)
    # A lone surrogate: spooled fine (JSON escapes it), but no database can encode it.
    poisoned = _click(rec, server, message_id, link, "bad/\ud800")
    for agent in agents[4:]:
        _click(rec, server, message_id, link, agent)
    rec.start()
    assert rec.flush(20)
    assert rec.stop()
    assert _agents(store, server.id) == agents
    rejected = _rejected(tmp_path)
    assert [r["event_id"] for r in rejected] == [poisoned]
    assert "UnicodeEncodeError" in rejected[0]["error"]
    assert rec.writer.set_aside == 1


def test_a_server_whose_table_cannot_be_made_does_not_stall_the_others(
    store: Store, backend_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, good_message, (good_link,) = _sent(store, "Good")
    broken, broken_message, (broken_link,) = _sent(store, "Broken")
    # Postal made this server's database without our table, and creating it fails.
    with store.messages(broken.id) as db:
        db.execute("DROP TABLE tracking_events")
    real = store.create_message_schema

    def create(server_id: int) -> None:
        if server_id == broken.id:
            raise StoreError(f"cannot create tracking_events for server {server_id}: no space left")
        real(server_id)

    monkeypatch.setattr(store, "create_message_schema", create)
    rec = EventRecorder(_config(backend_config, tmp_path), store, webhooks=False)
    for i in range(3):
        _click(rec, broken, broken_message, broken_link, f"broken/{i}")
        _click(rec, good, good_message, good_link, f"good/{i}")
    rec.start()
    assert rec.flush(20)  # today's code retried the broken server forever
    assert rec.stop()
    assert _agents(store, good.id) == ["good/0", "good/1", "good/2"]
    rejected = _rejected(tmp_path)
    assert sorted(r["user_agent"] for r in rejected) == ["broken/0", "broken/1", "broken/2"]
    assert all(r["error"] for r in rejected)


# -- webhooks exactly once ------------------------------------------------------------


def _subscribe(store: Store, server_id: int, url: str = "https://hooks.example.com/all") -> int:
    with store.main() as db:
        return db.insert(
            "INSERT INTO webhooks (server_id, uuid, name, url, all_events, enabled, sign) "
            "VALUES (%s, %s, 'all', %s, 1, 1, 1)",
            (server_id, random_token(), url),
        )


def _unqueued_events(store: Store, server: Any, message_id: int, link: Any, n: int) -> None:
    """``n`` clicks recorded, their webhooks not queued (as after a crash)."""
    now = time.time()
    events = [
        {
            "event_id": f"crash-{i}",
            "kind": "click",
            "method": "GET",
            "server_id": server.id,
            "message_id": message_id,
            "link_id": link["id"],
            "ip_address": f"198.51.{i // 250}.{i % 250}",
            "user_agent": f"agent/{i}",
            "timestamp": now - 600 + i * 0.001,
        }
        for i in range(n)
    ]
    store.record_events(server.id, events, webhooks_pending=True)


def _catch_up(config: Config, start: Any, out: Any) -> None:
    store = open_store(config)
    start.wait(30)
    try:
        out.put(WebhookQueue(config, store).catch_up())
    except Exception as exc:  # noqa: BLE001 - reported to the test
        out.put(repr(exc))
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)  # Postal's queue is MySQL only
def test_two_processes_catching_up_400_events_queue_each_webhook_once(
    store: Store, backend_config: Config, tmp_path: Path
) -> None:
    server, message_id, (link,) = _sent(store)
    _subscribe(store, server.id)
    _unqueued_events(store, server, message_id, link, 400)
    config = _config(backend_config, tmp_path)
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_catch_up, args=(config, start, out)) for _ in range(2)]
    for w in workers:
        w.start()
    start.set()
    results = [out.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(30)
    with store.main(readonly=True) as db:
        rows = db.query("SELECT uuid FROM webhook_requests")
    print(f"\ntwo catch-ups: queued {results}; webhook_requests rows {len(rows)}")
    assert all(isinstance(r, int) for r in results), results
    assert sum(results) == 400
    assert len(rows) == 400
    assert len({r["uuid"] for r in rows}) == 400
    with store.messages(server.id, readonly=True) as db:
        assert (
            db.one("SELECT COUNT(*) AS n FROM tracking_events WHERE webhooks_queued = 0")["n"] == 0
        )


def test_standalone_catch_ups_at_once_make_one_delivery_per_event(
    store: Store, backend_config: Config, tmp_path: Path
) -> None:
    server, message_id, (link,) = _sent(store)
    _unqueued_events(store, server, message_id, link, 50)
    config = _config(backend_config, tmp_path)
    config = dataclasses.replace(
        config,
        tracking=dataclasses.replace(
            config.tracking,
            webhooks=dataclasses.replace(config.tracking.webhooks, urls=("https://h.example/a",)),
        ),
    )
    first, second = WebhookQueue(config, store), WebhookQueue(config, store)
    # The first claims and dies before queueing: its claim is fresh, the second waits.
    claimed = store.claim_unqueued_events(server.id, first.name, lease=120)
    assert len(claimed) == 50
    assert second.catch_up() == 0
    # Once the lease is over, the second takes over; the first, back, finds nothing.
    with store.messages(server.id) as db:
        db.execute("UPDATE tracking_events SET webhooks_claimed_at = webhooks_claimed_at - 600")
    assert second.catch_up() == 50
    assert first.catch_up() == 0
    with store.main(readonly=True) as db:
        rows = db.query("SELECT uuid FROM tracking_webhook_deliveries")
    assert len(rows) == len({r["uuid"] for r in rows}) == 50


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_an_oversized_payload_is_cut_and_blocks_no_other_event(
    store: Store, backend_config: Config, tmp_path: Path
) -> None:
    server = store.add_server("Main")
    long_url = "https://example.com/" + "x" * 65400
    links = [Link(random_token(), long_url), Link(random_token(), "https://example.com/short")]
    message_id = store.save_tracked_message(
        server.id,
        {"token": random_token(), "scope": "outgoing", "timestamp": time.time(), "parsed": 1},
        links,
    )
    big, small = (store.find_link(server.id, link.token) for link in links)
    _subscribe(store, server.id)
    rec = EventRecorder(_config(backend_config, tmp_path), store)
    rec.start()
    _click(rec, server, message_id, small, "a/1")
    _click(rec, server, message_id, big, "a/2")
    _click(rec, server, message_id, small, "a/3")
    assert rec.stop(10)
    with store.main(readonly=True) as db:
        rows = db.query("SELECT payload FROM webhook_requests ORDER BY id")
    payloads = [yaml.safe_load(r["payload"]) for r in rows]
    assert [p[":user_agent"] for p in payloads] == ["a/1", "a/2", "a/3"]
    cut = payloads[1]
    assert (
        cut[":truncated"] is True and long_url.startswith(cut[":url"]) and len(cut[":url"]) == 2000
    )
    assert all(len(r["payload"].encode()) <= POSTAL_PAYLOAD_BYTES for r in rows)
    with store.messages(server.id, readonly=True) as db:
        assert (
            db.one("SELECT COUNT(*) AS n FROM tracking_events WHERE webhooks_queued = 0")["n"] == 0
        )


# -- the smaller rows ------------------------------------------------------------------


class _Killed(BaseException):
    """Stands for gevent's GreenletExit: raised while a query's answer is still unread."""


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_a_connection_killed_mid_query_is_not_reused(store: Store) -> None:
    from pymysql.constants import COMMAND

    with pytest.raises(_Killed), store.main() as db:
        db._cursor.connection._execute_command(COMMAND.COM_QUERY, "SELECT 42 AS answer")
        raise _Killed  # the answer is on the wire, unread
    for _ in range(3):
        with store.main(readonly=True) as db:
            assert db.one("SELECT 1 AS ok") == {"ok": 1}


def test_user_agents_are_read_as_utf8_and_a_missing_one_stays_null(
    store: Store, backend_config: Config, tmp_path: Path
) -> None:
    server, message_id, (link,) = _sent(store)
    rec = EventRecorder(_config(backend_config, tmp_path), store, webhooks=False)
    wsgi = "Mozilla/5.0 café ☕".encode().decode("latin-1")  # how WSGI hands it over
    latin = "Agent \xe9t\xe9"  # latin-1 bytes that are no UTF-8: kept as latin-1
    for agent in (wsgi, latin, None):
        _click(rec, server, message_id, link, agent)  # type: ignore[arg-type]
    rec.start()
    assert rec.stop(10)
    assert _agents(store, server.id) == ["Mozilla/5.0 café ☕", "Agent été", None]
    with store.messages(server.id, readonly=True) as db:
        rows = db.query("SELECT user_agent FROM tracking_events ORDER BY timestamp")
    assert [r["user_agent"] for r in rows] == ["Mozilla/5.0 café ☕", "Agent été", None]


def test_a_node_that_lost_the_renewal_lock_stops_issuing(
    store: Store, backend_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from postal_tracking_plugin.certificates import LockBusy
    from postal_tracking_plugin.certificates import _issue

    server = store.add_server("Main")
    for name in ("a", "b", "c"):
        store.add_track_domain(server, f"click.{name}.example.com", dns_status="OK")
    domains = store.list_track_domains()
    answers = iter([True, True, False, False])  # taken, extended once, then lost
    monkeypatch.setattr(_issue, "acquire_lock", lambda *a, **k: next(answers))
    monkeypatch.setattr(_issue, "require_account", lambda config: object())
    monkeypatch.setattr(_issue, "lock_owner", lambda store: ("node-b:7", 0.0))
    issued: list[str] = []

    def issue_one(self: Any, account: Any, domain: str) -> Any:
        issued.append(domain)
        return _issue.Outcome(domain, True)

    monkeypatch.setattr(_issue.Issuer, "issue_one", issue_one)
    with pytest.raises(LockBusy, match="lost the certificate lock to node-b:7 after 1 of 3"):
        _issue.Issuer(backend_config, store).run(domains)
    assert issued == ["click.a.example.com"]
