"""Bot and privacy-proxy flags: real user agents of scanners, proxies and people."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from postal_tracking_plugin.config import Config
from postal_tracking_plugin.errors import ConfigError
from postal_tracking_plugin.events import EventRecorder
from postal_tracking_plugin.events import Rules
from postal_tracking_plugin.events import is_bot_reason
from postal_tracking_plugin.store import Link
from postal_tracking_plugin.store import Store
from postal_tracking_plugin.store import random_token

RULES = Rules.load()

HUMANS = [
    # Chrome, Windows
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    # Edge, Windows
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91",
    # Firefox, Linux
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    # Safari, iPhone
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
    # Apple Mail on macOS when Mail Privacy Protection is off: it must not look like MPP
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
    # Samsung Internet, Android
    "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36",
    # A phone whose model name contains "bot"
    "Mozilla/5.0 (Linux; Android 10; Cubot X30) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/119.0.0.0 Mobile Safari/537.36",
    # Outlook desktop
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17029; Pro)",
    # Thunderbird
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:115.0) Gecko/20100101 Thunderbird/115.6.0",
]

FLAGGED = [
    (
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
        "google-image-proxy",
        False,
    ),
    (
        "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
        "yahoo-image-proxy",
        False,
    ),
    ("Mozilla/5.0", "apple-privacy-proxy", True),
    ("python-requests/2.31.0", "scanner-user-agent", True),
    ("curl/8.5.0", "scanner-user-agent", True),
    ("Go-http-client/1.1", "scanner-user-agent", True),
    ("Wget/1.21.4", "scanner-user-agent", True),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "HeadlessChrome/120.0.6099.109 Safari/537.36",
        "scanner-user-agent",
        True,
    ),
    (
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "scanner-user-agent",
        True,
    ),
    (
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        "scanner-user-agent",
        True,
    ),
    (
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        "scanner-user-agent",
        True,
    ),
    ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", "scanner-user-agent", True),
    ("Java/1.8.0_381", "scanner-user-agent", True),
]


@pytest.mark.parametrize("agent", HUMANS)
def test_human_browsers_and_mail_clients_are_not_flagged(agent: str) -> None:
    assert RULES.classify("GET", "203.0.113.10", agent) is None


@pytest.mark.parametrize(("agent", "reason", "bot"), FLAGGED)
def test_scanners_and_proxies_are_flagged(agent: str, reason: str, bot: bool) -> None:
    assert RULES.classify("GET", "203.0.113.10", agent) == reason
    assert is_bot_reason(reason) is bot


def test_request_and_network_reasons() -> None:
    assert RULES.classify("HEAD", "203.0.113.10", HUMANS[0]) == "head-request"
    assert RULES.classify("GET", "17.58.97.1", HUMANS[0]) == "apple-privacy-proxy"
    assert RULES.classify("GET", "::ffff:17.58.97.1", HUMANS[0]) == "apple-privacy-proxy"
    assert RULES.classify("GET", "40.107.22.5", HUMANS[0]) == "scanner-network"
    assert RULES.classify("GET", "203.0.113.10", "") == "no-user-agent"
    assert RULES.classify("GET", "203.0.113.10", None) == "no-user-agent"
    assert RULES.classify("GET", "not-an-ip", HUMANS[0]) is None


def test_operator_files_extend_the_lists(write_config: Any, tmp_path: Path) -> None:
    (tmp_path / "ua.txt").write_text("# ours\nscanner-user-agent   AcmeLinkGuard\n")
    (tmp_path / "nets.txt").write_text(
        "198.51.100.0/24   scanner-network\n2001:db8::/32 scanner-network\n"
    )
    config = write_config(
        {
            "tracking": {
                "events": {"bot_user_agents_files": "ua.txt", "bot_networks_files": ["nets.txt"]}
            }
        }
    )
    rules = Rules.from_config(config)
    assert rules.classify("GET", "203.0.113.1", "AcmeLinkGuard/2.0") == "scanner-user-agent"
    assert rules.classify("GET", "198.51.100.77", HUMANS[0]) == "scanner-network"
    assert rules.classify("GET", "2001:db8::1", HUMANS[0]) == "scanner-network"
    assert rules.classify("GET", "203.0.113.1", HUMANS[0]) is None


def test_bad_operator_rules_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_text("scanner-user-agent  (unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.txt line 1: bad regular expression"):
        Rules.load(ua_files=[tmp_path / "bad.txt"])
    (tmp_path / "badnet.txt").write_text("300.1.1.0/24 scanner-network\n")
    with pytest.raises(ConfigError, match=r"badnet\.txt line 1: '300\.1\.1\.0/24' is not"):
        Rules.load(net_files=[tmp_path / "badnet.txt"])
    with pytest.raises(ConfigError, match="cannot read bot rules file"):
        Rules.load(ua_files=[tmp_path / "missing.txt"])


# -- flags that need the store: timing and bursts ---------------------------------


@pytest.fixture
def recorder_for(store: Store, backend_config: Config, tmp_path: Path) -> Any:
    made: list[EventRecorder] = []

    def make(**events: Any) -> EventRecorder:
        ev = dataclasses.replace(backend_config.tracking.events, **events)
        tracking = dataclasses.replace(
            backend_config.tracking, data_dir=str(tmp_path / "data"), events=ev
        )
        rec = EventRecorder(
            dataclasses.replace(backend_config, tracking=tracking), store, webhooks=False
        )
        rec.start()
        made.append(rec)
        return rec

    yield make
    for rec in made:
        rec.stop()


def _message(store: Store, sent_at: float, links: int = 4) -> dict[str, Any]:
    servers = store.list_servers()
    server = servers[0] if servers else store.add_server("Main")
    link_objs = [Link(token=random_token(), url=f"https://example.com/{i}") for i in range(links)]
    message_id = store.save_tracked_message(
        server.id,
        {
            "token": random_token(),
            "scope": "outgoing",
            "timestamp": sent_at,
            "tracked_links": links,
        },
        link_objs,
    )
    return {
        "server": server,
        "id": message_id,
        "links": [store.find_link(server.id, link.token) for link in link_objs],
    }


def _flags(store: Store, server_id: int) -> dict[str, tuple[int, str | None]]:
    with store.messages(server_id, readonly=True) as db:
        rows = db.query("SELECT event_id, bot, reason FROM tracking_events")
    return {r["event_id"]: (int(r["bot"]), r["reason"]) for r in rows}


def _click(rec: EventRecorder, msg: dict[str, Any], i: int, ip: str, ts: float) -> str:
    event_id = rec.click(
        server_id=msg["server"].id,
        server_token=msg["server"].token,
        message_id=msg["id"],
        link_id=msg["links"][i]["id"],
        url=msg["links"][i]["url"],
        ip_address=ip,
        user_agent=HUMANS[0],
        timestamp=ts,
    )
    assert event_id
    return event_id


def test_too_fast_after_send(store: Store, recorder_for: Any) -> None:
    now = time.time()
    msg = _message(store, sent_at=now - 2)
    rec = recorder_for(too_fast_seconds=5)
    fast = _click(rec, msg, 0, "203.0.113.1", now)
    later = _click(rec, msg, 1, "203.0.113.1", now + 3600)
    assert rec.flush(10)
    flags = _flags(store, msg["server"].id)
    assert flags[fast] == (1, "too-fast-after-send")
    assert flags[later] == (0, None)


def test_all_links_at_once_flags_the_burst_even_across_batches(
    store: Store, recorder_for: Any
) -> None:
    t0 = time.time()
    msg = _message(store, sent_at=t0 - 86400, links=4)
    rec = recorder_for(all_links_window=3.0, all_links_count=3)
    # A person: two links a minute apart.
    person = [_click(rec, msg, 0, "203.0.113.5", t0), _click(rec, msg, 1, "203.0.113.5", t0 + 60)]
    # A scanner: the first click is written in its own batch, the rest a moment later.
    first = _click(rec, msg, 0, "192.0.2.9", t0 + 100)
    assert rec.flush(10)
    assert _flags(store, msg["server"].id)[first] == (0, None)
    rest = [_click(rec, msg, i, "192.0.2.9", t0 + 100.5 + i * 0.1) for i in (1, 2, 3)]
    assert rec.flush(10)
    flags = _flags(store, msg["server"].id)
    for event_id in [first, *rest]:
        assert flags[event_id] == (1, "all-links-at-once")
    for event_id in person:
        assert flags[event_id] == (0, None)
    # Flags, never filters: every click is in Postal's table.
    with store.messages(msg["server"].id, readonly=True) as db:
        assert db.one("SELECT COUNT(*) AS n FROM clicks")["n"] == 6


def test_a_burst_of_clicks_flagged_otherwise_still_reflags_the_earlier_ones(
    store: Store, recorder_for: Any
) -> None:
    t0 = time.time()
    msg = _message(store, sent_at=t0 - 86400, links=4)
    rec = recorder_for(all_links_window=3.0, all_links_count=3)
    first = _click(rec, msg, 0, "192.0.2.9", t0)
    assert rec.flush(10)
    # The rest of the burst comes with a scanner's agent: flagged by that rule
    # already, the batch must still re-flag the earlier, unflagged click.
    rest = [
        rec.click(
            server_id=msg["server"].id,
            server_token=msg["server"].token,
            message_id=msg["id"],
            link_id=msg["links"][i]["id"],
            url=msg["links"][i]["url"],
            ip_address="192.0.2.9",
            user_agent="curl/8.5.0",
            timestamp=t0 + 0.5 + i * 0.1,
        )
        for i in (1, 2)
    ]
    assert rec.flush(10)
    flags = _flags(store, msg["server"].id)
    assert flags[first] == (1, "all-links-at-once")
    assert [flags[e] for e in rest] == [(1, "scanner-user-agent")] * 2
    # Another address clicking two links only: no burst, nothing flagged.
    person = [_click(rec, msg, i, "203.0.113.5", t0 + 1 + i) for i in (0, 1)]
    assert rec.flush(10)
    flags = _flags(store, msg["server"].id)
    assert [flags[e] for e in person] == [(0, None)] * 2
    assert flags[first] == (1, "all-links-at-once")
