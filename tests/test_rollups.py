"""The event rollups (``tracking_event_hours``, ``tracking_event_spans``) against the events.

The overview and ``stats`` read the rollups; ``tracking_overview(exact=True)``
reads every event as before they existed. After writes, late flags, ``prune``,
``forget``, a message deleted under the events, and the migration's backfill,
both give the same numbers for every range tried (whole days, parts of hours,
open ends, one tag).
"""

from __future__ import annotations

import random
from typing import Any

from postal_tracking_plugin.store import Link
from postal_tracking_plugin.store import Store
from postal_tracking_plugin.store import random_token
from postal_tracking_plugin.store._dashboard_ops import Filter
from postal_tracking_plugin.store._event_ops import rebuild_rollups

HOUR = 3600
START = 1_700_000_000 - 1_700_000_000 % 86400  # a UTC midnight
TAGS = ["spring", "autumn", None]


def _messages(store: Store, server_id: int, n: int) -> list[tuple[int, list[int]]]:
    made = []
    for i in range(n):
        message_id = store.save_tracked_message(
            server_id,
            {
                "token": random_token(),
                "scope": "outgoing",
                "rcpt_to": f"reader{i % 7}@example.net",
                "timestamp": START + i * 600,
                "tag": TAGS[i % 3],
                "tracked_links": 2,
                "tracked_images": 1,
                "parsed": 1,
            },
            [Link(token=random_token(), url=f"https://example.com/{i % 4}/{k}") for k in range(2)],
        )
        with store.messages(server_id, readonly=True) as db:
            links = [
                int(r["id"])
                for r in db.query("SELECT id FROM links WHERE message_id = %s", (message_id,))
            ]
        made.append((message_id, links))
    return made


def _write(store: Store, server_id: int, made: list[tuple[int, list[int]]], seed: int) -> None:
    rng = random.Random(seed)
    clicked: list[tuple[int, str, float]] = []

    def flag(queries: Any, fresh: list[dict[str, Any]]) -> None:
        for e in fresh:
            if rng.random() < 0.2:
                e["bot"], e["bot_reason"] = (
                    True,
                    rng.choice(["scanner-user-agent", "apple-privacy-proxy"]),
                )
            elif rng.random() < 0.1:
                e["bot_reason"] = "google-image-proxy"  # a person behind a proxy
        # A late flag of earlier clicks (the all-links-at-once rule's way).
        for message_id, ip, ts in rng.sample(clicked, min(3, len(clicked))):
            queries.flag_clicks(message_id, ip, ts - 5, ts + 5, "all-links-at-once")

    for batch in range(6):
        events = []
        for n in range(60):
            message_id, links = rng.choice(made)
            kind = rng.choice(["open", "click"])
            ts = START + rng.choice([rng.uniform(0, 3 * 86400), rng.randrange(0, 72) * HOUR])
            ip = f"192.0.2.{rng.randrange(5)}"
            unknown = rng.random() < 0.05
            events.append(
                {
                    "event_id": f"e-{seed}-{batch}-{n}",
                    "kind": kind,
                    "method": "HEAD" if rng.random() < 0.1 else "GET",
                    "message_id": None if unknown else message_id,
                    "link_id": rng.choice(links) if kind == "click" else None,
                    "ip_address": ip,
                    "user_agent": "Mozilla/5.0",
                    "timestamp": round(ts, 3),
                }
            )
            if kind == "click" and not unknown:
                clicked.append((message_id, ip, round(ts, 3)))
        store.record_events(server_id, events, flag)
        store.record_events(server_id, events[:10], flag)  # a replay: written once


FILTERS = [
    Filter(),
    Filter(since=START + 86400),
    Filter(until=START + 86400),
    Filter(since=START + 86400, until=START + 2 * 86400),
    Filter(since=START + 1234.5, until=START + 3 * HOUR + 17),
    Filter(since=START + 5 * HOUR + 10, until=START + 5 * HOUR + 3000),
    Filter(since=START + 7 * HOUR, until=START + 9 * HOUR + 1),
    Filter(since=START + 86399.9999),
    Filter(tag="spring"),
    Filter(tag="autumn", since=START + 40000.25, until=START + 150000),
]


def _agree(store: Store, server: Any) -> None:
    for flt in FILTERS:
        rolled = store.tracking_overview(server, flt, top=3)
        exact = store.tracking_overview(server, flt, top=3, exact=True)
        assert rolled == exact, (flt, rolled, exact)


def test_rollups_give_the_events_numbers(store: Store) -> None:
    server = store.add_server("Main")
    made = _messages(store, server.id, 24)
    _write(store, server.id, made, 1)
    stats = store.tracking_stats(server, Filter(), top=0)
    assert stats["opens"]["people"]["unique"] > 0 and stats["flags"]
    _agree(store, server)

    # The backfill finds the same rows the writer kept.
    def tables() -> tuple[list[Any], list[Any]]:
        with store.messages(server.id, readonly=True) as db:
            hours = db.query(
                "SELECT hour, tag, kind, bot, counted, reason, known, events "
                "FROM tracking_event_hours ORDER BY hour, tag, kind, bot, counted, reason, known"
            )
            spans = db.query(
                "SELECT message_id, kind, who, tag, first_at, last_at FROM tracking_event_spans "
                "ORDER BY message_id, kind, who"
            )
        return [dict(r) for r in hours], [dict(r) for r in spans]

    kept = tables()
    with store.messages(server.id) as db:
        rebuild_rollups(db)
    assert tables() == kept
    with store.messages(server.id) as db:
        rebuild_rollups(db, step=2)  # many chunks, adding to the same hours
    assert tables() == kept

    store.prune_events(server.id, START + 86400 + 1800.5, own_messages=True)
    _agree(store, server)
    store.forget_recipient(server.id, "reader3@example.net", own_messages=True)
    _agree(store, server)

    # A message deleted under its events (Postal's retention), then pruned.
    gone = made[1][0]
    with store.messages(server.id) as db:
        for table in ("clicks", "loads"):
            db.execute(f"DELETE FROM {table} WHERE message_id = %s", (gone,))
        db.execute("DELETE FROM messages WHERE id = %s", (gone,))
    store.prune_events(server.id, START, own_messages=True)
    _agree(store, server)
    assert tables() != ([], [])
    after = tables()
    with store.messages(server.id) as db:
        rebuild_rollups(db)
    assert tables() == after


def test_init_fills_the_rollups_of_an_installation_with_events(store: Store) -> None:
    """Events written before migration 8 (simulated: its tables and version gone) are
    rolled up by the next ``init`` (``create_schema``)."""
    server = store.add_server("Main")
    made = _messages(store, server.id, 9)
    _write(store, server.id, made, 2)
    expected = store.tracking_overview(server, Filter(), top=0, exact=True)
    with store.messages(server.id) as db:
        db.execute("DROP TABLE tracking_event_hours")
        db.execute("DROP TABLE tracking_event_spans")
        db.execute("DELETE FROM tracking_migrations WHERE version = 8")
    store.create_schema()
    assert store.tracking_overview(server, Filter(), top=0) == expected
    _agree(store, server)
