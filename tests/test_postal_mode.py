"""Beside a real Postal: nothing of Postal's changes but what its fast server wrote.

Each test builds Postal's databases the way Postal does (``postal_schema/``:
the main database from Postal's ``db/schema.rb``, a message database by its
migrations 01-20), fills them as Postal's web interface and MessageParser
would (an organisation that owns a domain with a DKIM key, two servers, one of
whose message databases is missing, a tracking domain, a webhook, a sent
message with a tracked link), and compares every table's ``SHOW CREATE TABLE``
and ``CHECKSUM TABLE`` before and after the sidecar's commands, send hook and
fast server.
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
import yaml
from web_live import LiveServer

from _support import MYSQL
from _support import drop_mysql_databases
from _support import mysql_reachable
from _support import need
from postal_tracking_plugin.config import load_config
from postal_tracking_plugin.errors import PostalOwnsThis
from postal_tracking_plugin.hooks.tracking import postal_rewrite_message
from postal_tracking_plugin.store import open_store

SCHEMA = Path(__file__).parent / "postal_schema"
SERVER_TOKEN = "mailtk"
MESSAGE_TOKEN = "Qm8cTq3ZrX7wYp2L"
LINK_TOKEN = "Hk3vN9sLq2WxZt7B"
LINK_URL = "https://example.com/landing?utm=1"

#: What Postal's own fast server wrote, so all the sidecar may write (besides
#: tables named tracking_*): per database kind, table -> columns it may change.
MAY_CHANGE = {
    "main": {"webhook_requests", "track_certificates"},
    "message": {"clicks", "loads", "messages"},
}

MESSAGE = (
    b"From: News <news@orgmail.com>\r\n"
    b"To: reader@example.net\r\n"
    b"Subject: Hello\r\n"
    b"Message-ID: <m1@orgmail.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b'<html><body><a href="https://example.com/a">a</a></body></html>\r\n'
)


def _statements(path: Path) -> list[str]:
    lines = [line for line in path.read_text().splitlines() if not line.startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";\n") if s.strip().rstrip(";")]


def _connect(database: str | None = None) -> Any:
    return pymysql.connect(
        host=MYSQL["host"],
        port=MYSQL["port"],
        user=MYSQL["username"],
        password=MYSQL["password"],
        database=database,
        autocommit=True,
        charset="utf8mb4",
    )


class Postal:
    """A Postal installation's databases: main ``name``, messages ``name-server-N``."""

    def __init__(self, name: str, version: int) -> None:
        self.name = name
        self.version = version

    def build(self) -> Postal:
        conn = _connect()
        with conn.cursor() as c:
            c.execute(f"CREATE DATABASE `{self.name}` CHARSET utf8mb4 COLLATE utf8mb4_unicode_ci")
            c.execute(f"USE `{self.name}`")
            for statement in _statements(SCHEMA / f"postal{self.version}_main.sql"):
                c.execute(statement)
            self._fill_main(c)
            # Server 1's message database, as Postal's provisioner makes it;
            # server 2's was never provisioned.
            c.execute(
                f"CREATE DATABASE `{self.name}-server-1` CHARSET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
            c.execute(f"USE `{self.name}-server-1`")
            for statement in _statements(SCHEMA / "postal_message_db.sql"):
                c.execute(statement)
            self._fill_messages(c)
        conn.close()
        return self

    def _fill_main(self, c: Any) -> None:
        now = "2026-12-01 10:00:00"
        c.execute(
            "INSERT INTO organizations (id, uuid, name, permalink, time_zone, created_at, "
            "updated_at, owner_id) VALUES (1, 'org-uuid', 'Org', 'org', 'UTC', %s, %s, 1)",
            (now, now),
        )
        privacy = ", privacy_mode" if self.version == 3 else ""
        for sid, name, token in ((1, "Mail", SERVER_TOKEN), (2, "Other", "othrtk")):
            c.execute(
                "INSERT INTO servers (id, organization_id, uuid, name, mode, created_at, "
                "updated_at, permalink, token, message_retention_days" + privacy + ") "
                "VALUES (%s, 1, %s, %s, 'Live', %s, %s, %s, %s, 60"
                + (", 0" if privacy else "")
                + ")",
                (sid, f"server-{sid}", name, now, now, name.lower(), token),
            )
        c.execute(
            "INSERT INTO domains (id, server_id, uuid, name, verification_token, "
            "verification_method, verified_at, dkim_private_key, created_at, updated_at, "
            "outgoing, incoming, owner_type, owner_id, dkim_identifier_string) VALUES "
            "(1, NULL, 'dom-uuid', 'orgmail.com', 'vtok', 'DNS', %s, %s, %s, %s, 1, 1, "
            "'Organization', 1, 'postal-Ab12Cd')",
            (
                now,
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEo...\n-----END RSA PRIVATE KEY-----\n",
                now,
                now,
            ),
        )
        c.execute(
            "INSERT INTO track_domains (id, uuid, server_id, domain_id, name, dns_checked_at, "
            "dns_status, created_at, updated_at, ssl_enabled, track_clicks, track_loads) "
            "VALUES (1, 'td-uuid', 1, 1, 'click', %s, 'OK', %s, %s, 1, 1, 1)",
            (now, now, now),
        )
        c.execute(
            "INSERT INTO webhooks (id, server_id, uuid, name, url, all_events, enabled, sign, "
            "created_at, updated_at) VALUES (1, 1, 'wh-uuid', 'Hook', "
            "'https://hooks.example.net/postal', 1, 1, 1, %s, %s)",
            (now, now),
        )
        c.execute("INSERT INTO schema_migrations (version) VALUES ('20240311205229')")

    def _fill_messages(self, c: Any) -> None:
        sent = time.time() - 3600
        c.execute(
            "INSERT INTO messages (token, scope, rcpt_to, mail_from, subject, message_id, "
            "timestamp, domain_id, status, tag, tracked_links, tracked_images, parsed) VALUES "
            "(%s, 'outgoing', 'reader@example.net', 'news@orgmail.com', 'Hello', "
            "'m1@orgmail.com', %s, 1, 'Sent', 'november', 1, 1, 1)",
            (MESSAGE_TOKEN, sent),
        )
        c.execute(
            "INSERT INTO links (message_id, token, hash, url, timestamp) "
            "VALUES (1, %s, %s, %s, %s)",
            (LINK_TOKEN, hashlib.sha1(LINK_URL.encode()).hexdigest(), LINK_URL, sent),
        )

    # -- looking at it ------------------------------------------------------------

    def databases(self) -> list[str]:
        conn = _connect()
        with conn.cursor() as c:
            c.execute("SHOW DATABASES")
            names = [n for (n,) in c.fetchall() if n == self.name or n.startswith(self.name + "-")]
        conn.close()
        return sorted(names)

    def snapshot(self) -> dict[str, dict[str, tuple[str, int]]]:
        """Every table of every database: its definition and its checksum."""
        found: dict[str, dict[str, tuple[str, int]]] = {}
        conn = _connect()
        with conn.cursor() as c:
            for database in self.databases():
                tables: dict[str, tuple[str, int]] = {}
                c.execute(f"SHOW TABLES FROM `{database}`")
                for (table,) in c.fetchall():
                    c.execute(f"SHOW CREATE TABLE `{database}`.`{table}`")
                    create = c.fetchone()[1].split(") ENGINE")[0]  # AUTO_INCREMENT moves
                    c.execute(f"CHECKSUM TABLE `{database}`.`{table}`")
                    tables[table] = (create, c.fetchone()[1])
                found[database] = tables
        conn.close()
        return found

    def query(self, database: str, sql: str) -> list[dict[str, Any]]:
        conn = _connect(database)
        with conn.cursor(pymysql.cursors.DictCursor) as c:
            c.execute(sql)
            rows = list(c.fetchall())
        conn.close()
        return rows


def changes(before: dict, after: dict) -> dict[str, set[str]]:
    """Per database, the tables that are new or differ (schema or content)."""
    assert sorted(after) == sorted(before), "a database was created or dropped"
    return {
        database: {t for t in after[database] if after[database][t] != before[database].get(t)}
        for database in after
    }


def only_ours_or_allowed(changed: dict[str, set[str]], postal: Postal) -> None:
    for database, tables in changed.items():
        kind = "main" if database == postal.name else "message"
        foreign = {t for t in tables if not t.startswith("tracking_")} - MAY_CHANGE[kind]
        assert not foreign, f"{database}: Postal's tables changed: {sorted(foreign)}"


def _installation(version: int) -> Iterator[Postal]:
    reason = mysql_reachable()
    need(reason is None, reason or "")
    name = f"ptp_postal_{secrets.token_hex(4)}"
    installation = Postal(name, version).build()
    try:
        yield installation
    finally:
        drop_mysql_databases(name)


@pytest.fixture(params=[3, 2], ids=["postal3", "postal2"])
def postal(request: pytest.FixtureRequest) -> Iterator[Postal]:
    """Postal 3's schema, and the schema before 2.0 (still kept by 2.x)."""
    yield from _installation(request.param)


@pytest.fixture
def postal3() -> Iterator[Postal]:
    """Postal 3 only, for what does not depend on the schema's age."""
    yield from _installation(3)


def write_config(tmp_path: Path, database: str, store: str = "postal") -> Path:
    data = {
        "fast_server": {"enabled": True, "bind_address": "127.0.0.1"},
        "main_db": {**MYSQL, "database": database},
        "message_db": {"database_name_prefix": database},
        "tracking": {"store": store, "data_dir": "./data"},
    }
    path = tmp_path / "postal.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def cli(config: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "postal_tracking_plugin.cli", "-c", str(config), *args],
        capture_output=True,
        input=stdin,
        cwd=config.parent,
        timeout=60,
    )


