"""rewrite_message: when tracking applies, what is stored (on SQLite and MariaDB), failing open."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import hashlib
import logging
from pathlib import Path

import pytest

import postal_tracking_plugin
from postal_tracking_plugin.config import Config
from postal_tracking_plugin.config import FastServerConfig
from postal_tracking_plugin.config import SmtpServerConfig
from postal_tracking_plugin.rewrite import rewrite_message
from postal_tracking_plugin.store import Server
from postal_tracking_plugin.store import Store

SAMPLE = (
    Path(postal_tracking_plugin.__file__).parent / "data" / "sample-newsletter.eml"
).read_bytes()


@pytest.fixture
def config(backend_config: Config) -> Config:
    return dataclasses.replace(
        backend_config, fast_server=FastServerConfig(enabled=True, bind_address=("127.0.0.1",))
    )


@pytest.fixture
def server(store: Store) -> Server:
    server = store.add_server("Main", "srvtok")
    store.add_track_domain(
        server, "click.example.com", dns_status="OK", excluded_click_domains=["*.linkedin.com"]
    )
    return server


def texts(data: bytes) -> list[tuple[str, str]]:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    return [
        (p.get_content_type(), p.get_content())
        for p in msg.walk()
        if p.get_content_maintype() == "text"
    ]


def links_of(store: Store, server: Server, message_db_id: int) -> list[dict]:
    with store.messages(server.id, readonly=True) as db:
        return db.query("SELECT * FROM links WHERE message_id = %s ORDER BY id", (message_db_id,))


def test_tracked_message_is_stored(store: Store, server: Server, config: Config) -> None:
    result = rewrite_message(
        SAMPLE, config=config, store=store, server="Main", rcpt_to="reader@example.org"
    )
    assert result.tracked and result.reason == "tracked"
    assert result.tracked_links == 14 and result.tracked_images == 1
    assert result.data != SAMPLE
    row = store.find_message(server.id, result.message_token)
    assert row is not None and int(row["id"]) == result.message_db_id
    assert row["scope"] == "outgoing"
    assert row["rcpt_to"] == "reader@example.org"
    assert row["mail_from"] == "news@example.com"
    assert row["subject"] == "The Example Monthly \u2013 November 2026"
    assert row["message_id"] == "monthly-2026-11.8f3a2c@example.com"
    assert row["tag"] == "newsletter"
    assert int(row["tracked_links"]) == 14 and int(row["tracked_images"]) == 1
    assert int(row["parsed"]) == 1
    assert int(row["domain_id"]) == store.get_track_domain("click.example.com").domain_id
    assert float(row["timestamp"]) > 1.7e9
    links = links_of(store, server, result.message_db_id)
    assert len(links) == 14  # one row per occurrence
    text = result.data.decode("ascii", "replace")
    for link in links:
        assert link["hash"] == hashlib.sha1(link["url"].encode()).hexdigest()
        assert f"http://click.example.com/srvtok/{link['token']}" in text.replace("=\n", "")
    assert not any("linkedin" in link["url"] for link in links)
    assert f"http://click.example.com/img/srvtok/{result.message_token}" in text.replace("=\n", "")


def test_https_only_with_an_active_certificate(
    store: Store, server: Server, config: Config
) -> None:
    later = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(days=60)
    store.save_certificate("click.example.com", certificate="PEM", key="KEY", expires_at=later)
    result = rewrite_message(SAMPLE, config=config, store=store, server=server)
    assert result.tracked
    assert b"https://click.example.com/srvtok/" in result.data.replace(b"=\n", b"")


@pytest.mark.parametrize("case", ["disabled", "no-domain", "dns", "x-amp"])
def test_not_tracked(store: Store, server: Server, config: Config, case: str) -> None:
    raw = SAMPLE
    if case == "disabled":
        config = dataclasses.replace(config, fast_server=FastServerConfig())
        reason = "fast_server disabled"
    elif case == "no-domain":
        raw = SAMPLE.replace(
            b'From: "The Example Team" <news@example.com>', b"From: x@other.example"
        )
        reason = "no tracking domain for other.example"
    elif case == "dns":
        store.update_track_domain(store.get_track_domain("click.example.com"), dns_status="Missing")
        reason = "no tracking domain for example.com"
    else:
        raw = SAMPLE.replace(
            b"X-Postal-Tag: newsletter\n", b"X-Postal-Tag: newsletter\nX-AMP: skip\n"
        )
        reason = "X-AMP: skip"
    result = rewrite_message(raw, config=config, store=store, server=server)
    assert not result.tracked and result.reason == reason
    assert result.message_token is None and result.tracked_links == 0
    # nothing tracked, but the +notrack marker and X-AMP never reach the recipient
    assert b"+notrack" not in result.data and b"X-AMP" not in result.data
    head, _, _ = result.data.partition(b"\n\n")
    assert head == raw.replace(b"X-AMP: skip\n", b"").partition(b"\n\n")[0]
    assert texts(result.data) == [(t, c.replace("+notrack", "")) for t, c in texts(raw)]
    with store.messages(server.id, readonly=True) as db:
        assert db.query("SELECT id FROM messages") == []


def test_halves(store: Store, server: Server, config: Config) -> None:
    td = store.get_track_domain("click.example.com")
    store.update_track_domain(td, track_clicks=False)
    result = rewrite_message(SAMPLE, config=config, store=store, server=server)
    assert result.tracked and result.tracked_links == 0 and result.tracked_images == 1
    store.update_track_domain(td, track_clicks=True, track_loads=False)
    result = rewrite_message(SAMPLE, config=config, store=store, server=server)
    assert result.tracked and result.tracked_links == 14 and result.tracked_images == 0
    store.update_track_domain(td, track_clicks=False, track_loads=False)
    result = rewrite_message(SAMPLE, config=config, store=store, server=server)
    assert not result.tracked and "neither" in result.reason


def test_dkim_signed_message_is_untouched_with_a_warning(
    store: Store, server: Server, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    raw = b"DKIM-Signature: v=1; d=example.com; b=xyz\n" + SAMPLE
    with caplog.at_level(logging.WARNING, "postal_tracking_plugin.rewrite"):
        result = rewrite_message(raw, config=config, store=store, server=server)
    assert result.data is raw and not result.tracked
    assert result.reason == "DKIM-Signature present"
    assert "monthly-2026-11.8f3a2c@example.com" in caplog.text and "DKIM" in caplog.text


def test_too_large_message_is_untouched(store: Store, server: Server, config: Config) -> None:
    config = dataclasses.replace(config, smtp_server=SmtpServerConfig(max_message_size=1))
    raw = SAMPLE + b"x" * (1024 * 1024)
    result = rewrite_message(raw, config=config, store=store, server=server)
    assert result.data is raw and not result.tracked and "max_message_size" in result.reason


def test_store_failure_sends_the_original(
    store: Store, server: Server, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    with store.messages(server.id) as db:
        db.execute("DROP TABLE links")
    with caplog.at_level(logging.ERROR, "postal_tracking_plugin.rewrite"):
        result = rewrite_message(SAMPLE, config=config, store=store, server=server)
    assert result.data is SAMPLE and not result.tracked
    assert result.reason.startswith("store failed")
    assert "monthly-2026-11.8f3a2c@example.com" in caplog.text


def test_unknown_server_and_malformed_message_never_raise(
    store: Store, server: Server, config: Config
) -> None:
    result = rewrite_message(SAMPLE, config=config, store=store, server="nope")
    assert result.data is SAMPLE and result.reason == "no server named 'nope'"
    broken = SAMPLE.replace(b'boundary="=_example_alt_7f3e"', b"")
    result = rewrite_message(broken, config=config, store=store, server=server)
    assert result.data is broken and result.reason.startswith("malformed")


@pytest.mark.parametrize(
    ("subject", "stored"),
    [
        (
            "Caf\u00e9 \u65e5\u672c \u2013 news".encode(),
            "Caf\u00e9 \u65e5\u672c \u2013 news",
        ),  # RFC 6532
        (b"=?utf-8?q?caf=C3=A9?= and caf\xc3\xa9", "caf\u00e9 and caf\u00e9"),
        (b"caf\xe9 (not UTF-8)", "caf\ufffd (not UTF-8)"),
    ],
)
def test_eight_bit_subject_is_stored_as_written(
    store: Store, server: Server, config: Config, subject: bytes, stored: str
) -> None:
    raw = (
        b"From: news@example.com\r\nTo: a@example.org\r\nSubject: " + subject + b"\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n<a href='https://a.example/'>x</a>\r\n"
    )
    result = rewrite_message(raw, config=config, store=store, server="Main")
    assert result.tracked
    row = store.find_message(server.id, result.message_token)
    assert row is not None and row["subject"] == stored
