"""Webhooks for clicks and opens: standalone delivery to a local receiver, and Postal's queue."""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from postal_tracking_plugin.config import Config
from postal_tracking_plugin.events import EventRecorder
from postal_tracking_plugin.events._webhook_http import Refused
from postal_tracking_plugin.events._webhook_http import check_address
from postal_tracking_plugin.events._webhook_payloads import SIGNATURE_HEADER
from postal_tracking_plugin.events._webhook_payloads import rails_yaml
from postal_tracking_plugin.events._webhook_payloads import verify
from postal_tracking_plugin.events._webhooks import WebhookQueue
from postal_tracking_plugin.store import Link
from postal_tracking_plugin.store import Store
from postal_tracking_plugin.store import random_token

SECRET = "s3cret-for-tests"
CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/121.0.0.0 Safari/537.36"
)


class Receiver:
    """A webhook receiver on 127.0.0.1: answers with the given statuses, then 200."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.requests.append((dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/postal"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.requests) >= count, f"got {len(self.requests)} webhook requests"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[[list[int]], Receiver]]:
    made: list[Receiver] = []

    def make(statuses: list[int]) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _config(base: Config, tmp_path: Path, **webhooks: Any) -> Config:
    tracking = dataclasses.replace(
        base.tracking,
        data_dir=str(tmp_path / "data"),
        webhooks=dataclasses.replace(base.tracking.webhooks, **webhooks),
    )
    return dataclasses.replace(base, tracking=tracking)


@pytest.fixture
def sent(store: Store) -> dict[str, Any]:
    server = store.add_server("Main")
    token = random_token()
    link = Link(token=random_token(), url="https://example.com/offer?a=1&b=2")
    message_id = store.save_tracked_message(
        server.id,
        {
            "token": token,
            "scope": "outgoing",
            "rcpt_to": "reader@example.net",
            "mail_from": "news@example.com",
            "subject": 'Spring "sale" ☀',
            "message_id": "<abc@example.com>",
            "timestamp": time.time() - 3600,
            "tag": "newsletter",
            "tracked_links": 1,
            "parsed": 1,
        },
        [link],
    )
    return {
        "server": server,
        "message_id": message_id,
        "token": token,
        "link": store.find_link(server.id, link.token),
        "link_token": link.token,
    }


def _click(rec: EventRecorder, sent: dict[str, Any], **kw: Any) -> str | None:
    return rec.click(
        server_id=sent["server"].id,
        server_token=sent["server"].token,
        message_id=sent["message_id"],
        link_id=sent["link"]["id"],
        url=sent["link"]["url"],
        ip_address="198.51.100.23",
        user_agent=CHROME,
        **kw,
    )


def _deliveries(store: Store) -> list[dict[str, Any]]:
    with store.main(readonly=True) as db:
        return db.query("SELECT * FROM tracking_webhook_deliveries ORDER BY id")


def test_standalone_delivery_signed_retried_after_500_and_persisted(
    store: Store, backend_config: Config, tmp_path: Path, sent: dict[str, Any], receiver: Any
) -> None:
    hooks = receiver([500])
    config = _config(
        backend_config, tmp_path, urls=(hooks.url,), secret=SECRET, allow_private_addresses=True
    )
    rec = EventRecorder(config, store)
    rec.start()
    event_id = _click(rec, sent)
    hooks.wait_for(1)
    rec.stop()

    # The 500 is recorded and a retry is due in 2 minutes (Postal's first interval).
    (row,) = _deliveries(store)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("pending", 1, 500)
    assert 100 < float(row["retry_after"]) - time.time() <= 120

    # A restart later (the retry time has come): the new process delivers it.
    with store.main() as db:
        db.execute("UPDATE tracking_webhook_deliveries SET retry_after = %s", (time.time() - 1,))
    rec = EventRecorder(config, store)
    rec.start()
    hooks.wait_for(2)
    rec.stop()
    (row,) = _deliveries(store)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("delivered", 2, 200)

    first, second = hooks.requests
    assert first[1] == second[1]  # the same request, retried
    headers, body, _ = second
    assert verify(SECRET, headers[SIGNATURE_HEADER], body)
    assert not verify("another secret", headers[SIGNATURE_HEADER], body)
    assert not verify(SECRET, headers[SIGNATURE_HEADER], body + b" ")
    sent_body = json.loads(body)
    assert set(sent_body) == {"event", "timestamp", "payload", "uuid"}
    assert sent_body["event"] == "MessageLinkClicked"
    payload = sent_body["payload"]
    assert payload["url"] == "https://example.com/offer?a=1&b=2"
    assert payload["token"] == sent["link_token"]
    assert payload["ip_address"] == "198.51.100.23"
    assert payload["user_agent"] == CHROME
    assert payload["bot"] is False and payload["bot_reason"] is None
    message = payload["message"]
    assert set(message) == {
        "id",
        "token",
        "direction",
        "message_id",
        "to",
        "from",
        "subject",
        "timestamp",
        "spam_status",
        "tag",
    }
    assert (message["id"], message["token"], message["direction"]) == (
        sent["message_id"],
        sent["token"],
        "outgoing",
    )
    assert (message["to"], message["from"], message["tag"]) == (
        "reader@example.net",
        "news@example.com",
        "newsletter",
    )
    assert message["subject"] == 'Spring "sale" ☀'
    assert message["spam_status"] == "NotChecked"
    assert event_id is not None


def test_open_webhook_and_flagged_bot_in_payload(
    store: Store, backend_config: Config, tmp_path: Path, sent: dict[str, Any], receiver: Any
) -> None:
    hooks = receiver([])
    config = _config(
        backend_config, tmp_path, urls=(hooks.url,), secret=SECRET, allow_private_addresses=True
    )
    rec = EventRecorder(config, store)
    rec.start()
    rec.open(
        server_id=sent["server"].id,
        server_token=sent["server"].token,
        message_id=sent["message_id"],
        message_token=sent["token"],
        ip_address="17.58.0.10",
        user_agent="Mozilla/5.0",
    )
    hooks.wait_for(1)
    rec.stop()
    body = json.loads(hooks.requests[0][1])
    assert body["event"] == "MessageLoaded"
    assert set(body["payload"]) == {"message", "ip_address", "user_agent", "bot", "bot_reason"}
    assert body["payload"]["bot"] is True
    assert body["payload"]["bot_reason"] == "apple-privacy-proxy"


def test_private_address_is_refused_without_the_setting(
    store: Store, backend_config: Config, tmp_path: Path, sent: dict[str, Any], receiver: Any
) -> None:
    hooks = receiver([])
    config = _config(backend_config, tmp_path, urls=(hooks.url,), secret=SECRET)
    rec = EventRecorder(config, store)
    rec.start()
    _click(rec, sent)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not [
        d for d in _deliveries(store) if d["status"] != "pending"
    ]:
        time.sleep(0.05)
    rec.stop()
    (row,) = _deliveries(store)
    assert row["status"] == "refused"
    assert "allow_private_addresses" in row["error"]
    assert hooks.requests == []


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "::1",
        "fe80::1",
        "fd00::5",
        "::ffff:127.0.0.1",
        "0.0.0.0",
    ],
)
def test_non_global_addresses_are_refused(address: str) -> None:
    with pytest.raises(Refused):
        check_address(address, allow_private=False)


def test_global_addresses_pass() -> None:
    check_address("93.184.216.34", allow_private=False)
    check_address("2606:2800:220:1:248:1893:25c8:1946", allow_private=False)
    check_address("10.1.2.3", allow_private=True)


def test_rails_yaml_loads_back_to_the_payload() -> None:
    payload = {
        "message": {
            "id": 7,
            "token": "AbC",
            # Line breaks YAML 1.1 would fold (NEL, U+2028) and spaces around them.
            "subject": "a: b # 'c' \"d\"\nnew line ☀ 😀 \u2028 x \x85 y \ufeff z  ",
            "tag": None,
        },
        "url": "https://example.com/?q=1&r=%20",
        "ip_address": "::1",
        "user_agent": "Mozilla/5.0 \x7f",
        "bot": False,
        "ts": 1700000000.25,
    }
    text = rails_yaml(payload)
    assert text.startswith("---\n:message:\n  :id: 7\n")
    loaded = yaml.safe_load(text)

    def strip(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k.lstrip(":"): strip(v) for k, v in obj.items()}
        return obj

    assert strip(loaded) == payload


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)  # Postal mode is MySQL only
def test_postal_mode_queues_webhook_requests_for_subscribed_webhooks(
    store: Store, backend_config: Config, tmp_path: Path, sent: dict[str, Any]
) -> None:
    assert backend_config.tracking.store == "mysql"
    server_id = sent["server"].id
    with store.main() as db:
        wanted = db.insert(
            "INSERT INTO webhooks (server_id, uuid, name, url, all_events, enabled, sign) "
            "VALUES (%s, 'u1', 'clicks', 'https://hooks.example.com/a', 0, 1, 1)",
            (server_id,),
        )
        db.execute(
            "INSERT INTO webhook_events (webhook_id, event) VALUES (%s, 'MessageLinkClicked')",
            (wanted,),
        )
        everything = db.insert(
            "INSERT INTO webhooks (server_id, uuid, name, url, all_events, enabled, sign) "
            "VALUES (%s, 'u2', 'all', 'https://hooks.example.com/all', 1, 1, 1)",
            (server_id,),
        )
        disabled = db.insert(
            "INSERT INTO webhooks (server_id, uuid, name, url, all_events, enabled, sign) "
            "VALUES (%s, 'u3', 'off', 'https://hooks.example.com/off', 1, 0, 1)",
            (server_id,),
        )
        other = db.insert(
            "INSERT INTO webhooks (server_id, uuid, name, url, all_events, enabled, sign) "
            "VALUES (%s, 'u4', 'sent', 'https://hooks.example.com/sent', 0, 1, 1)",
            (server_id,),
        )
        db.execute(
            "INSERT INTO webhook_events (webhook_id, event) VALUES (%s, 'MessageSent')", (other,)
        )
    config = _config(backend_config, tmp_path)
    rec = EventRecorder(config, store)
    rec.start()
    _click(rec, sent)
    assert rec.stop()
    with store.main(readonly=True) as db:
        rows = db.query("SELECT * FROM webhook_requests ORDER BY webhook_id")
    assert [(r["webhook_id"], r["url"], r["event"]) for r in rows] == [
        (wanted, "https://hooks.example.com/a", "MessageLinkClicked"),
        (everything, "https://hooks.example.com/all", "MessageLinkClicked"),
    ]
    assert disabled not in {r["webhook_id"] for r in rows}
    for r in rows:
        assert r["server_id"] == server_id
        assert r["attempts"] == 0 and r["locked_by"] is None
        assert r["created_at"] is not None and r["retry_after"] is not None
        assert len(r["uuid"]) == 36
        payload = yaml.safe_load(r["payload"])
        assert set(payload) == {
            ":message",
            ":url",
            ":token",
            ":ip_address",
            ":user_agent",
            ":bot",
            ":bot_reason",
        }
        assert payload[":url"] == "https://example.com/offer?a=1&b=2"
        assert payload[":token"] == sent["link_token"]
        assert payload[":message"][":token"] == sent["token"]
        assert payload[":message"][":subject"] == 'Spring "sale" ☀'

    # Events whose queueing was cut short by a crash are queued once, not twice.
    with store.messages(server_id) as db:
        db.execute("UPDATE tracking_events SET webhooks_queued = 0")
    rec = EventRecorder(config, store)
    rec.start()
    assert rec.stop()
    with store.main(readonly=True) as db:
        assert len(db.query("SELECT id FROM webhook_requests")) == 2


def test_finished_deliveries_are_pruned_after_a_week(
    store: Store, backend_config: Config, tmp_path: Path, sent: dict[str, Any], receiver: Any
) -> None:
    hooks = receiver([])
    config = _config(
        backend_config, tmp_path, urls=(hooks.url,), secret=SECRET, allow_private_addresses=True
    )
    rec = EventRecorder(config, store)
    rec.start()
    _click(rec, sent)
    _click(rec, sent, timestamp=time.time())
    hooks.wait_for(2)
    rec.stop()
    with store.main() as db:
        first = db.query("SELECT id FROM tracking_webhook_deliveries ORDER BY id")[0]["id"]
        db.execute(
            "UPDATE tracking_webhook_deliveries SET created_at = %s WHERE id = %s",
            (time.time() - 8 * 86400, first),
        )
        db.execute(
            "INSERT INTO tracking_webhook_deliveries (uuid, url, event, payload, attempts, "
            "retry_after, status, created_at) VALUES ('old-pending', 'http://x/', "
            "'MessageLoaded', '{}', 0, %s, 'pending', %s)",
            (time.time() + 60, time.time() - 8 * 86400),
        )
    assert WebhookQueue(config, store).prune() == 1
    left = [(d["uuid"], d["status"]) for d in _deliveries(store)]
    assert len(left) == 2 and ("old-pending", "pending") in left
