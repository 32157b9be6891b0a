"""`postal-tracking stats`: people beside all events, unique counts, top links, filters."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from postal_tracking_plugin.cli import main
from postal_tracking_plugin.cli.stats import parse_since
from postal_tracking_plugin.config import Config
from postal_tracking_plugin.errors import UsageError
from postal_tracking_plugin.events import EventRecorder
from postal_tracking_plugin.store import Link
from postal_tracking_plugin.store import Store
from postal_tracking_plugin.store import random_token

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.2 Mobile/15E148 Safari/604.1"
)


@pytest.fixture
def campaign(store: Store, backend_config: Config) -> dict[str, Any]:
    """Three tracked messages and one untracked, with a known mix of events."""
    server = store.add_server("Main")
    sent_at = time.time() - 7200
    messages = []
    for i in range(3):
        token = random_token()
        links = [
            Link(token=random_token(), url="https://shop.example.com/sale"),
            Link(token=random_token(), url="https://shop.example.com/terms"),
        ]
        message_id = store.save_tracked_message(
            server.id,
            {
                "token": token,
                "scope": "outgoing",
                "rcpt_to": f"reader{i}@example.net",
                "timestamp": sent_at,
                "tracked_links": 2,
                "tracked_images": 1,
                "parsed": 1,
            },
            links,
        )
        rows = [store.find_link(server.id, link.token) for link in links]
        messages.append({"id": message_id, "token": token, "links": rows})
    store.save_tracked_message(
        server.id, {"token": random_token(), "scope": "outgoing", "timestamp": sent_at}, []
    )

    rec = EventRecorder(backend_config, store, webhooks=False)
    rec.start()
    common = {"server_id": server.id, "server_token": server.token}

    def opened(m: dict[str, Any], ip: str, agent: str) -> None:
        rec.open(
            **common,
            message_id=m["id"],
            message_token=m["token"],
            ip_address=ip,
            user_agent=agent,
        )

    def clicked(m: dict[str, Any], n: int, ip: str, agent: str, method: str = "GET") -> None:
        link = m["links"][n]
        rec.click(
            **common,
            message_id=m["id"],
            link_id=link["id"],
            url=link["url"],
            ip_address=ip,
            user_agent=agent,
            method=method,
        )

    a, b, c = messages
    opened(a, "203.0.113.1", FIREFOX)
    opened(a, "203.0.113.1", FIREFOX)  # opened twice: 2 opens, 1 unique
    opened(b, "198.51.100.8", IPHONE)
    opened(c, "17.58.1.1", "Mozilla/5.0")  # Apple Mail Privacy Protection prefetch
    clicked(a, 0, "203.0.113.1", FIREFOX)
    clicked(b, 0, "198.51.100.8", IPHONE)
    clicked(c, 1, "192.0.2.50", "python-requests/2.31.0")  # a scanner
    clicked(c, 0, "192.0.2.50", IPHONE, method="HEAD")  # a probe: not counted at all
    assert rec.stop(10)
    return {"server": server, "messages": messages}


def _stats(config: Config, capsys: Any, *args: str) -> dict[str, Any]:
    assert config.source
    code = main(["-c", config.source, "stats", "--json", *args])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_people_beside_all_events(
    backend_config: Config, campaign: dict[str, Any], capsys: Any
) -> None:
    (report,) = _stats(backend_config, capsys)["servers"]
    assert report["messages"] == {"sent": 4, "tracked": 3}
    assert report["opens"] == {
        "all": {"total": 4, "unique": 3},
        "people": {"total": 3, "unique": 2},
    }
    assert report["clicks"] == {
        "all": {"total": 3, "unique": 3},
        "people": {"total": 2, "unique": 2},
    }
    assert report["rates"]["open_rate_people"] == round(100 * 2 / 3, 1)
    flags = {(f["reason"], f["kind"]): f["events"] for f in report["flags"]}
    assert flags == {
        ("apple-privacy-proxy", "open"): 1,
        ("scanner-user-agent", "click"): 1,
        ("head-request", "click"): 1,
    }
    top = report["top_links"]
    assert [(x["url"], x["unique_people"], x["unique_all"], x["clicks"]) for x in top] == [
        ("https://shop.example.com/sale", 2, 2, 2),
        ("https://shop.example.com/terms", 0, 1, 1),
    ]


def test_one_message_lists_all_its_links(
    backend_config: Config, campaign: dict[str, Any], capsys: Any
) -> None:
    c = campaign["messages"][2]
    (report,) = _stats(backend_config, capsys, "--message", c["token"])["servers"]
    assert report["message"] == c["id"]
    assert report["messages"]["sent"] == 1
    assert report["opens"]["all"]["total"] == 1 and report["opens"]["people"]["total"] == 0
    assert {x["url"]: x["clicks"] for x in report["top_links"]} == {
        "https://shop.example.com/sale": 0,
        "https://shop.example.com/terms": 1,
    }


def test_since_filters_events_and_messages(
    backend_config: Config, campaign: dict[str, Any], capsys: Any
) -> None:
    (report,) = _stats(backend_config, capsys, "--since", "1h")["servers"]
    # The messages were sent two hours ago; the events happened just now.
    assert report["messages"]["sent"] == 0
    assert report["opens"]["all"]["total"] == 4
    future = _stats(backend_config, capsys, "--since", "2999-01-01")["servers"][0]
    assert future["opens"]["all"]["total"] == 0 and future["top_links"] == []


def test_table_on_a_terminal(backend_config: Config, campaign: dict[str, Any], capsys: Any) -> None:
    assert backend_config.source
    assert main(["-c", backend_config.source, "stats", "--server", "Main"]) == 0
    out = capsys.readouterr().out
    assert "ALL EVENTS" in out and "PEOPLE" in out
    assert "TOP LINKS BY UNIQUE CLICKERS" in out
    assert "apple-privacy-proxy" in out
    unique_opens = next(line for line in out.splitlines() if line.startswith("Unique opens"))
    assert unique_opens.split()[2:] == ["3", "2"]


def test_unknown_message_and_bad_since_are_one_line_errors(
    backend_config: Config, campaign: dict[str, Any], capsys: Any
) -> None:
    assert backend_config.source
    assert main(["-c", backend_config.source, "stats", "--message", "nope"]) == 1
    err = capsys.readouterr().err
    assert "no message with token 'nope'" in err and len(err.strip().splitlines()) == 1
    assert main(["-c", backend_config.source, "stats", "--since", "last tuesday"]) == 1
    assert "--since 'last tuesday' is not a date" in capsys.readouterr().err


def test_parse_since() -> None:
    assert parse_since("7d", now=1_000_000.0) == 1_000_000.0 - 7 * 86400
    assert parse_since("30m", now=1_000_000.0) == 1_000_000.0 - 1800
    assert parse_since("2026-05-01") == 1777593600.0
    assert parse_since(None) is None
    with pytest.raises(UsageError):
        parse_since("soon")


def test_no_servers_yet(tmp_path: Path, write_config: Any, capsys: Any) -> None:
    config = write_config({"tracking": {"data_dir": "data"}})
    assert main(["-c", str(config.source), "init"]) == 0
    capsys.readouterr()
    assert main(["-c", str(config.source), "stats"]) == 0
    assert "No servers yet" in capsys.readouterr().err
