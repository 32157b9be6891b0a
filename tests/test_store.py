"""The store on both backends (each test runs on SQLite and on a fresh MariaDB database)."""

from __future__ import annotations

import re

import pymysql
import pytest

from _support import MYSQL
from postal_tracking_plugin.errors import AlreadyExists
from postal_tracking_plugin.errors import NotFound
from postal_tracking_plugin.errors import StoreError
from postal_tracking_plugin.store import Link
from postal_tracking_plugin.store import Store
from postal_tracking_plugin.store import random_token
from postal_tracking_plugin.store import url_hash


def test_servers(store: Store) -> None:
    server = store.add_server("Main Mail")
    assert re.fullmatch(r"[a-z]{6}", server.token)
    assert server.permalink == "main-mail"
    chosen = store.add_server("Other", token="abcdef")
    assert chosen.token == "abcdef"
    assert [s.name for s in store.list_servers()] == ["Main Mail", "Other"]
    assert store.get_server("abcdef") == chosen
    assert store.server_by_token(server.token) == server
    assert store.server_by_token("zzzzzz") is None
    assert store.message_database_exists(server.id)
    with pytest.raises(AlreadyExists):
        store.add_server("Main Mail")
    with pytest.raises(AlreadyExists):
        store.add_server("Third", token="abcdef")
    with pytest.raises(StoreError, match="6 lowercase letters"):
        store.add_server("Bad", token="ABC")
    with pytest.raises(NotFound, match="servers list"):
        store.get_server("nope")


def test_track_domains(store: Store) -> None:
    server = store.add_server("Main")
    td = store.add_track_domain(
        server, "Click.Example.com", excluded_click_domains=["a.com", "*.b.com"], dns_status="OK"
    )
    assert td.full_name == "click.example.com"
    assert (td.name, td.domain_name) == ("click", "example.com")
    assert td.excluded_click_domains == ("a.com", "*.b.com")
    assert td.ssl_enabled and td.track_clicks and td.track_loads and td.dns_ok
    assert store.track_domain_for_sender(server.id, "EXAMPLE.com") == td
    # Postal's rules: one tracking domain per sending domain and server, and
    # a first label of [a-z0-9-] only
    with pytest.raises(AlreadyExists, match="one per domain and server"):
        store.add_track_domain(server, "t.example.com")
    with pytest.raises(AlreadyExists):
        store.add_track_domain(server, "click.example.com")
    with pytest.raises(StoreError, match="full name"):
        store.add_track_domain(server, "localhost")
    with pytest.raises(StoreError, match="only a-z, 0-9 and '-'"):
        store.add_track_domain(server, "cl_ick.example.org")
    td2 = store.add_track_domain(server, "t.example.org", dns_status="Missing")
    assert td2.domain_id != td.domain_id

    changed = store.update_track_domain(td, track_loads=False, excluded_click_domains=[])
    assert changed.track_loads is False and changed.excluded_click_domains == ()
    assert [d.full_name for d in store.list_track_domains(server.id)] == [
        "click.example.com",
        "t.example.org",
    ]
    store.update_track_domain(td, dns_status="Invalid", dns_error="points elsewhere")
    assert store.track_domain_for_sender(server.id, "example.com") is None
    store.remove_track_domain(td2)
    assert store.find_track_domain("t.example.org") is None
    with pytest.raises(NotFound):
        store.get_track_domain("t.example.org")


def test_an_organisations_domain_is_used_not_shadowed(store: Store) -> None:
    """Postal picks a name's domains row by ``owner_type DESC``: a new server-owned row would win."""
    server = store.add_server("Main")
    with store.main() as db:
        db.execute("UPDATE servers SET organization_id = 7 WHERE id = %s", (server.id,))
        org_domain = db.insert(
            "INSERT INTO domains (name, owner_type, owner_id, dkim_private_key, outgoing) "
            "VALUES ('orgmail.com', 'Organization', 7, 'KEY', 1)"
        )
    server = store.get_server("Main")
    td = store.add_track_domain(server, "click.orgmail.com", dns_status="OK")
    assert td.domain_id == org_domain
    with store.main(readonly=True) as db:
        rows = db.query("SELECT id, owner_type FROM domains WHERE name = 'orgmail.com'")
    assert [(r["id"], r["owner_type"]) for r in rows] == [(org_domain, "Organization")]


def test_a_message_is_stored_pending_as_postal_writes_it(store: Store) -> None:
    server = store.add_server("Main")
    message_id = store.save_tracked_message(server.id, {"token": random_token()}, [])
    with store.messages(server.id, readonly=True) as db:
        row = db.one("SELECT status FROM messages WHERE id = %s", (message_id,))
    assert row == {"status": "Pending"}