def one_line(result: subprocess.CompletedProcess[bytes]) -> str:
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert err.count("\n") == 1 and err.startswith("postal-tracking: error: "), err
    return err


# -- init -----------------------------------------------------------------------


def test_init_adds_only_tables_of_our_own_and_creates_no_database(
    postal: Postal, tmp_path: Path
) -> None:
    config = write_config(tmp_path, postal.name)
    before = postal.snapshot()
    result = cli(config, "init")
    assert result.returncode == 0, result.stderr
    assert f"`{postal.name}-server-2` does not exist (Postal makes it); skipped" in (
        result.stderr.decode()
    )
    after = postal.snapshot()
    changed = changes(before, after)
    assert changed[postal.name] and all(t.startswith("tracking_") for t in changed[postal.name])
    assert changed[f"{postal.name}-server-1"] == {
        "tracking_events",
        "tracking_event_hours",
        "tracking_event_spans",
        "tracking_migrations",
    }
    # Postal 3's schema.rb still has track_certificates: it is not touched
    assert after[postal.name]["track_certificates"] == before[postal.name]["track_certificates"]
    # again: nothing more
    assert cli(config, "init").returncode == 0
    assert postal.snapshot() == after


# -- Postal's objects -------------------------------------------------------------


REFUSED = [
    (("servers", "add", "New"), "servers belong to Postal"),
    (
        ("track-domains", "add", "t.orgmail.com", "--server", "Mail", "--assume-dns-ok"),
        "tracking domains belong to Postal",
    ),
    (("track-domains", "remove", "click.orgmail.com"), "tracking domains belong to Postal"),
    (
        ("track-domains", "set", "click.orgmail.com", "--no-track-loads"),
        "tracking domains and their settings belong to Postal",
    ),
    (("track-domains", "check-dns"), "Postal checks their DNS itself"),
    (("smtp-relay", "--listen", "127.0.0.1:0"), "send to Postal's SMTP server directly"),
]


