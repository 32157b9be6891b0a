"""The tracking routes on a real server, on SQLite and on MariaDB.

Paths, status codes, bodies and headers are Postal's (POSTAL_COMPAT.md); clicks
and opens land in ``clicks``/``loads`` and ``messages.clicked``/``loaded``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from web_live import LiveServer
from web_live import add_message
from web_live import raw_exchange
from web_live import rows
from web_live import with_settings

from _support import need
from postal_tracking_plugin.errors import StoreError
from postal_tracking_plugin.store import Store
from postal_tracking_plugin.store import open_store


@pytest.fixture
def site(store: Store, backend_config: Any) -> Iterator[dict[str, Any]]:
    config = with_settings(backend_config, tracking={"trusted_proxies": ("10.9.0.0/16",)})
    server = store.add_server("Main")
    message, links = add_message(
        store,
        server.id,
        [
            "https://example.com/offer?utm_source=news&a=%20b",
            "https://bücher.example/straße?q=ä",
            "https://example.com/evil\r\nSet-Cookie: x=1",
        ],
    )
    live = LiveServer(config, store).start()
    yield {"live": live, "server": server, "message": message, "links": links, "store": store}
    live.stop()


def test_click_redirects_to_the_stored_url_and_is_recorded(site: dict[str, Any]) -> None:
    live, server, links = site["live"], site["server"], site["links"]
    response, body = live.request(
        "GET", f"/{server.token}/{links[0]}", {"User-Agent": "Reader/1.0"}
    )
    assert response.status == 307
    assert response.getheader("Location") == "https://example.com/offer?utm_source=news&a=%20b"
    assert response.getheader("Cache-Control") == "no-store"
    assert body == b""
    live.flush()
    clicks = rows(site["store"], server.id, "SELECT * FROM clicks")
    assert [(c["link_id"], c["ip_address"], c["user_agent"]) for c in clicks] == [
        (1, "127.0.0.1", "Reader/1.0")
    ]
    (message,) = rows(site["store"], server.id, "SELECT clicked, loaded FROM messages")
    assert message["clicked"] is not None and message["loaded"] is None


@pytest.mark.parametrize(
    "template",
    [
        "/{server}/{link}/",
        "/{server}/{link}/extra/segments",
        "/{SERVER}/{link}",
        "/{server}/{link}?utm=1",
    ],
)
def test_click_paths_match_postals_prefix_regex(site: dict[str, Any], template: str) -> None:
    token = site["server"].token
    path = template.format(server=token, SERVER=token.upper(), link=site["links"][0])
    response, _ = site["live"].request("GET", path)
    assert response.status == 307
    assert response.getheader("Location").startswith("https://example.com/offer")


def test_non_ascii_urls_are_sent_as_uris(site: dict[str, Any]) -> None:
    response, _ = site["live"].request("GET", f"/{site['server'].token}/{site['links'][1]}")
    assert response.status == 307
    assert response.getheader("Location") == "https://xn--bcher-kva.example/stra%C3%9Fe?q=%C3%A4"


def test_a_stored_url_can_never_split_the_response(site: dict[str, Any]) -> None:
    live = site["live"]
    request = f"GET /{site['server'].token}/{site['links'][2]} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    raw = raw_exchange(live.host, live.http_port, request.encode())
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"Set-Cookie" not in head.split(b"\r\nLocation: ", 1)[0]
    location = [line for line in head.split(b"\r\n") if line.startswith(b"Location: ")]
    assert location == [b"Location: https://example.com/evil%0D%0ASet-Cookie:%20x=1"]


def test_unknown_server_token_and_unknown_link_are_404_pages(site: dict[str, Any]) -> None:
    live = site["live"]
    response, body = live.request("GET", f"/zzzzzz/{site['links'][0]}")
    assert response.status == 404
    assert response.getheader("Content-Type").startswith("text/html")
    assert b"Invalid Server Token" in body
    response, body = live.request("GET", f"/{site['server'].token}/NoSuchLinkToken1")
    assert response.status == 404
    assert b"Link not found" in body and b"<html" in body


def test_pixel_and_opens(site: dict[str, Any]) -> None:
    live, server, store = site["live"], site["server"], site["store"]
    path = f"/img/{server.token}/{site['message']}"
    response, body = live.request("GET", path, {"User-Agent": "Mail/2"})
    assert response.status == 200
    assert response.getheader("Content-Type") == "image/png"
    assert response.getheader("Cache-Control") == "no-store, no-cache, must-revalidate, max-age=0"
    assert body.startswith(b"\x89PNG\r\n\x1a\n") and int(
        response.getheader("Content-Length")
    ) == len(body)
    live.flush()
    (first,) = rows(store, server.id, "SELECT loaded FROM messages")
    response, _ = live.request(
        "GET",
        path.upper()
        .replace(server.token.upper(), server.token)
        .replace(site["message"].upper(), site["message"]),
    )  # /IMG/...
    assert response.status == 200
    live.flush()
    loads = rows(store, server.id, "SELECT ip_address, user_agent FROM loads ORDER BY id")
    assert loads[0] == {"ip_address": "127.0.0.1", "user_agent": "Mail/2"} and len(loads) == 2
    (second,) = rows(store, server.id, "SELECT loaded FROM messages")
    assert first["loaded"] is not None and second["loaded"] == first["loaded"]  # first open only


def test_pixel_for_an_unknown_message_is_served_and_counts_nothing(site: dict[str, Any]) -> None:
    live, server = site["live"], site["server"]
    response, body = live.request("GET", f"/img/{server.token}/UnknownMessage00")
    assert response.status == 200 and body.startswith(b"\x89PNG")
    response, _ = live.request("GET", f"/img/zzzzzz/{site['message']}")
    assert response.status == 404
    live.flush()
    assert rows(site["store"], server.id, "SELECT id FROM loads") == []


def test_pixel_refuses_src_parameter(site: dict[str, Any]) -> None:
    path = f"/img/{site['server'].token}/{site['message']}?src=http://169.254.169.254/"
    response, _ = site["live"].request("GET", path)
    assert response.status == 400


def test_head_answers_like_get_but_counts_nothing(site: dict[str, Any]) -> None:
    live, server, store = site["live"], site["server"], site["store"]
    click = f"/{server.token}/{site['links'][0]}"
    pixel = f"/img/{server.token}/{site['message']}"
    get_click, _ = live.request("GET", f"/{server.token}/{site['links'][1]}")  # flushes a barrier
    head_click, body = live.request("HEAD", click)
    assert head_click.status == 307 and body == b""
    assert head_click.getheader("Location") == "https://example.com/offer?utm_source=news&a=%20b"
    head_pixel, body = live.request("HEAD", pixel)
    assert head_pixel.status == 200 and body == b""
    assert head_pixel.getheader("Content-Type") == "image/png"
    live.flush()
    assert [c["link_id"] for c in rows(store, server.id, "SELECT link_id FROM clicks")] == [2]
    assert rows(store, server.id, "SELECT id FROM loads") == []
    assert get_click.status == 307


def test_forwarded_for_is_believed_only_from_trusted_proxies(site: dict[str, Any]) -> None:
    live, server, store = site["live"], site["server"], site["store"]
    path = f"/{server.token}/{site['links'][0]}"
    # The test client is 127.0.0.1, not in tracking.trusted_proxies: the header is ignored.
    live.request("GET", path, {"X-Forwarded-For": "198.51.100.9"})
    live.flush()
    assert [c["ip_address"] for c in rows(store, server.id, "SELECT ip_address FROM clicks")] == [
        "127.0.0.1"
    ]


def test_forwarded_for_from_a_trusted_proxy(store: Store, backend_config: Any) -> None:
    config = with_settings(backend_config, tracking={"trusted_proxies": ("127.0.0.0/8",)})
    server = store.add_server("Main")
    _, links = add_message(store, server.id, ["https://example.com/"])
    live = LiveServer(config, store).start()
    try:
        path = f"/{server.token}/{links[0]}"
        # client, then a second trusted hop: the rightmost untrusted address is the client
        live.request("GET", path, {"X-Forwarded-For": "6.6.6.6, 198.51.100.9, 127.0.0.5"})
        live.request("GET", path, {"X-Forwarded-For": "not-an-address"})
        live.flush()
    finally:
        live.stop()
    found = [
        c["ip_address"] for c in rows(store, server.id, "SELECT ip_address FROM clicks ORDER BY id")
    ]
    assert found == ["198.51.100.9", "127.0.0.1"]


def test_acme_challenge_answer_comes_from_the_store(site: dict[str, Any]) -> None:
    live, store = site["live"], site["store"]
    store.save_certificate(
        "click.example.com",
        verification_path="/.well-known/acme-challenge/tok-123_ABC",
        verification_string="tok-123_ABC.thumbprint",
    )
    path = "/.well-known/acme-challenge/tok-123_ABC"
    response, body = live.request("GET", path, {"Host": "click.example.com:5010"})
    assert (response.status, body) == (200, b"tok-123_ABC.thumbprint")
    response, _ = live.request("GET", path, {"Host": "other.example.com"})
    assert response.status == 404
    response, _ = live.request(
        "GET", "/.well-known/acme-challenge/other", {"Host": "click.example.com"}
    )
    assert response.status == 404


def test_anything_else_says_hello_and_health_reports_the_store(site: dict[str, Any]) -> None:
    live = site["live"]
    for path in ("/", "/favicon.ico", "/robots.txt", "/a_b/c", "/.git/config"):
        response, body = live.request("GET", path)
        assert (response.status, body) == (200, b"Hello."), path
    response, body = live.request("POST", "/")
    assert (response.status, body) == (200, b"Hello.")
    response, body = live.request("GET", "/health")
    assert response.status == 200 and body == b"ok\n"


def test_ipv6_loopback(store: Store, backend_config: Any) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        reason = None
    except OSError as exc:
        reason = f"no IPv6 loopback on this machine: {exc}"
    need(reason is None, reason or "")
    server = store.add_server("Main")
    _, links = add_message(store, server.id, ["https://example.com/v6"])
    live = LiveServer(backend_config, store, host="::1").start()
    try:
        response, _ = live.request("GET", f"/{server.token}/{links[0]}")
        live.flush()
    finally:
        live.stop()
    assert response.status == 307 and response.getheader("Location") == "https://example.com/v6"
    assert [c["ip_address"] for c in rows(store, server.id, "SELECT ip_address FROM clicks")] == [
        "::1"
    ]


class FlakyStore:
    """The real store, until ``down`` is set: then every call fails as a dead database does."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise StoreError("cannot connect to MySQL (test: the database is down)")
            return attribute(*args, **kwargs)

        return call