def test_messages_links_clicks_loads(store: Store) -> None:
    server = store.add_server("Main")
    links = [
        Link(random_token(), "https://example.com/a?x=1&y=2"),
        Link(random_token(), "https://ü.example/ö"),
    ]
    message_id = store.save_tracked_message(
        server.id,
        {
            "token": "Msg0000000000001",
            "scope": "outgoing",
            "timestamp": 1700000000.5,
            "parsed": 1,
            "tracked_links": 2,
            "tracked_images": 1,
            "subject": "Hello ✓",
        },
        links,
    )
    found = store.find_link(server.id, links[1].token)
    assert found is not None
    assert found["url"] == "https://ü.example/ö"
    assert found["message_id"] == message_id
    assert store.find_link(server.id, "missing") is None
    message = store.find_message(server.id, "Msg0000000000001")
    assert message is not None and message["subject"] == "Hello ✓"
    assert message["loaded"] is None and message["clicked"] is None

    store.record_clicks(server.id, [(message_id, found["id"], "192.0.2.1", "UA", 1700000100.25)])
    store.record_clicks(server.id, [(message_id, found["id"], "192.0.2.1", "UA", 1700000050.0)])
    store.record_loads(server.id, [(message_id, "192.0.2.2", "UA2", 1700000010.0)])
    store.record_loads(server.id, [(message_id, "192.0.2.2", "UA2", 1700000020.0)])
    message = store.find_message(server.id, "Msg0000000000001")
    assert float(message["clicked"]) == pytest.approx(1700000100.25)  # the latest click
    assert float(message["loaded"]) == pytest.approx(1700000010.0)  # the first open only
    with store.messages(server.id) as db:
        clicks = db.query("SELECT * FROM clicks ORDER BY id")
        stored = db.query("SELECT hash, url FROM links ORDER BY id")
        loads = db.one("SELECT COUNT(*) AS n FROM loads")
    assert [c["ip_address"] for c in clicks] == ["192.0.2.1", "192.0.2.1"]
    assert stored[0]["hash"] == url_hash("https://example.com/a?x=1&y=2")
    assert loads["n"] == 2


def test_certificates(store: Store) -> None:
    assert store.get_certificate("click.example.com") is None
    store.save_certificate(
        "Click.example.com",
        verification_path="/.well-known/acme-challenge/t",
        verification_string="t.abc",
    )
    cert = store.save_certificate("click.example.com", certificate="PEM", key="KEY")
    assert cert.verification_string == "t.abc"
    assert cert.certificate == "PEM"
    assert not cert.active  # no expiry recorded
    assert [c.domain for c in store.list_certificates()] == ["click.example.com"]


def test_create_schema_is_idempotent(store: Store) -> None:
    server = store.add_server("Main")
    store.create_schema()
    store.create_schema()
    assert store.list_servers() == [server]
    with store.main() as db:
        versions = db.query("SELECT version FROM tracking_migrations")
    assert versions and len({v["version"] for v in versions}) == len(versions)


def test_bot_check_reads_clicks_from_the_covering_index_alone(store: Store) -> None:
    server = store.add_server("Main")
    name = "on_message_kind_ip_time_link_bot"
    sql = (
        "SELECT message_id, ip_address, link_id, MAX(timestamp) AS last, MIN(bot) AS min_bot "
        "FROM tracking_events "
        "WHERE kind = 'click' AND message_id IN (1, 2) AND timestamp >= 5 "
        "AND ip_address IN ('192.0.2.1') GROUP BY message_id, ip_address, link_id"
    )
    with store.messages(server.id) as db:
        if db.dialect == "mysql":
            rows = db.query("EXPLAIN " + sql)
            plan = " ".join(f"{r.get('possible_keys')} {r.get('Extra')}" for r in rows)
            assert "Using index" in plan  # no row lookups
        else:
            plan = " ".join(str(r["detail"]) for r in db.query("EXPLAIN QUERY PLAN " + sql))
            assert "COVERING INDEX" in plan
        assert name in plan
        if db.dialect == "mysql":
            indexes = {r["Key_name"] for r in db.query("SHOW INDEX FROM tracking_events")}
        else:
            indexes = {r["name"] for r in db.query("PRAGMA index_list(tracking_events)")}
        # The indexes it replaced (each a prefix of it) are gone.
        assert not any(i.endswith(("on_message_kind", "on_message_kind_ip_time")) for i in indexes)
        # Runs that made an index but stopped before recording the version.
        db.execute("DELETE FROM tracking_migrations WHERE version IN (3, 4)")
    store.create_message_schema(server.id)
    with store.messages(server.id) as db:
        assert (
            db.one("SELECT COUNT(*) AS n FROM tracking_migrations WHERE version IN (3, 4)")["n"]
            == 2
        )


def test_transaction_rolls_back_on_error(store: Store) -> None:
    store.add_server("Main")
    with pytest.raises(RuntimeError):
        with store.main() as db:
            db.execute("UPDATE servers SET name = %s", ("Renamed",))
            raise RuntimeError("boom")
    assert store.list_servers()[0].name == "Main"


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_mysql_reconnects_after_losing_its_connections(store: Store) -> None:
    server = store.add_server("Main")
    with store.main() as db:
        own = db.one("SELECT CONNECTION_ID() AS id")["id"]
    with store.main() as db:  # the same pooled connection, killed under our feet
        assert db.one("SELECT CONNECTION_ID() AS id")["id"] == own
    admin = pymysql.connect(
        host=MYSQL["host"], port=MYSQL["port"], user=MYSQL["username"], password=MYSQL["password"]
    )
    with admin.cursor() as cursor:
        cursor.execute(f"KILL {int(own)}")
    admin.close()
    with pytest.raises(StoreError, match="Lost connection|gone away"):
        store.list_servers()
    assert store.list_servers() == [server]  # a fresh connection


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_mysql_connections_share_one_tls_context(store: Store) -> None:
    # PyMySQL builds a TLS context (loading the CA store) per connection unless
    # told otherwise; a stall of the whole event loop on every new connection.
    with store.main() as main_db, store.messages(store.add_server("Main").id) as message_db:
        contexts = [db._cursor.connection.ctx for db in (main_db, message_db)]
    assert contexts[0] is not None and contexts[0] is contexts[1]