def test_changes_to_postals_objects_are_refused_in_one_line(
    postal3: Postal, tmp_path: Path
) -> None:
    config = write_config(tmp_path, postal3.name)
    assert cli(config, "init").returncode == 0
    before = postal3.snapshot()
    for args, says in REFUSED:
        line = one_line(cli(config, *args))
        assert says in line, (args, line)
    assert postal3.snapshot() == before


def test_read_only_commands_work(postal3: Postal, tmp_path: Path) -> None:
    config = write_config(tmp_path, postal3.name)
    assert cli(config, "init").returncode == 0
    before = postal3.snapshot()
    servers = cli(config, "servers", "list")
    assert servers.returncode == 0, servers.stderr
    assert b"Mail" in servers.stdout and SERVER_TOKEN.encode() in servers.stdout
    domains = cli(config, "track-domains", "list")
    assert domains.returncode == 0 and b"click.orgmail.com" in domains.stdout
    certs = cli(config, "certs", "list")
    assert certs.returncode == 0, certs.stderr
    stats = cli(config, "stats", "--server", "Mail", "--json")
    assert stats.returncode == 0, stats.stderr
    assert postal3.snapshot() == before


# -- sending ---------------------------------------------------------------------


def test_mail_passes_through_byte_for_byte(postal: Postal, tmp_path: Path) -> None:
    config_path = write_config(tmp_path, postal.name)
    assert cli(config_path, "init").returncode == 0
    before = postal.snapshot()
    result = cli(config_path, "rewrite", "--server", "Mail", stdin=MESSAGE)
    assert result.returncode == 0, result.stderr
    assert result.stdout == MESSAGE
    assert "Postal tracks the mail it sends" in result.stderr.decode()

    config = load_config(config_path)
    store = open_store(config)
    try:
        hooked = postal_rewrite_message(
            message=MESSAGE,
            mail_from="news@orgmail.com",
            rcpt_to=["reader@example.net"],
            server="Mail",
            config=config,
            store=store,
        )
    finally:
        store.close()
    assert hooked is None  # unchanged
    assert postal.snapshot() == before


