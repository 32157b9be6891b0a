"""The dashboard's page times on a server with a million events, beside ``stats``.

    python benchmarks/dashboard.py [--events 1000000] [--messages 100000] [--rounds 5]
                                   [--keep] [--backend mysql]

Makes (or, with ``--keep``, reuses) a MariaDB data set: ``--messages`` tracked
messages over 30 days in 10 tags, each with 3 links, and ``--events`` opens and
clicks (70/30) written through the store's own ``record_events`` (Postal's
``loads``/``clicks`` rows and our ``tracking_events`` with their flags: about a
third of the opens from Apple's privacy proxy, some scanner clicks, some
too-fast-after-send). Then prints, each the median over ``--rounds`` after one
warm-up:

- ``stats``: ``postal-tracking stats --json --server bench`` run in this process
  (``cli.main``), the baseline: the same query layer, without the chart;
- every dashboard page, rendered by the real app through Flask's test client
  (logged in; the full request: session check, queries, chart, template):
  the overview over all time, over the last 7 days, for one tag; messages
  search; a message's timeline; links; tracking domains; health.

The goal is an overview under 500 ms for a server with one million events.
MariaDB on 127.0.0.1:3306 as root (``PTP_MYSQL_*`` as in the tests). The data
set lives in the database ``--database`` (default ``ptp_bench_dashboard``, and
``<database>-server-1``); without ``--keep`` it is dropped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from _support import MYSQL
from _support import drop_mysql_databases

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from postal_tracking_plugin.cli import main as cli_main  # noqa: E402
from postal_tracking_plugin.config import load_config  # noqa: E402
from postal_tracking_plugin.store import open_store  # noqa: E402
from postal_tracking_plugin.store import random_token  # noqa: E402
from postal_tracking_plugin.store._tokens import url_hash  # noqa: E402

DATABASE = "ptp_bench_dashboard"
DAY = 86400
PASSWORD = "benchmark password"
BROWSERS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
)


def _config(directory: Path, database: str) -> Path:
    path = directory / "postal.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "main_db": {**MYSQL, "database": database},
                "message_db": {"prefix": database},
                "tracking": {"store": "mysql", "data_dir": str(directory / "data")},
            }
        )
    )
    return path


def _event_count(store: Any, server_id: int) -> int:
    with store.messages(server_id, readonly=True) as db:
        return int(db.one("SELECT COUNT(*) AS n FROM tracking_events")["n"])


def make_data(store: Any, messages: int, events: int, now: float) -> Any:
    """The data set (see the module docstring); returns the server."""
    rng = random.Random(17)
    server = store.add_server("bench")
    store.add_track_domain(server, "click.bench.example", dns_status="OK")
    start = now - 30 * DAY
    made: list[tuple[int, float]] = []
    by_message: dict[int, list[int]] = {}
    started = time.monotonic()
    # Messages and links in multi-row INSERTs with ids chosen here (a fresh
    # database), 2,000 messages a transaction: one save_tracked_message per
    # message (a commit each) would take most of an hour for 100,000.
    step = 2000
    for first in range(0, messages, step):
        rows, links = [], []
        for i in range(first, min(first + step, messages)):
            message_id = i + 1
            sent = start + (i / messages) * 30 * DAY
            rows.append(
                (
                    message_id,
                    random_token(),
                    "outgoing",
                    f"reader{i}@example.net",
                    "news@bench.example",
                    f"Offer {i % 97}",
                    f"campaign-{i % 10}",
                    sent,
                )
            )
            ids = [3 * i + n + 1 for n in range(3)]
            links += [
                (
                    link_id,
                    message_id,
                    random_token(),
                    f"https://shop.example.com/p/{i % 500}/{n}",
                    sent,
                )
                for n, link_id in enumerate(ids)
            ]
            made.append((message_id, sent))
            by_message[message_id] = ids
        with store.messages(server.id) as db:
            db.executemany(
                "INSERT INTO messages (id, token, scope, rcpt_to, mail_from, subject, tag, "
                "timestamp, tracked_links, tracked_images, parsed) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 3, 1, 1)",
                rows,
            )
            db.executemany(
                "INSERT INTO links (id, message_id, token, hash, url, timestamp) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                [(i, m, t, url_hash(u), u, ts) for i, m, t, u, ts in links],
            )
    print(f"  {messages} messages ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    batch: list[dict[str, Any]] = []
    for n in range(events):
        message_id, sent = made[rng.randrange(len(made))]
        when = min(sent + rng.expovariate(1 / (2 * DAY)), now - 1)
        kind = "open" if rng.random() < 0.7 else "click"
        roll = rng.random()
        ip, agent, bot, reason = (
            f"198.51.{rng.randrange(256)}.{rng.randrange(256)}",
            rng.choice(BROWSERS),
            False,
            None,
        )
        if kind == "open" and roll < 0.33:
            ip, agent, bot, reason = "17.58.1.1", "Mozilla/5.0", True, "apple-privacy-proxy"
        elif kind == "open" and roll < 0.40:
            agent, reason = "Mozilla/5.0 (via ggpht.com GoogleImageProxy)", "google-image-proxy"
        elif kind == "click" and roll < 0.15:
            agent, bot, reason = "python-requests/2.31", True, "scanner-user-agent"
        elif roll > 0.97:
            when, bot, reason = sent + 2, True, "too-fast-after-send"
        batch.append(
            {
                "event_id": f"bench-{n}",
                "kind": kind,
                "method": "GET",
                "message_id": message_id,
                "link_id": rng.choice(by_message[message_id]) if kind == "click" else None,
                "ip_address": ip,
                "user_agent": agent,
                "timestamp": round(when, 3),
                "bot": bot,
                "bot_reason": reason,
            }
        )
        if len(batch) == 10000:
            store.record_events(server.id, batch)
            batch = []
            if (n + 1) % 100000 == 0:
                print(f"  {n + 1} events ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    if batch:
        store.record_events(server.id, batch)
    return server


def _median_ms(func: Any, rounds: int) -> float:
    func()  # warm-up
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        func()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the data set")
    parser.add_argument(
        "--pages", default="", help="only the pages whose name has this in it (and no stats)"
    )
    parser.add_argument(
        "--database", default=DATABASE, help=f"database name (and prefix; default {DATABASE})"
    )
    args = parser.parse_args()

    from postal_tracking_plugin.cli.users import hash_password
    from postal_tracking_plugin.web.dashboard import create_app

    with tempfile.TemporaryDirectory() as tmp:
        config_path = _config(Path(tmp), args.database)
        config = load_config(config_path)
        store = open_store(config)
        t = time.monotonic()
        store.create_schema()  # on a kept data set, any new migration (and its backfill)
        print(f"Schema ready in {time.monotonic() - t:.1f} s.", file=sys.stderr)
        now = time.time()
        servers = [s for s in store.list_servers() if s.name == "bench"]
        if servers and _event_count(store, servers[0].id) == args.events:
            server = servers[0]
            print(
                f"Reusing the data set in {args.database} ({args.events} events).", file=sys.stderr
            )
            with store.messages(server.id) as db:
                # Postal sets links.hash (SHA-1 of the URL); data sets made before
                # this script did too lack it.
                db.execute("UPDATE links SET hash = SHA1(url) WHERE hash IS NULL")
        else:
            store.close()
            drop_mysql_databases(args.database)
            store = open_store(config)
            store.create_schema()
            print(f"Making {args.messages} messages and {args.events} events ...", file=sys.stderr)
            t = time.monotonic()
            server = make_data(store, args.messages, args.events, now)
            print(f"  made in {time.monotonic() - t:.0f} s", file=sys.stderr)
        if not store.find_dashboard_user("bench@example.com"):
            store.add_dashboard_user("bench@example.com", hash_password(PASSWORD))
        app = create_app(config, store, secret_key=b"benchmark" * 4)
        client = app.test_client()
        page = client.get("/login").get_data(as_text=True)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token
        r = client.post(
            "/login",
            data={"email": "bench@example.com", "password": PASSWORD, "csrf_token": token.group(1)},
        )
        assert r.status_code == 302, r.status_code

        def stats() -> None:
            with contextlib.redirect_stdout(io.StringIO()) as out:
                code = cli_main(
                    ["--debug", "-c", str(config_path), "stats", "--json", "--server", "bench"]
                )
            assert code == 0 and '"servers"' in out.getvalue()

        with store.messages(server.id, readonly=True) as db:
            one = db.one("SELECT token FROM messages WHERE id = %s", (min(5000, args.messages),))
        week = time.strftime("%Y-%m-%d", time.gmtime(now - 7 * DAY))
        s = server.token
        pages = [
            ("overview, all time", f"/servers/{s}/"),
            ("overview, last 7 days", f"/servers/{s}/?from={week}"),
            ("overview, one tag", f"/servers/{s}/?tag=campaign-3"),
            ("messages, search", f"/servers/{s}/messages?rcpt=reader4242"),
            ("message timeline", f"/servers/{s}/messages/{one['token']}"),
            ("links", f"/servers/{s}/links"),
            ("tracking domains", "/domains"),
            ("health", "/health"),
        ]

        def get(path: str) -> Any:
            def run() -> None:
                response = client.get(path)
                assert response.status_code == 200, (path, response.status_code)

            return run

        events = _event_count(store, server.id)
        print(
            f"{events} events, MariaDB at {MYSQL['host']}:{MYSQL['port']}, "
            f"median of {args.rounds} after a warm-up"
        )
        baseline = float("nan")
        if not args.pages:
            baseline = _median_ms(stats, args.rounds)
            print(f"{'stats --json (baseline)':<28} {baseline:8.0f} ms")
        for name, path in pages:
            if args.pages not in name:
                continue
            ms = _median_ms(get(path), args.rounds)
            goal = "  (goal < 500 ms)" if name == "overview, all time" else ""
            ratio = f"  {ms / baseline:5.2f}x stats" if baseline == baseline else ""
            print(f"{name:<28} {ms:8.0f} ms{ratio}{goal}")
        store.close()
    if not args.keep:
        drop_mysql_databases(args.database)
    return 0


if __name__ == "__main__":
    sys.exit(main())