def test_known_links_keep_working_while_the_store_is_down(write_config: Any) -> None:
    config = write_config({"tracking": {"data_dir": "data"}})
    real = open_store(config)
    real.create_schema()
    server = real.add_server("Main")
    _, links = add_message(
        real, server.id, ["https://example.com/known", "https://example.com/new"]
    )
    flaky = FlakyStore(real)
    live = LiveServer(config, flaky, prefetch=False).start()  # the on-demand path
    try:
        path = f"/{server.token}/{links[0]}"
        assert live.request("GET", path)[0].status == 307
        flaky.down = True
        response, _ = live.request("GET", path)
        assert (
            response.status == 307 and response.getheader("Location") == "https://example.com/known"
        )
        response, _ = live.request("GET", f"/{server.token}/{links[1]}")  # never looked up: 503
        assert response.status == 503 and response.getheader("Retry-After")
        assert live.request("GET", "/health")[0].status == 503
        flaky.down = False
        assert live.request("GET", f"/{server.token}/{links[1]}")[0].status == 307
        live.flush()
    finally:
        live.stop()
        real.close()
    assert len(rows(real, server.id, "SELECT id FROM clicks")) == 3


def test_links_written_after_start_are_read_ahead_of_their_first_click(write_config: Any) -> None:
    config = write_config({"tracking": {"data_dir": "data"}})
    real = open_store(config)
    real.create_schema()
    server = real.add_server("Main")
    flaky = FlakyStore(real)
    live = LiveServer(config, flaky).start()
    try:
        message, links = add_message(real, server.id, ["https://example.com/sent-later"])
        deadline = time.monotonic() + 30
        while live.worker.lookup.sizes()["links"] < 1 or live.worker.lookup.sizes()["messages"] < 1:
            assert time.monotonic() < deadline, "the new link was not read ahead"
            time.sleep(0.1)
        flaky.down = True  # first click and first open, with the database gone
        response, _ = live.request("GET", f"/{server.token}/{links[0]}")
        assert (
            response.status == 307
            and response.getheader("Location") == "https://example.com/sent-later"
        )
        assert live.request("GET", f"/img/{server.token}/{message}")[0].status == 200
        flaky.down = False
        live.flush()
    finally:
        live.stop()
        real.close()
    assert len(rows(real, server.id, "SELECT id FROM clicks")) == 1
    assert len(rows(real, server.id, "SELECT id FROM loads")) == 1


def test_wsgi_entry_for_gunicorn(write_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from postal_tracking_plugin.web import wsgi
    from postal_tracking_plugin.web.app import tracking_state

    config = write_config({"tracking": {"data_dir": "data"}})
    store = open_store(config)
    store.create_schema()
    server = store.add_server("Main")
    _, links = add_message(store, server.id, ["https://example.com/gunicorn"])
    monkeypatch.setenv("POSTAL_TRACKING_CONFIG", str(config.source))
    monkeypatch.setattr(wsgi, "_app", None)
    app = wsgi.app
    try:
        client = app.test_client()
        response = client.get(
            f"/{server.token}/{links[0]}", environ_base={"REMOTE_ADDR": "192.0.2.8"}
        )
        assert response.status_code == 307
        assert response.headers["Location"] == "https://example.com/gunicorn"
        assert client.get("/").data == b"Hello."
        assert tracking_state(app).recorder.flush(10)
    finally:
        tracking_state(app).recorder.stop()
        tracking_state(app).store.close()
        monkeypatch.setattr(wsgi, "_app", None)
    clicks = rows(store, server.id, "SELECT ip_address FROM clicks")
    store.close()
    assert [c["ip_address"] for c in clicks] == ["192.0.2.8"]