# -- serving ---------------------------------------------------------------------


def test_the_fast_server_writes_only_what_postals_fast_server_wrote(
    postal: Postal, tmp_path: Path
) -> None:
    config_path = write_config(tmp_path, postal.name)
    assert cli(config_path, "init").returncode == 0
    message_db = f"{postal.name}-server-1"
    message_before = postal.query(message_db, "SELECT * FROM messages")
    before = postal.snapshot()

    config = load_config(config_path)
    store = open_store(config)
    live = LiveServer(config, store).start()
    try:
        response, _ = live.request("GET", f"/{SERVER_TOKEN}/{LINK_TOKEN}")
        assert response.status == 307 and response.getheader("Location") == LINK_URL
        response, body = live.request("GET", f"/img/{SERVER_TOKEN}/{MESSAGE_TOKEN}")
        assert response.status == 200 and body.startswith(b"\x89PNG")
        live.flush()
    finally:
        live.stop()
        store.close()

    after = postal.snapshot()
    changed = changes(before, after)
    only_ours_or_allowed(changed, postal)
    assert {"clicks", "loads", "messages"} <= changed[message_db]
    # messages: only clicked and loaded were set
    (row,) = postal.query(message_db, "SELECT * FROM messages")
    (old,) = message_before
    assert row["clicked"] is not None and row["loaded"] is not None
    assert {k: v for k, v in row.items() if k not in ("clicked", "loaded")} == {
        k: v for k, v in old.items() if k not in ("clicked", "loaded")
    }
    (click,) = postal.query(message_db, "SELECT * FROM clicks")
    assert (click["message_id"], click["link_id"], click["ip_address"]) == (1, 1, "127.0.0.1")
    queued = postal.query(postal.name, "SELECT event, webhook_id, server_id FROM webhook_requests")
    assert sorted(r["event"] for r in queued) == ["MessageLinkClicked", "MessageLoaded"]
    assert {(r["webhook_id"], r["server_id"]) for r in queued} == {(1, 1)}


# -- the wrong kind of store --------------------------------------------------------


def test_the_mysql_store_refuses_postals_database(postal3: Postal, tmp_path: Path) -> None:
    config = write_config(tmp_path, postal3.name, store="mysql")
    before = postal3.snapshot()
    for args in (("init",), ("servers", "list"), ("servers", "add", "New")):
        line = one_line(cli(config, *args))
        assert "is Postal's database (it has Postal's organizations table): set " in line
        assert "tracking.store: postal" in line
    assert postal3.snapshot() == before


def test_the_postal_store_refuses_a_database_that_is_not_postals(tmp_path: Path) -> None:
    reason = mysql_reachable()
    need(reason is None, reason or "")
    name = f"ptp_own_{secrets.token_hex(4)}"
    try:
        own = write_config(tmp_path, name, store="mysql")
        assert cli(own, "init").returncode == 0
        line = one_line(cli(write_config(tmp_path, name, store="postal"), "servers", "list"))
        assert "has no Postal organizations table" in line
    finally:
        drop_mysql_databases(name)


# -- certificates ------------------------------------------------------------------


def test_certificates_are_issued_only_beside_postal_3(postal: Postal, tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, postal.name))
    store = open_store(config)
    try:
        store.create_schema()
        if postal.version == 3:
            store.check_can_issue_certificates()
            saved = store.save_certificate(
                "click.orgmail.com", verification_path="x", verification_string="y"
            )
            assert saved.verification_string == "y"
        else:
            with pytest.raises(PostalOwnsThis, match="RenewTrackCertificatesJob"):
                store.check_can_issue_certificates()
            before = postal.snapshot()
            with pytest.raises(PostalOwnsThis):
                store.save_certificate("click.orgmail.com", verification_path="x")
            assert postal.snapshot() == before
    finally:
        store.close()


# -- databases we make ---------------------------------------------------------------


