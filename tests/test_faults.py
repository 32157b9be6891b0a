"""Fault tests: the store goes away, the server is killed; no acknowledged click is lost.

Each run starts its own MariaDB (``mariadb-install-db`` + ``mariadbd`` on a free
port, in a temporary data directory, stopped by its PID afterwards), so the
shared instance on 3306 is never touched, and runs the real fast server
(``postal-tracking fast-server --workers 1``) as a subprocess. A load thread
sends clicks with a distinct User-Agent each, so every request that got a
``307`` can be matched to exactly one ``clicks`` row. The figures are printed
(run with ``-s`` to see them).
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
import yaml

from _support import free_port
from _support import need
from postal_tracking_plugin.config import load_config
from postal_tracking_plugin.errors import StoreError
from postal_tracking_plugin.store import Link
from postal_tracking_plugin.store import Store
from postal_tracking_plugin.store import open_store
from postal_tracking_plugin.store import random_token

MARIADBD = "/usr/sbin/mariadbd"


class PrivateMariaDB:
    """A MariaDB server of this test alone, in ``base``, on a free port."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.datadir = base / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def install(self) -> None:
        subprocess.run(
            [
                shutil.which("mariadb-install-db") or "mariadb-install-db",
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        log = open(self.base / "mariadbd.log", "ab")  # lives with the process
        self.proc = subprocess.Popen(
            [
                MARIADBD,
                "--no-defaults",
                f"--datadir={self.datadir}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.base / 'sock'}",
                f"--pid-file={self.base / 'pid'}",
                "--user=root",
                "--skip-grant-tables",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
                f"--log-error={self.base / 'error.log'}",
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                pymysql.connect(
                    host="127.0.0.1", port=self.port, user="root", connect_timeout=2
                ).close()
                return
            except pymysql.err.Error:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"private mariadbd did not start: {(self.base / 'error.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.2)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM to our PID), waited for."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)
        self.proc = None


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateMariaDB]:
    need(
        os.path.exists(MARIADBD) and shutil.which("mariadb-install-db") is not None,
        "the fault tests need MariaDB's server binaries (apt-get install mariadb-server)",
    )
    db = PrivateMariaDB(tmp_path_factory.mktemp("mariadb"))
    db.install()
    db.start()
    yield db
    db.stop()


class FastServer:
    """``postal-tracking fast-server --workers 1`` as a subprocess."""

    def __init__(self, config_path: Path, port: int, workers: int = 1) -> None:
        self.config_path = config_path
        self.port = port
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = config_path.parent / "fast-server.log"

    def start(self) -> None:
        log = open(self.log, "ab")  # lives with the process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "postal_tracking_plugin.cli",
                "-c",
                str(self.config_path),
                "fast-server",
                "--workers",
                str(self.workers),
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fast server did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.proc = None
        return code

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.proc = None

    def children(self) -> list[int]:
        assert self.proc is not None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


class Load:
    """Threads sending clicks on cached links, each with its own User-Agent."""

    def __init__(self, port: int, paths: list[str], *, threads: int = 2, pause: float = 0.002):
        self.port = port
        self.paths = paths
        self.pause = pause
        self.stop_event = threading.Event()
        self.results: list[tuple[str, int]] = []  # (user agent, status)
        self.errors = 0
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(f"t{i}",), daemon=True) for i in range(threads)
        ]

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self._threads:
            t.join(30)

    def _run(self, name: str) -> None:
        conn: http.client.HTTPConnection | None = None
        n = 0
        while not self.stop_event.is_set():
            n += 1
            agent = f"fault-load/{name}/{n}"
            path = self.paths[n % len(self.paths)]
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", path, headers={"User-Agent": agent})
                response = conn.getresponse()
                response.read()
                with self._lock:
                    self.results.append((agent, response.status))
            except (OSError, http.client.HTTPException):
                # No answer: not acknowledged, so it may or may not be recorded.
                with self._lock:
                    self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
            time.sleep(self.pause)
        if conn is not None:
            conn.close()

    def acknowledged(self) -> list[str]:
        with self._lock:
            return [agent for agent, status in self.results if status == 307]


