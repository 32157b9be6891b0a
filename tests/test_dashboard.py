"""The dashboard through Flask's test client: accounts, sessions, CSRF, pages, settings.

The browser tests (tests/test_dashboard_browser.py) drive the same app in Chromium.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from typing import Any

import pytest
from flask.testing import FlaskClient
from test_stats import campaign  # noqa: F401 - the fixture, shared with the stats tests

from postal_tracking_plugin.cli import main
from postal_tracking_plugin.config import Config
from postal_tracking_plugin.errors import ConfigError
from postal_tracking_plugin.rewrite import rewrite_message
from postal_tracking_plugin.store import Store
from postal_tracking_plugin.web.dashboard import create_app
from postal_tracking_plugin.web.dashboard.listen import dashboard_address

EMAIL, PASSWORD = "ops@example.com", "correct horse battery"


def _cli(config: Config, *args: str, stdin: str | None = None, monkeypatch: Any = None) -> int:
    assert config.source
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(["-c", config.source, *args])


@pytest.fixture
def account(store: Store, backend_config: Config, monkeypatch: Any) -> str:
    assert (
        _cli(
            backend_config,
            "users",
            "add",
            EMAIL,
            "--password-stdin",
            stdin=PASSWORD + "\n",
            monkeypatch=monkeypatch,
        )
        == 0
    )
    return EMAIL


@pytest.fixture
def client(store: Store, backend_config: Config, account: str) -> FlaskClient:
    app = create_app(backend_config, store, secret_key=b"test" * 8)
    return app.test_client()


def _csrf(client: FlaskClient, path: str = "/login") -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def _login(client: FlaskClient, password: str = PASSWORD) -> Any:
    return client.post(
        "/login", data={"email": EMAIL, "password": password, "csrf_token": _csrf(client)}
    )


def test_users_commands(
    store: Store, backend_config: Config, monkeypatch: Any, capsys: Any
) -> None:
    add = ("users", "add", "A@Example.com", "--password-stdin")
    assert _cli(backend_config, *add, stdin="short\n", monkeypatch=monkeypatch) == 1
    assert "too short" in capsys.readouterr().err
    assert _cli(backend_config, *add, stdin="long enough pw\n", monkeypatch=monkeypatch) == 0
    row = store.find_dashboard_user("a@example.com")
    assert row and row["password_hash"].startswith("scrypt:")
    assert "long enough" not in row["password_hash"]
    assert _cli(backend_config, *add, stdin="long enough pw\n", monkeypatch=monkeypatch) == 1
    assert "exists already" in capsys.readouterr().err
    assert _cli(backend_config, "users", "list") == 0
    assert "a@example.com" in capsys.readouterr().out
    old = row["password_hash"]
    assert (
        _cli(
            backend_config,
            "users",
            "passwd",
            "a@example.com",
            "--password-stdin",
            stdin="another password\n",
            monkeypatch=monkeypatch,
        )
        == 0
    )
    assert store.find_dashboard_user("a@example.com")["password_hash"] != old
    assert _cli(backend_config, "users", "remove", "a@example.com") == 0
    assert store.find_dashboard_user("a@example.com") is None
    assert _cli(backend_config, "users", "remove", "a@example.com") == 1
    assert "no dashboard user a@example.com" in capsys.readouterr().err


def test_no_default_account(store: Store, backend_config: Config) -> None:
    client = create_app(backend_config, store, secret_key=b"k" * 32).test_client()
    assert store.list_dashboard_users() == []
    token = _csrf(client)
    for email, password in (("admin", "admin"), ("admin@example.com", "password")):
        r = client.post("/login", data={"email": email, "password": password, "csrf_token": token})
        assert r.status_code == 401


def test_login_refuses_a_wrong_password_then_logs_in(client: FlaskClient) -> None:
    assert client.get("/").status_code == 302  # to the login form
    r = _login(client, "wrong password")
    assert r.status_code == 401 and "Wrong e-mail address or password" in r.get_data(as_text=True)
    assert client.get("/health").status_code == 302
    r = _login(client)
    assert r.status_code == 302
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    health = client.get("/health")
    assert health.status_code == 200 and "reachable" in health.get_data(as_text=True)


def test_cookie_is_secure_over_https(store: Store, backend_config: Config, account: str) -> None:
    client = create_app(backend_config, store, secret_key=b"k" * 32).test_client()
    page = client.get("/login", base_url="https://localhost").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token
    r = client.post(
        "/login",
        data={"email": EMAIL, "password": PASSWORD, "csrf_token": token.group(1)},
        base_url="https://localhost",
    )
    assert r.status_code == 302 and "Secure" in r.headers["Set-Cookie"]


def _behind_proxy(config: Config, proxies: tuple[str, ...]) -> Config:
    dashboard = dataclasses.replace(config.tracking.dashboard, trusted_proxies=proxies)
    return dataclasses.replace(
        config, tracking=dataclasses.replace(config.tracking, dashboard=dashboard)
    )


def _login_from(client: FlaskClient, peer: str, headers: dict[str, str]) -> Any:
    env = {"REMOTE_ADDR": peer}
    page = client.get("/login", headers=headers, environ_base=env).get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token
    return client.post(
        "/login",
        data={"email": EMAIL, "password": PASSWORD, "csrf_token": token.group(1)},
        headers=headers,
        environ_base=env,
    )


def test_cookie_is_secure_behind_a_trusted_tls_proxy(
    store: Store, backend_config: Config, account: str
) -> None:
    """``tracking.dashboard.trusted_proxies``: X-Forwarded-Proto is believed from those
    peers only; off by default."""
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"}
    default = create_app(backend_config, store, secret_key=b"k" * 32).test_client()
    r = _login_from(default, "10.0.0.2", forwarded)
    assert r.status_code == 302 and "Secure" not in r.headers["Set-Cookie"]

    config = _behind_proxy(backend_config, ("10.0.0.0/24",))
    app = create_app(config, store, secret_key=b"k" * 32)
    r = _login_from(app.test_client(), "10.0.0.2", forwarded)
    assert r.status_code == 302 and "Secure" in r.headers["Set-Cookie"]
    with store.main(readonly=True) as db:
        addresses = {
            r["address"] for r in db.query("SELECT address FROM tracking_dashboard_sessions")
        }
    assert "198.51.100.7" in addresses  # the client, not the proxy

    # A client reaching the dashboard directly cannot claim HTTPS.
    r = _login_from(app.test_client(), "192.0.2.9", forwarded)
    assert r.status_code == 302 and "Secure" not in r.headers["Set-Cookie"]


def test_trusted_proxies_must_be_addresses(write_config: Any) -> None:
    with pytest.raises(ConfigError, match=r"tracking.dashboard.trusted_proxies\[0\]"):
        write_config({"tracking": {"dashboard": {"trusted_proxies": ["proxy.example"]}}})


def test_failed_logins_are_throttled_per_account_and_address(client: FlaskClient) -> None:
    for _ in range(5):
        assert _login(client, "wrong password").status_code == 401
    r = _login(client)  # the right password, too late
    assert r.status_code == 429 and "Too many failed logins" in r.get_data(as_text=True)


def test_the_throttle_is_shared_by_every_process_on_the_store(
    store: Store, backend_config: Config, account: str
) -> None:
    """Failures counted by one worker (one app, one store connection) stop another:
    a second ``open_store`` stands in for a second gunicorn worker."""
    from postal_tracking_plugin.store import open_store

    other_store = open_store(backend_config)
    try:
        first = create_app(backend_config, store, secret_key=b"test" * 8).test_client()
        second = create_app(backend_config, other_store, secret_key=b"test" * 8).test_client()
        for n in range(5):
            worker = first if n % 2 else second
            assert _login(worker, "wrong password").status_code == 401
        assert _login(first).status_code == 429
        assert _login(second).status_code == 429
        with store.main(readonly=True) as db:
            kept = {
                r["key_hash"]
                for r in db.query("SELECT key_hash FROM tracking_dashboard_login_failures")
            }
        assert len(kept) == 2 and not any(EMAIL in k for k in kept)  # hashed
    finally:
        other_store.close()


def test_the_throttle_forgets_failures_older_than_its_window(store: Store) -> None:
    from postal_tracking_plugin.web.dashboard._auth import LoginThrottle

    throttle = LoginThrottle(store, limit=2, window=900)
    keys = ["addr:192.0.2.1", "user:a@example.com"]
    throttle.failed(keys, now=1000.0)
    assert throttle.wait(keys, now=1001.0) == 0
    throttle.failed(["user:a@example.com"], now=1100.0)
    assert throttle.wait(keys, now=1200.0) == pytest.approx(700.0)  # until 1000 + 900
    assert throttle.wait(["addr:192.0.2.1"], now=1200.0) == 0  # one failure for the address
    assert throttle.wait(keys, now=1900.5) == 0  # the first failure aged out
    throttle.failed(keys, now=1950.0)
    throttle.succeeded(keys)
    assert throttle.wait(keys, now=1951.0) == 0


def test_a_form_without_its_csrf_token_changes_nothing(client: FlaskClient, store: Store) -> None:
    r = client.post("/login", data={"email": EMAIL, "password": PASSWORD})
    assert r.status_code == 400
    assert client.get("/health").status_code == 302  # not logged in
    server = store.add_server("Main")
    store.add_track_domain(server, "click.example.com", dns_status="OK")
    _login(client)
    r = client.post("/domains/click.example.com", data={"excluded_click_domains": "evil.example"})
    assert r.status_code == 400
    r = client.post(
        "/domains/click.example.com",
        data={"excluded_click_domains": "evil.example", "csrf_token": "forged"},
    )
    assert r.status_code == 400
    assert store.get_track_domain("click.example.com").excluded_click_domains == ()


def test_logout_ends_the_session_even_for_a_copied_cookie(client: FlaskClient) -> None:
    _login(client)
    cookie = client.get_cookie("postal_tracking_dashboard")
    assert cookie is not None
    copied = cookie.value
    token = _csrf(client, "/health")
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/health").status_code == 302
    client.set_cookie("postal_tracking_dashboard", copied)  # replay the old cookie
    assert client.get("/health").status_code == 302


def _figures(html: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r'<td class="n" id="([a-z-]+)">(\d+)</td>', html)}


def test_overview_shows_the_numbers_stats_gives(
    client: FlaskClient,
    backend_config: Config,
    campaign: dict[str, Any],  # noqa: F811
    capsys: Any,
) -> None:
    assert backend_config.source
    _login(client)
    server = campaign["server"]
    html = client.get(f"/servers/{server.token}/").get_data(as_text=True)
    assert main(["-c", backend_config.source, "stats", "--json", "--server", "Main"]) == 0
    (report,) = json.loads(capsys.readouterr().out)["servers"]
    assert _figures(html) == {
        "sent": report["messages"]["sent"],
        "tracked": report["messages"]["tracked"],
        "opens-all": report["opens"]["all"]["total"],
        "opens-people": report["opens"]["people"]["total"],
        "unique-opens-all": report["opens"]["all"]["unique"],
        "unique-opens-people": report["opens"]["people"]["unique"],
        "clicks-all": report["clicks"]["all"]["total"],
        "clicks-people": report["clicks"]["people"]["total"],
        "unique-clicks-all": report["clicks"]["all"]["unique"],
        "unique-clicks-people": report["clicks"]["people"]["unique"],
    }
    assert _figures(html)["opens-all"] == 4
    assert "<svg" in html and "apple-privacy-proxy" in html and "scanner-user-agent" in html
    # The chart's table: this hour's counted opens, 3 people and 1 machine (Apple's proxy).
    series = re.search(r'<table id="series">(.*?)</table>', html, re.S)
    assert series and re.search(r'<td class="n">3</td><td class="n">1</td>', series.group(1))
    # A range with nothing in it, and a tag nobody used.
    empty = client.get(f"/servers/{server.token}/?from=2001-01-01&to=2001-01-02")
    assert _figures(empty.get_data(as_text=True))["opens-all"] == 0
    tagged = client.get(f"/servers/{server.token}/?tag=nobody").get_data(as_text=True)
    assert _figures(tagged)["sent"] == 0 and _figures(tagged)["clicks-all"] == 0


def test_message_search_and_timeline(
    client: FlaskClient,
    campaign: dict[str, Any],  # noqa: F811
) -> None:
    _login(client)
    server = campaign["server"]
    found = client.get(f"/servers/{server.token}/messages?rcpt=reader2").get_data(as_text=True)
    c = campaign["messages"][2]
    assert c["token"] in found and campaign["messages"][0]["token"] not in found
    html = client.get(f"/servers/{server.token}/messages/{c['token']}").get_data(as_text=True)
    rows = re.findall(r'<tr class="event">(.*?)</tr>', html, re.S)
    assert len(rows) == 3  # the proxy open, the scanner's click, the HEAD probe
    joined = " ".join(rows)
    assert "apple-privacy-proxy" in joined and "scanner-user-agent" in joined
    assert "head-request" in joined and "not counted" in joined
    assert "https://shop.example.com/terms" in joined
    links = client.get(f"/servers/{server.token}/links").get_data(as_text=True)
    assert "https://shop.example.com/sale" in links


def test_settings_change_excluded_domains_and_the_next_message_honours_them(
    client: FlaskClient, store: Store, backend_config: Config
) -> None:
    server = store.add_server("Main")
    store.add_track_domain(server, "click.example.com", dns_status="OK")
    _login(client)
    token = _csrf(client, "/domains/click.example.com")
    r = client.post(
        "/domains/click.example.com",
        data={
            "csrf_token": token,
            "track_clicks": "on",
            "track_loads": "on",
            "excluded_click_domains": "partner.example.org\n*.cdn.example.net",
        },
    )
    assert r.status_code == 302
    td = store.get_track_domain("click.example.com")
    assert td.excluded_click_domains == ("partner.example.org", "*.cdn.example.net")
    assert not td.ssl_enabled and td.track_clicks
    raw = (
        b"From: news@example.com\r\nTo: reader@example.net\r\nSubject: hi\r\n"
        b"Content-Type: text/html\r\n\r\n"
        b'<p><a href="https://partner.example.org/x">p</a> <a href="https://shop.example.com/y">s</a>'
        b' <a href="https://img.cdn.example.net/z">c</a></p>\r\n'
    )
    sending = dataclasses.replace(
        backend_config,
        fast_server=dataclasses.replace(
            backend_config.fast_server, enabled=True, bind_address=("127.0.0.1",)
        ),
    )
    result = rewrite_message(raw, config=sending, store=store, server=server)
    assert result.reason == "tracked"
    body = result.data.decode()
    assert "https://partner.example.org/x" in body and "https://img.cdn.example.net/z" in body
    assert "https://shop.example.com/y" not in body and result.tracked_links == 1


def test_postal_mode_shows_settings_read_only(
    store: Store, backend_config: Config, account: str, monkeypatch: Any
) -> None:
    """The store decides (``check_changeable``, refused by PostalStore), not the config string."""
    from postal_tracking_plugin.store._postal import _refuse

    server = store.add_server("Main")
    store.add_track_domain(server, "click.example.com", dns_status="OK")
    monkeypatch.setattr(store, "check_changeable", _refuse)
    client = create_app(backend_config, store, secret_key=b"k" * 32).test_client()
    _login(client)
    html = client.get("/domains/click.example.com").get_data(as_text=True)
    assert "web interface owns these settings" in html and "<fieldset disabled" in html
    assert 'id="check-dns"' not in html
    token = _csrf(client, "/domains/click.example.com")
    r = client.post(
        "/domains/click.example.com",
        data={"csrf_token": token, "excluded_click_domains": "x.example"},
    )
    assert r.status_code == 403
    assert store.get_track_domain("click.example.com").excluded_click_domains == ()


def test_domains_list_uses_the_words_of_certs_list(
    client: FlaskClient, store: Store, backend_config: Config, capsys: Any
) -> None:
    server = store.add_server("Main")
    store.add_track_domain(server, "click.example.com", dns_status="OK")
    store.add_track_domain(server, "t.example.org", dns_status="Missing", ssl_enabled=False)
    _login(client)
    html = client.get("/domains").get_data(as_text=True)
    statuses = re.findall(r'<td class="cert-status">(\w+)', html)
    assert backend_config.source
    assert main(["-c", backend_config.source, "certs", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    words = [line.split()[1] for line in out[1:] if line and not line.startswith(" ")]
    assert statuses == words == ["pending", "none"]


def test_listen_address_is_never_the_fast_servers(write_config: Any) -> None:
    config = write_config({"fast_server": {"enabled": True, "bind_address": ["192.0.2.10"]}})
    assert dashboard_address(config) == ("127.0.0.1", 5020)
    assert dashboard_address(config, "[::1]:6000") == ("::1", 6000)
    for bad, words in (
        ("192.0.2.10:5020", "tracking IP"),
        ("0.0.0.0:5020", "every address"),
        ("nonsense", "is not HOST:PORT"),
    ):
        with pytest.raises(ConfigError, match=words):
            dashboard_address(config, bad)
    with pytest.raises(ConfigError, match="fast server's"):
        dashboard_address(write_config({}), "127.0.0.1:5010")


def test_check_dns_now_and_get_the_certificate_now(
    client: FlaskClient, store: Store, monkeypatch: Any
) -> None:
    from postal_tracking_plugin.dns_check import DnsResult

    server = store.add_server("Main")
    store.add_track_domain(server, "click.example.com", dns_status="OK")
    _login(client)
    wrong = "There is a CNAME record at click.example.com but it points to elsewhere.example."
    monkeypatch.setattr(  # no DNS traffic from tests: the check's answer is given
        "postal_tracking_plugin.dns_check.check_track_domain",
        lambda name, expected: DnsResult("Invalid", wrong),
    )
    token = _csrf(client, "/domains/click.example.com")
    r = client.post(
        "/domains/click.example.com/check-dns", data={"csrf_token": token}, follow_redirects=True
    )
    assert "DNS of click.example.com: Invalid" in r.get_data(as_text=True)
    td = store.get_track_domain("click.example.com")
    assert td.dns_status == "Invalid" and td.dns_error == wrong and td.dns_checked_at
    # Not eligible now (DNS not OK): the issuer's own words, no ACME traffic.
    r = client.post(
        "/domains/click.example.com/certificate", data={"csrf_token": token}, follow_redirects=True
    )
    html = r.get_data(as_text=True)
    assert "No certificate for click.example.com" in html and "DNS check" in html


def test_tag_and_range_agree_with_stats(
    client: FlaskClient, store: Store, backend_config: Config, capsys: Any
) -> None:
    from postal_tracking_plugin.store import random_token

    server = store.add_server("Main")
    day = 86400.0
    base = 1_780_000_000.0  # 2026-05-28T20:26:40Z: opens that day, on the 30th and the 31st
    events = []
    for i, tag in enumerate(["spring", "spring", "news"]):
        message_id = store.save_tracked_message(
            server.id,
            {
                "token": random_token(),
                "scope": "outgoing",
                "tag": tag,
                "timestamp": base,
                "tracked_links": 0,
                "tracked_images": 1,
                "parsed": 1,
            },
            [],
        )
        for n, (after, bot, reason) in enumerate(
            [(3600.0, False, None), (2 * day, True, "apple-privacy-proxy"), (3 * day, False, None)]
        ):
            events.append(
                {
                    "event_id": f"t-{i}-{n}",
                    "kind": "open",
                    "method": "GET",
                    "message_id": message_id,
                    "link_id": None,
                    "ip_address": "203.0.113.5",
                    "user_agent": "Mozilla/5.0",
                    "timestamp": base + after + i,
                    "bot": bot,
                    "bot_reason": reason,
                }
            )
    store.record_events(server.id, events)
    _login(client)
    assert backend_config.source
    for query, args in (
        ("tag=spring", ["--tag", "spring"]),
        ("from=2026-05-30&to=2026-05-30", ["--since", "2026-05-30", "--until", "2026-05-31"]),
        ("tag=news&from=2026-05-29", ["--tag", "news", "--since", "2026-05-29"]),
    ):
        html = client.get(f"/servers/{server.token}/?{query}").get_data(as_text=True)
        assert main(["-c", backend_config.source, "stats", "--json", *args]) == 0
        (report,) = json.loads(capsys.readouterr().out)["servers"]
        shown = _figures(html)
        assert shown["opens-all"] == report["opens"]["all"]["total"]
        assert shown["opens-people"] == report["opens"]["people"]["total"]
        assert shown["unique-opens-all"] == report["opens"]["all"]["unique"]
        assert shown["sent"] == report["messages"]["sent"]
    # What those reports said, by hand: two spring messages, three opens each.
    html = client.get(f"/servers/{server.token}/?tag=spring").get_data(as_text=True)
    assert _figures(html)["opens-all"] == 6 and _figures(html)["opens-people"] == 4
    assert _figures(html)["sent"] == 2
    one_day = client.get(f"/servers/{server.token}/?from=2026-05-30&to=2026-05-30")
    assert _figures(one_day.get_data(as_text=True))["opens-all"] == 3  # the proxy's opens
    assert "hourly" in one_day.get_data(as_text=True)


def test_login_returns_to_the_page_asked_for(client: FlaskClient) -> None:
    r = client.get("/health")
    assert r.status_code == 302 and "next=" in r.headers["Location"]
    page = client.get(r.headers["Location"]).get_data(as_text=True)
    action = re.search(r'<form method="post" action="([^"]+)"', page)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert action and token
    r = client.post(
        action.group(1).replace("&amp;", "&"),
        data={"email": EMAIL, "password": PASSWORD, "csrf_token": token.group(1)},
    )
    assert r.status_code == 302 and r.headers["Location"].startswith("/health")
    evil = client.post(
        "/login?next=//evil.example/",
        data={"email": EMAIL, "password": PASSWORD, "csrf_token": _csrf(client)},
    )
    assert evil.headers["Location"] == "/"


def test_health_shows_spool_backlog_webhooks_and_certificate_runs(
    client: FlaskClient, store: Store, backend_config: Config
) -> None:
    from postal_tracking_plugin.certificates._state import mark_failed

    server = store.add_server("Main")
    store.add_track_domain(server, "click.example.com", dns_status="OK")
    spool = backend_config.data_dir / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    (spool / "123-dead.lock").write_text("")  # a stream whose process died, never replayed
    (spool / "123-dead.00000000.jsonl").write_bytes(b'{"event_id":"x"}\n' * 10)
    mark_failed(store, "click.example.com", "the CA could not reach http://click.example.com")
    _login(client)
    html = client.get("/health").get_data(as_text=True)
    rows = dict(re.findall(r"<tr><th>([^<]+)</th><td[^>]*>([^<]+)</td></tr>", html))
    assert rows["Spool backlog"] == "170 bytes not yet in the store, 1 stream(s)"
    assert rows["Webhooks waiting"].startswith("0 standalone deliveries")
    assert "click.example.com failed" in rows["Last certificate run"]
    assert "1 domain(s) failing" in rows["Last certificate run"]
    assert rows["Writer, Main"] == "no events recorded yet"