def _layout(postal: Postal, database: str) -> dict[str, Any]:
    """Postal's message tables in ``database``: columns, indexes, collation."""
    tables = {
        r["TABLE_NAME"]: r["TABLE_COLLATION"]
        for r in postal.query(
            "information_schema",
            f"SELECT TABLE_NAME, TABLE_COLLATION FROM TABLES WHERE TABLE_SCHEMA = '{database}' "
            "AND TABLE_NAME NOT LIKE 'tracking\\_%'",
        )
    }
    columns = {
        (r["TABLE_NAME"], r["COLUMN_NAME"], r["COLUMN_TYPE"], r["IS_NULLABLE"], r["COLUMN_DEFAULT"])
        for r in postal.query(
            "information_schema",
            "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT "
            f"FROM COLUMNS WHERE TABLE_SCHEMA = '{database}' AND TABLE_NAME NOT LIKE 'tracking\\_%'",
        )
    }
    indexes = {
        (r["TABLE_NAME"], r["INDEX_NAME"], r["SEQ_IN_INDEX"], r["COLUMN_NAME"], r["SUB_PART"])
        for r in postal.query(
            "information_schema",
            "SELECT TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, SUB_PART FROM STATISTICS "
            f"WHERE TABLE_SCHEMA = '{database}' AND TABLE_NAME NOT LIKE 'tracking\\_%'",
        )
    }
    (db,) = postal.query(
        "information_schema",
        f"SELECT DEFAULT_COLLATION_NAME AS c FROM SCHEMATA WHERE SCHEMA_NAME = '{database}'",
    )
    versions = [r["version"] for r in postal.query(database, "SELECT version FROM migrations")]
    return {
        "tables": tables,
        "columns": columns,
        "indexes": indexes,
        "collation": db["c"],
        "versions": sorted(versions),
    }


def test_a_message_database_we_make_is_laid_out_as_postals(postal3: Postal, tmp_path: Path) -> None:
    """``tracking.store: mysql`` makes message databases Postal could adopt and migrate."""
    name = f"ptp_own_{secrets.token_hex(4)}"
    try:
        config = write_config(tmp_path, name, store="mysql")
        assert cli(config, "init").returncode == 0
        assert cli(config, "servers", "add", "Mail").returncode == 0
        ours = _layout(postal3, f"{name}-server-1")
        theirs = _layout(postal3, f"{postal3.name}-server-1")
        assert ours["versions"] == theirs["versions"] == list(range(1, 21))
        assert ours["collation"] == theirs["collation"] == "utf8mb4_unicode_ci"
        assert ours["tables"] == theirs["tables"]
        assert ours["columns"] == theirs["columns"]
        assert ours["indexes"] == theirs["indexes"]
    finally:
        drop_mysql_databases(name)


# -- the dashboard's figures ------------------------------------------------------


def test_figures_count_clicks_postals_fast_server_wrote(postal3: Postal, tmp_path: Path) -> None:
    """Postal's own fast server writes ``clicks`` without our writer, so no rollup sees
    them: the all-events figures still count them (read from Postal's tables), the
    people figures and the chart come from our rollups, and both layers agree."""
    from postal_tracking_plugin.store import Filter

    config = write_config(tmp_path, postal3.name)
    assert cli(config, "init").returncode == 0
    store = open_store(load_config(config))
    try:
        server = next(s for s in store.list_servers() if s.name == "Mail")
        link = store.find_link(server.id, LINK_TOKEN)
        assert link is not None
        now = time.time()
        with store.messages(server.id) as db:  # what Postal's fast server does
            db.execute(
                "INSERT INTO clicks (message_id, link_id, ip_address, user_agent, timestamp) "
                "VALUES (%s, %s, '192.0.2.1', 'Mozilla/5.0', %s)",
                (link["message_id"], link["id"], now - 60),
            )
        store.record_events(
            server.id,
            [
                {
                    "event_id": "ours-1",
                    "kind": "click",
                    "method": "GET",
                    "message_id": link["message_id"],
                    "link_id": link["id"],
                    "ip_address": "198.51.100.2",
                    "user_agent": "Mozilla/5.0",
                    "timestamp": now - 30,
                }
            ],
        )
        rolled = store.tracking_stats(server, Filter(tag="november"))
        assert rolled["clicks"]["all"] == {"total": 2, "unique": 1}
        assert rolled["clicks"]["people"] == {"total": 1, "unique": 1}
        assert rolled["top_links"][0]["clicks"] == 2
        exact = store.tracking_overview(server, Filter(tag="november"), exact=True)[0]
        assert rolled == exact
    finally:
        store.close()