@pytest.fixture
def setup(mariadb: PrivateMariaDB, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A configuration on the private MariaDB, a server with ten links, a fast server."""
    database = f"ptp_fault_{secrets.token_hex(3)}"
    port = free_port()
    config_path = tmp_path / "postal.yml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "fast_server": {
                    "enabled": True,
                    "bind_address": "127.0.0.1",
                    "port": port,
                    "ssl_port": free_port(),
                },
                "main_db": {
                    "host": "127.0.0.1",
                    "port": mariadb.port,
                    "username": "root",
                    "password": "",
                    "database": database,
                },
                "message_db": {"prefix": database},
                "tracking": {"store": "mysql", "data_dir": "./data"},
            }
        )
    )
    init = subprocess.run(
        [sys.executable, "-m", "postal_tracking_plugin.cli", "-c", str(config_path), "init"],
        capture_output=True,
        text=True,
    )
    assert init.returncode == 0, init.stderr
    config = load_config(config_path)
    store = open_store(config)
    server = store.add_server("Fault")
    links = [Link(random_token(), f"https://example.com/page/{i}") for i in range(10)]
    store.save_tracked_message(
        server.id,
        {
            "token": random_token(),
            "scope": "outgoing",
            "timestamp": time.time() - 3600,
            "tracked_links": len(links),
            "parsed": 1,
        },
        links,
    )
    fast = FastServer(config_path, port)
    yield {
        "store": store,
        "server": server,
        "paths": [f"/{server.token}/{link.token}" for link in links],
        # A link token the server has never seen: not in any cache (the server
        # reads new links ahead of their first click), so it needs the store.
        "cold": f"/{server.token}/{random_token()}",
        "fast": fast,
        "port": port,
        "data_dir": tmp_path / "data",
    }
    fast.close()
    store.close()
    with contextlib.suppress(pymysql.err.Error):
        conn = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root")
        with conn.cursor() as cursor:
            cursor.execute("SHOW DATABASES")
            for (name,) in cursor.fetchall():
                if name == database or name.startswith(database + "-"):
                    cursor.execute(f"DROP DATABASE `{name}`")
        conn.close()


def _get(port: int, path: str, agent: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"User-Agent": agent})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def _click_agents(store: Store, server_id: int) -> collections.Counter[str]:
    for attempt in range(3):
        try:
            with store.messages(server_id, readonly=True) as db:
                rows = db.query("SELECT user_agent FROM clicks")
            break
        except StoreError:
            # A pooled connection from before a restart of MariaDB fails once.
            if attempt == 2:
                raise
    return collections.Counter(r["user_agent"] for r in rows)


def _wait_for_rows(store: Store, server_id: int, expected: set[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if expected <= set(_click_agents(store, server_id)):
                return
        except Exception:  # noqa: BLE001 - the store may still be coming back
            pass
        time.sleep(0.25)


@pytest.mark.slow
def test_store_outage_of_ten_seconds_loses_no_acknowledged_click(
    setup: dict[str, Any], mariadb: PrivateMariaDB
) -> None:
    fast, store, server = setup["fast"], setup["store"], setup["server"]
    fast.start()
    warm = [f"warm/{i}" for i in range(len(setup["paths"]))]
    for agent, path in zip(warm, setup["paths"], strict=True):
        assert _get(setup["port"], path, agent).status == 307  # now in the lookup cache

    load = Load(setup["port"], setup["paths"]).start()
    time.sleep(2)
    before_outage = len(load.results)
    mariadb.stop()
    outage_started = time.monotonic()
    try:
        time.sleep(1)
        cold = _get(setup["port"], setup["cold"], "cold/1")
        time.sleep(max(0.0, 10 - (time.monotonic() - outage_started)))
        during_outage = len(load.results) - before_outage
    finally:
        mariadb.start()
    outage = time.monotonic() - outage_started
    time.sleep(3)
    load.stop()

    acked = set(load.acknowledged()) | set(warm)
    _wait_for_rows(store, server.id, acked)
    assert fast.terminate() == 0  # SIGTERM flushes what is left
    counts = _click_agents(store, server.id)
    statuses = collections.Counter(status for _agent, status in load.results)

    lost = acked - set(counts)
    duplicated = {agent for agent, n in counts.items() if n > 1}
    print(
        f"\nstore outage: {outage:.1f} s; requests {len(load.results)} (during the outage "
        f"{during_outage}), statuses {dict(statuses)}, connection errors {load.errors}; "
        f"acknowledged {len(acked)}; clicks rows {sum(counts.values())}; lost {len(lost)}; "
        f"duplicated {len(duplicated)}"
    )
    assert during_outage > 0
    assert set(statuses) == {307}  # cached links redirected throughout
    assert load.errors == 0
    assert cold.status == 503 and cold.getheader("Retry-After")  # never a wrong redirect
    assert lost == set()
    assert duplicated == set()
    assert set(counts) - acked == set()  # nothing recorded that was not asked for


@pytest.mark.slow
def test_kill_9_under_load_then_restart_replays_every_acknowledged_click(
    setup: dict[str, Any], mariadb: PrivateMariaDB
) -> None:
    fast, store, server = setup["fast"], setup["store"], setup["server"]
    fast.start()
    for path in setup["paths"]:
        assert _get(setup["port"], path, "fault-load/warm").status == 307
    load = Load(setup["port"], setup["paths"], pause=0.0).start()
    time.sleep(2)
    # Kill it while many events exist only in the spool: during a store outage.
    mariadb.stop()
    try:
        time.sleep(2)
        fast.kill9()
        load.stop()
    finally:
        mariadb.start()
    acked = set(load.acknowledged()) | {"fault-load/warm"}
    in_store_at_kill = len(set(_click_agents(store, server.id)) & acked)
    spooled = sum(p.stat().st_size for p in (setup["data_dir"] / "spool").glob("*.jsonl"))

    fast.start()
    _wait_for_rows(store, server.id, acked)
    assert fast.terminate() == 0
    counts = _click_agents(store, server.id)
    lost = acked - set(counts)
    duplicated = {agent for agent, n in counts.items() if n > 1 and agent != "fault-load/warm"}
    print(
        f"\nkill -9: requests {len(load.results)}, acknowledged {len(acked)}, in the store at "
        f"the kill {in_store_at_kill}, left in the spool {len(acked) - in_store_at_kill} "
        f"({spooled} bytes of spool files on disk); after restart clicks rows "
        f"{sum(counts.values())}, "
        f"lost {len(lost)}, duplicated {len(duplicated)}"
    )
    assert len(acked) > 100
    assert counts["fault-load/warm"] == len(setup["paths"])
    assert lost == set()
    assert duplicated == set()
    assert all(agent.startswith("fault-load/") for agent in counts)
    # The dead process's spool was replayed and removed.
    assert list((setup["data_dir"] / "spool").glob("*.jsonl")) == []


MALFORMED = [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS hello on the HTTP port
    b"GET /\r\n\r\n",
    b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 500 + b"\r\n",
    b"\x00\xff\xfe garbage \r\n\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\n\r\n",
    b"GET /%ZZ/%00 HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
]


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _send_raw(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass


@pytest.mark.slow
def test_malformed_requests_leave_memory_flat_and_good_requests_answered(
    setup: dict[str, Any],
) -> None:
    fast, port = setup["fast"], setup["port"]
    fast.start()
    assert fast.proc is not None
    good = 0

    def round_of(count: int) -> None:
        nonlocal good
        for i in range(count):
            _send_raw(port, MALFORMED[i % len(MALFORMED)])
            if i % 100 == 99:
                response = _get(port, setup["paths"][i % len(setup["paths"])], f"good/{i}")
                assert response.status == 307
                good += 1

    round_of(1000)  # warm up: caches, pools, allocator arenas
    before = _rss_kb(fast.proc.pid)
    round_of(4000)
    after = _rss_kb(fast.proc.pid)
    assert fast.terminate() == 0
    print(
        f"\nmalformed: 5000 bad requests, {good} good ones all answered 307; "
        f"RSS {before} kB -> {after} kB after the last 4000"
    )
    assert after - before < 8 * 1024


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_its_spool_replayed(
    setup: dict[str, Any], mariadb: PrivateMariaDB
) -> None:
    """With two workers, ``kill -9`` of one: the master starts another, which (or the
    surviving worker) adopts the dead worker's spool stream and replays it."""
    store, server = setup["store"], setup["server"]
    fast = setup["fast"]
    fast.workers = 2
    fast.start()
    for path in setup["paths"]:
        assert _get(setup["port"], path, "fault-load/warm").status == 307
    deadline = time.monotonic() + 10
    while len(fast.children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    victim = fast.children()[0]
    load = Load(setup["port"], setup["paths"], threads=4, pause=0.0).start()
    time.sleep(1.5)
    mariadb.stop()
    try:
        time.sleep(1.5)
        os.kill(victim, signal.SIGKILL)
        time.sleep(1.5)
    finally:
        mariadb.start()
    load.stop()
    acked = set(load.acknowledged())
    _wait_for_rows(store, server.id, acked)
    replaced = [pid for pid in fast.children() if pid != victim]
    assert fast.terminate() == 0
    counts = _click_agents(store, server.id)
    lost = acked - set(counts)
    duplicated = {a for a, n in counts.items() if n > 1 and a != "fault-load/warm"}
    print(
        f"\nkill -9 of one of two workers: requests {len(load.results)}, acknowledged "
        f"{len(acked)}, statuses {dict(collections.Counter(st for _a, st in load.results))}, "
        f"connection errors {load.errors}; clicks rows {sum(counts.values())}, "
        f"lost {len(lost)}, duplicated {len(duplicated)}"
    )
    assert len(replaced) == 2  # the master replaced the dead worker
    assert len(acked) > 100
    assert lost == set()
    assert duplicated == set()
    assert list((setup["data_dir"] / "spool").glob("*.jsonl")) == []


def _refuse_inserts(port: int, database: str, code: int | None) -> None:
    """Make every ``clicks`` insert fail with MySQL error ``code`` (None: stop refusing).

    A trigger is how a table that is full (1114, a full disk) or a server gone
    read-only (1290, a replica during failover) looks to the writer: the
    server answers pings, and refuses the write.
    """
    conn = pymysql.connect(host="127.0.0.1", port=port, user="root", database=database)
    try:
        with conn.cursor() as cursor:
            cursor.execute("DROP TRIGGER IF EXISTS refuse_clicks")
            if code is not None:
                cursor.execute(
                    "CREATE TRIGGER refuse_clicks BEFORE INSERT ON clicks FOR EACH ROW "
                    f"SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = {code}, "
                    f"MESSAGE_TEXT = 'refused by the fault test ({code})'"
                )
        conn.commit()
    finally:
        conn.close()


def test_writes_refused_for_ten_seconds_under_load_lose_and_set_aside_nothing(
    setup: dict[str, Any], mariadb: PrivateMariaDB
) -> None:
    """Issue 14, row 1: a store that answers pings but refuses writes (1114, then 1290)."""
    fast, store, server = setup["fast"], setup["store"], setup["server"]
    database = store.message_database(server.id)  # type: ignore[attr-defined]
    fast.start()
    load = Load(setup["port"], setup["paths"]).start()
    time.sleep(2)
    before = len(load.results)
    refused_at = time.monotonic()
    try:
        _refuse_inserts(mariadb.port, database, 1114)  # table is full
        time.sleep(5)
        _refuse_inserts(mariadb.port, database, 1290)  # --read-only
        time.sleep(5)
    finally:
        _refuse_inserts(mariadb.port, database, None)
    refused = time.monotonic() - refused_at
    during = len(load.results) - before
    time.sleep(2)
    load.stop()
    acked = set(load.acknowledged())
    _wait_for_rows(store, server.id, acked)
    assert fast.terminate() == 0
    counts = _click_agents(store, server.id)
    lost = acked - set(counts)
    duplicated = {agent for agent, n in counts.items() if n > 1}
    set_aside = sum(
        len(p.read_text().splitlines()) for p in (setup["data_dir"] / "spool").glob("rejected-*")
    )
    print(
        f"\nwrites refused (1114 then 1290) for {refused:.1f} s under load: requests "
        f"{len(load.results)} (during the refusal {during}), acknowledged {len(acked)}, "
        f"written {len(acked & set(counts))}, set aside {set_aside}, lost {len(lost)}, "
        f"duplicated {len(duplicated)}"
    )
    assert during > 100
    assert lost == set()
    assert duplicated == set()
    assert set_aside == 0
    assert set(counts) - acked == set()


def test_two_workers_starting_with_400_unqueued_events_queue_each_webhook_once(
    setup: dict[str, Any],
) -> None:
    """Issue 14, row 3: every worker catches up at start; each webhook is queued once."""
    fast, store, server = setup["fast"], setup["store"], setup["server"]
    with store.main() as db:
        db.insert(
            "INSERT INTO webhooks (server_id, uuid, name, url, all_events, enabled, sign) "
            "VALUES (%s, 'w1', 'all', 'https://hooks.example.com/all', 1, 1, 1)",
            (server.id,),
        )
    with store.messages(server.id, readonly=True) as db:
        message = db.one("SELECT id FROM messages")
        link = db.one("SELECT id FROM links")
    now = time.time()
    store.record_events(
        server.id,
        [
            {
                "event_id": f"before-restart-{i}",
                "kind": "click",
                "method": "GET",
                "message_id": message["id"],
                "link_id": link["id"],
                "ip_address": f"198.51.{i // 250}.{i % 250}",
                "user_agent": f"reader/{i}",
                "timestamp": now - 600 + i * 0.001,
            }
            for i in range(400)
        ],
        webhooks_pending=True,
    )
    fast.workers = 2
    fast.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with store.messages(server.id, readonly=True) as db:
            left = db.one("SELECT COUNT(*) AS n FROM tracking_events WHERE webhooks_queued = 0")
        if not left["n"]:
            break
        time.sleep(0.2)
    assert fast.terminate() == 0
    with store.main(readonly=True) as db:
        rows = db.query("SELECT uuid FROM webhook_requests")
    print(
        f"\ntwo workers starting with 400 unqueued events: webhook_requests rows {len(rows)}, "
        f"distinct uuids {len({r['uuid'] for r in rows})}"
    )
    assert left["n"] == 0
    assert len(rows) == 400
    assert len({r["uuid"] for r in rows}) == 400
