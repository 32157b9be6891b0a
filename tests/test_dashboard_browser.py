"""The dashboard in a real Chromium (Debian's ``chromium`` and ``chromium-driver``, Selenium).

Each test starts ``postal-tracking dashboard --listen 127.0.0.1:PORT`` as a
process (the command a user runs: exec into gevent's server) on a SQLite
store, and drives one headless Chromium shared by the module. With
``PTP_SCREENSHOTS=DIR`` the overview and settings pages are saved there as
PNGs (``PTP_SCREENSHOTS=docs`` refreshes the ones docs/dashboard.md shows).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_dashboard import EMAIL
from test_dashboard import PASSWORD
from test_dashboard import account  # noqa: F401 - fixture
from test_stats import campaign  # noqa: F401 - fixture

from _support import free_port
from _support import need
from postal_tracking_plugin.cli import main
from postal_tracking_plugin.config import Config
from postal_tracking_plugin.store import Link
from postal_tracking_plugin.store import Store
from postal_tracking_plugin.store import random_token

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
SHOTS = os.environ.get("PTP_SCREENSHOTS")


@pytest.fixture
def backend() -> str:
    """SQLite only: the pages are the same on MariaDB (tests/test_dashboard.py runs both)."""
    return "sqlite"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need(
        bool(CHROMIUM and DRIVER),
        "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1200,1000",
        "--no-first-run",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


@pytest.fixture
def dashboard(store: Store, backend_config: Config, account: str) -> Iterator[str]:  # noqa: F811
    """``postal-tracking dashboard`` on a free loopback port; its base URL."""
    port = free_port()
    assert backend_config.source
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "postal_tracking_plugin.cli",
            "-c",
            backend_config.source,
            "dashboard",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url + "/login", timeout=2) as r:
                assert r.status == 200
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the dashboard did not start: {proc.communicate()[0]}")
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)
    assert proc.stdout
    proc.stdout.close()


def _follow(browser: Any, element: Any) -> None:
    """Click ``element`` and wait until the page it leads to has replaced this one.

    Without the wait, the next ``browser.get`` can overtake the POST the click
    started (a login not yet answered), which a busy machine showed.
    """
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    element.click()
    WebDriverWait(browser, 20).until(expected_conditions.staleness_of(element))


def _login(browser: Any, url: str, password: str = PASSWORD) -> None:
    browser.delete_all_cookies()
    browser.get(url + "/login")
    browser.find_element(By.NAME, "email").send_keys(EMAIL)
    browser.find_element(By.NAME, "password").send_keys(password)
    _follow(browser, browser.find_element(By.CSS_SELECTOR, "form button[type=submit]"))


def _shot(browser: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        height = browser.execute_script("return document.body.scrollHeight")
        browser.set_window_size(1200, max(800, int(height) + 40))
        browser.save_screenshot(str(Path(SHOTS) / name))
        browser.set_window_size(1200, 1000)


def test_login_refuses_a_wrong_password_and_the_overview_shows_what_stats_gives(
    browser: Any,
    dashboard: str,
    backend_config: Config,
    campaign: dict[str, Any],  # noqa: F811
    capsys: Any,
) -> None:
    _login(browser, dashboard, "not the password")
    assert "Wrong e-mail address or password" in browser.find_element(By.ID, "login-error").text
    assert browser.current_url.endswith("/login")
    _login(browser, dashboard)
    assert "/servers/" in browser.current_url
    assert backend_config.source
    assert main(["-c", backend_config.source, "stats", "--json", "--server", "Main"]) == 0
    (report,) = json.loads(capsys.readouterr().out)["servers"]

    def shown(cell: str) -> int:
        return int(browser.find_element(By.ID, cell).text)

    assert shown("sent") == report["messages"]["sent"] == 4
    assert shown("tracked") == report["messages"]["tracked"]
    for kind in ("opens", "clicks"):
        for who in ("all", "people"):
            assert shown(f"{kind}-{who}") == report[kind][who]["total"]
            assert shown(f"unique-{kind}-{who}") == report[kind][who]["unique"]
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 2 and charts[0].size["width"] > 300
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart g.bar rect")
    flags = browser.find_element(By.ID, "flags").text
    assert "apple-privacy-proxy" in flags and "scanner-user-agent" in flags


def test_a_messages_timeline_lists_its_events_with_flags(
    browser: Any,
    dashboard: str,
    campaign: dict[str, Any],  # noqa: F811
) -> None:
    _login(browser, dashboard)
    _follow(browser, browser.find_element(By.LINK_TEXT, "Messages"))
    browser.find_element(By.NAME, "rcpt").send_keys("reader2")
    _follow(browser, browser.find_element(By.ID, "search"))
    token = campaign["messages"][2]["token"]
    _follow(browser, browser.find_element(By.LINK_TEXT, token))
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#timeline tr.event")]
    assert len(rows) == 3
    assert any("apple-privacy-proxy" in r and "machine" in r for r in rows)
    assert any("scanner-user-agent" in r and "python-requests" in r for r in rows)
    assert any("head-request" in r and "not counted" in r for r in rows)


def _newsletter(store: Store) -> Any:
    server = store.add_server("Main")
    store.add_track_domain(server, "click.example.com", dns_status="OK")
    return server


def test_settings_change_excluded_domains_and_the_next_message_honours_them(
    browser: Any,
    dashboard: str,
    store: Store,
    backend_config: Config,
    tmp_path: Path,
    capsysbinary: Any,
) -> None:
    _newsletter(store)
    _login(browser, dashboard)
    _follow(browser, browser.find_element(By.LINK_TEXT, "Tracking domains"))
    assert browser.find_element(By.CSS_SELECTOR, "#domains td.cert-status").text.startswith(
        "pending"
    )
    _follow(browser, browser.find_element(By.LINK_TEXT, "settings"))
    box = browser.find_element(By.ID, "excluded")
    box.clear()
    box.send_keys("partner.example.org\n*.cdn.example.net")
    _follow(browser, browser.find_element(By.ID, "save"))
    assert (
        "Saved the settings of click.example.com"
        in browser.find_element(By.CSS_SELECTOR, ".flash").text
    )
    _shot(browser, "dashboard-settings.png")
    td = store.get_track_domain("click.example.com")
    assert td.excluded_click_domains == ("partner.example.org", "*.cdn.example.net")
    # The next message, rewritten as the send hook would (the rewrite command).
    message = tmp_path / "next.eml"
    message.write_bytes(
        b"From: news@example.com\r\nTo: reader@example.net\r\nSubject: next\r\n"
        b'Content-Type: text/html\r\n\r\n<p><a href="https://partner.example.org/x">p</a> '
        b'<a href="https://shop.example.com/y">s</a></p>\r\n'
    )
    config = tmp_path / "sending.yml"
    assert backend_config.source
    config.write_text(
        Path(backend_config.source).read_text()
        + "fast_server:\n  enabled: true\n  bind_address: [127.0.0.1]\n"
    )
    assert main(["-c", str(config), "rewrite", "--server", "Main", str(message)]) == 0
    out = capsysbinary.readouterr().out.decode()
    assert "https://partner.example.org/x" in out  # excluded: left alone
    assert "https://shop.example.com/y" not in out and "click.example.com/" in out


def test_a_form_posted_without_its_csrf_token_changes_nothing(
    browser: Any, dashboard: str, store: Store
) -> None:
    _newsletter(store)
    _login(browser, dashboard)
    browser.get(dashboard + "/domains/click.example.com")
    browser.find_element(By.ID, "excluded").send_keys("evil.example")
    browser.execute_script("document.querySelector('#settings input[name=csrf_token]').remove()")
    _follow(browser, browser.find_element(By.ID, "save"))
    assert "CSRF token is missing or wrong" in browser.page_source
    assert store.get_track_domain("click.example.com").excluded_click_domains == ()


def test_logout_ends_the_session(browser: Any, dashboard: str, store: Store) -> None:
    _newsletter(store)
    _login(browser, dashboard)
    cookie = browser.get_cookie("postal_tracking_dashboard")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    _follow(browser, browser.find_element(By.ID, "logout"))
    assert browser.current_url.endswith("/login")
    browser.get(dashboard + "/health")
    assert "/login" in browser.current_url
    browser.add_cookie({"name": cookie["name"], "value": cookie["value"]})  # the old cookie
    browser.get(dashboard + "/health")
    assert "/login" in browser.current_url


def test_overview_of_two_weeks(browser: Any, dashboard: str, store: Store) -> None:
    """Two weeks of a newsletter, charted by the day (and the screenshot docs show)."""
    server = _newsletter(store)
    now = time.time()
    day = 86400
    events = []
    for i in range(120):
        sent = now - 14 * day + i * (13 * day / 120)
        links = [Link(random_token(), f"https://shop.example.com/{n}") for n in ("sale", "new")]
        message_id = store.save_tracked_message(
            server.id,
            {
                "token": random_token(),
                "scope": "outgoing",
                "rcpt_to": f"r{i}@example.net",
                "subject": "Spring sale",
                "tag": "spring" if i % 2 else "news",
                "timestamp": sent,
                "tracked_links": 2,
                "tracked_images": 1,
                "parsed": 1,
            },
            links,
        )
        link_id = int(store.find_link(server.id, links[i % 2].token)["id"])
        plan = [("open", 3600.0, False, None), ("open", 2.0, True, "apple-privacy-proxy")]
        if i % 3 == 0:
            plan.append(("click", 7200.0, False, None))
        if i % 5 == 0:
            plan.append(("click", 1.0, True, "scanner-user-agent"))
        for n, (kind, after, bot, reason) in enumerate(plan):
            events.append(
                {
                    "event_id": f"shot-{i}-{n}",
                    "kind": kind,
                    "method": "GET",
                    "message_id": message_id,
                    "link_id": link_id if kind == "click" else None,
                    "ip_address": "203.0.113.9",
                    "user_agent": "Mozilla/5.0",
                    "timestamp": min(sent + after * (1 + i % 4), now - 1),
                    "bot": bot,
                    "bot_reason": reason,
                }
            )
    store.record_events(server.id, events)
    _login(browser, dashboard)
    assert "daily" in browser.find_element(By.TAG_NAME, "h2").text
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.chart g.bar")
    assert len(bars) >= 2 * 13
    assert int(browser.find_element(By.ID, "opens-all").text) == 240
    assert int(browser.find_element(By.ID, "opens-people").text) == 120
    _shot(browser, "dashboard-overview.png")
