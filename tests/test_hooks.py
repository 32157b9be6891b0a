"""The pluggy side: entry points, the chained send pipeline, the README's example host."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from collections.abc import Iterator
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path

import pytest

from postal_tracking_plugin.config import Config
from postal_tracking_plugin.config import FastServerConfig
from postal_tracking_plugin.hooks import PluginError
from postal_tracking_plugin.hooks import get_plugin_manager
from postal_tracking_plugin.hooks import hookimpl
from postal_tracking_plugin.hooks import notify_tracking_event
from postal_tracking_plugin.hooks import run_send_pipeline
from postal_tracking_plugin.hooks.spec import TrackingEvent
from postal_tracking_plugin.store import Server
from postal_tracking_plugin.store import Store
from postal_tracking_plugin.store import open_store

ROOT = Path(__file__).resolve().parent.parent
TRACK_DOMAIN = "click.example.com"


def tracked_links(data: bytes, server: Server) -> list[str]:
    """The link tokens of tracked URLs in ``data`` (any scheme)."""
    pattern = rf"https?://{re.escape(TRACK_DOMAIN)}/{server.token}/([A-Za-z0-9]{{16}})"
    return re.findall(pattern, data.decode("utf-8", "replace"))


def message(body: str = "", *, extra: dict[str, str] | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = "News <news@example.com>"
    msg["To"] = "ann@example.net"
    msg["Subject"] = "Hello"
    msg["Message-ID"] = "<hooks-test@example.com>"
    for name, value in (extra or {}).items():
        msg[name] = value
    msg.set_content(body or "Read https://www.example.org/news/1 and https://shop.example.org/x\n")
    return msg.as_bytes()


@pytest.fixture
def tracking(store: Store, backend_config: Config) -> Iterator[tuple[Config, Store, Server]]:
    """Tracking on, and a server whose tracking domain for example.com has DNS OK."""
    config = dataclasses.replace(
        backend_config, fast_server=FastServerConfig(enabled=True, bind_address=("127.0.0.1",))
    )
    server = store.add_server("Main")
    store.add_track_domain(server, TRACK_DOMAIN, ssl_enabled=False, dns_status="OK")
    yield config, store, server


def test_the_tracking_plugin_comes_from_the_postal_plugins_entry_point() -> None:
    pm = get_plugin_manager()
    import postal_tracking_plugin.hooks.tracking as tracking

    assert pm.get_plugin("tracking") is tracking
    dists = {plugin: dist.project_name for plugin, dist in pm.list_plugin_distinfo()}
    assert dists[tracking] == "postal-tracking-plugin"
    assert [impl.plugin_name for impl in pm.hook.postal_rewrite_message.get_hookimpls()] == [
        "tracking"
    ]


def test_without_entry_points_only_our_plugin_is_registered_by_hand() -> None:
    pm = get_plugin_manager(load_entrypoints=False)
    assert [name for name, _ in pm.list_name_plugin()] == ["tracking"]
    assert pm.list_plugin_distinfo() == []


def _install_fake_distribution(
    site: Path, monkeypatch: pytest.MonkeyPatch, module: str, source: str
) -> None:
    """A real distribution with a postal.plugins entry point, on sys.path."""
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{module.replace('_', '-')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[postal.plugins]\n{module} = {module}\n")
    monkeypatch.syspath_prepend(str(site))


def test_a_misspelt_hook_in_an_installed_plugin_fails_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_fake_distribution(
        tmp_path / "site",
        monkeypatch,
        "misspelt_postal_plugin",
        """
        import pluggy
        hookimpl = pluggy.HookimplMarker("postal")

        @hookimpl
        def postal_rewrite_mesage(message):
            return message
        """,
    )
    with pytest.raises(PluginError, match="postal_rewrite_mesage"):
        get_plugin_manager()


def test_a_plugin_that_fails_to_import_is_named_as_a_plugin_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_fake_distribution(
        tmp_path / "site", monkeypatch, "broken_postal_plugin", "raise RuntimeError('boom')\n"
    )
    with pytest.raises(PluginError, match="postal.plugins failed to load.*boom"):
        get_plugin_manager()


def test_the_pipeline_returns_the_rewritten_message_and_stores_its_links(
    tracking: tuple[Config, Store, Server],
) -> None:
    config, store, server = tracking
    raw = message()
    pm = get_plugin_manager()
    out = run_send_pipeline(
        pm,
        raw,
        mail_from="news@example.com",
        rcpt_to="ann@example.net",
        server="Main",
        config=config,
        store=store,
    )
    tokens = tracked_links(out, server)
    assert len(tokens) == 2
    urls = [store.find_link(server.id, t)["url"] for t in tokens]
    assert urls == ["https://www.example.org/news/1", "https://shop.example.org/x"]
    assert (
        "https://www.example.org" not in message_from_bytes(out).get_payload(decode=True).decode()
    )


def test_an_email_message_object_is_accepted(tracking: tuple[Config, Store, Server]) -> None:
    config, store, server = tracking
    msg = message_from_bytes(message(), _class=EmailMessage)
    out = run_send_pipeline(
        get_plugin_manager(),
        msg,
        mail_from="news@example.com",
        rcpt_to=["ann@example.net"],
        server=server,
        config=config,
        store=store,
    )
    assert len(tracked_links(out, server)) == 2


class Stamp:
    """A second plugin: records what it was given, adds a header."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, list[str], str]] = []

    @hookimpl(trylast=True)
    def postal_rewrite_message(self, message: bytes, rcpt_to: list[str], mail_from: str) -> bytes:
        self.seen.append((message, rcpt_to, mail_from))
        return b"X-Stamped: yes\r\n" + message


def test_a_second_plugin_receives_what_the_first_returned(
    tracking: tuple[Config, Store, Server],
) -> None:
    config, store, server = tracking
    pm = get_plugin_manager()
    stamp = Stamp()
    pm.register(stamp, name="stamp")
    out = run_send_pipeline(
        pm,
        message(),
        mail_from="news@example.com",
        rcpt_to="ann@example.net",
        server="Main",
        config=config,
        store=store,
    )
    [(seen, rcpt_to, mail_from)] = stamp.seen
    assert len(tracked_links(seen, server)) == 2  # tracking ran first
    assert (rcpt_to, mail_from) == (["ann@example.net"], "news@example.com")
    assert out == b"X-Stamped: yes\r\n" + seen


class Raises:
    @hookimpl(tryfirst=True)
    def postal_rewrite_message(self, message: bytes) -> bytes:
        raise RuntimeError("plugin bug")


class ReturnsText:
    @hookimpl(tryfirst=True)
    def postal_rewrite_message(self, message: bytes) -> str:
        return "not bytes"


@pytest.mark.parametrize("bad", [Raises, ReturnsText])
def test_a_failing_plugin_is_skipped_and_the_message_still_goes_through(
    tracking: tuple[Config, Store, Server], bad: type, caplog: pytest.LogCaptureFixture
) -> None:
    config, store, server = tracking
    pm = get_plugin_manager()
    pm.register(bad(), name="bad")
    out = run_send_pipeline(
        pm,
        message(),
        mail_from="news@example.com",
        rcpt_to="ann@example.net",
        server="Main",
        config=config,
        store=store,
    )
    assert len(tracked_links(out, server)) == 2
    assert "'bad'" in caplog.text


def test_x_amp_skip_is_honoured_through_the_hook(tracking: tuple[Config, Store, Server]) -> None:
    """The hook runs the rewriter's own rules: the header stops tracking and is removed."""
    config, store, server = tracking
    out = run_send_pipeline(
        get_plugin_manager(),
        message(extra={"X-AMP": "skip"}),
        mail_from="news@example.com",
        rcpt_to="ann@example.net",
        server="Main",
        config=config,
        store=store,
    )
    assert tracked_links(out, server) == []
    parsed = message_from_bytes(out)
    assert parsed["X-AMP"] is None
    assert "https://www.example.org/news/1" in parsed.get_payload(decode=True).decode()


def test_a_signed_message_passes_through_byte_for_byte(
    tracking: tuple[Config, Store, Server],
) -> None:
    config, store, _ = tracking
    raw = message(extra={"DKIM-Signature": "v=1; a=rsa-sha256; d=example.com; s=s; b=abc"})
    out = run_send_pipeline(
        get_plugin_manager(),
        raw,
        mail_from="news@example.com",
        rcpt_to="ann@example.net",
        server="Main",
        config=config,
        store=store,
    )
    assert out == raw


def test_tracking_off_passes_the_message_through_unchanged(
    tracking: tuple[Config, Store, Server],
) -> None:
    config, store, _ = tracking
    raw = message()
    off = dataclasses.replace(config, fast_server=FastServerConfig())
    out = run_send_pipeline(
        get_plugin_manager(),
        raw,
        mail_from="news@example.com",
        rcpt_to="ann@example.net",
        server="Main",
        config=off,
        store=store,
    )
    assert out == raw


class Events:
    def __init__(self) -> None:
        self.events: list[TrackingEvent] = []

    @hookimpl
    def postal_tracking_event(self, event: TrackingEvent) -> None:
        self.events.append(event)


class EventsRaises:
    @hookimpl
    def postal_tracking_event(self, event: TrackingEvent) -> None:
        raise RuntimeError("plugin bug")


EVENT: TrackingEvent = {
    "kind": "click",
    "event_id": "e1",
    "server_id": 1,
    "server_token": "abcdef",
    "message_id": 7,
    "message_token": "m" * 16,
    "link_id": 3,
    "url": "https://www.example.org/",
    "ip_address": "192.0.2.1",
    "user_agent": "UA",
    "timestamp": 1700000000.5,
    "bot": False,
    "bot_reason": None,
}


def test_every_tracking_event_plugin_gets_the_event_even_after_one_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pm = get_plugin_manager()
    first, last = Events(), Events()
    pm.register(first, name="first")
    pm.register(EventsRaises(), name="raises")
    pm.register(last, name="last")
    notify_tracking_event(pm, EVENT)
    assert first.events == [EVENT] and last.events == [EVENT]
    assert "plugin 'raises' raised in postal_tracking_event for event e1" in caplog.text


def test_the_tracking_event_hook_can_be_called_the_plain_pluggy_way() -> None:
    pm = get_plugin_manager()
    events = Events()
    pm.register(events, name="events")
    assert pm.hook.postal_tracking_event(event=EVENT) == []
    assert events.events == [EVENT]


def test_the_readme_example_host_runs(write_config: Callable[..., Config], tmp_path: Path) -> None:
    """Runs exactly examples/host.py, the file docs/relay.md shows."""
    config = write_config(
        {
            "fast_server": {"enabled": True, "bind_address": "127.0.0.1"},
            "tracking": {"data_dir": "data"},
        }
    )
    store = open_store(config)
    store.create_schema()
    server = store.add_server("Main")
    store.add_track_domain(server, TRACK_DOMAIN, ssl_enabled=False, dns_status="OK")
    store.close()
    host = ROOT / "examples" / "host.py"
    readme = (ROOT / "docs" / "relay.md").read_text()
    assert host.read_text().strip() in readme
    result = subprocess.run(
        [sys.executable, str(host), config.source, "Main", "news@example.com", "ann@example.net"],
        input=message(),
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    tokens = tracked_links(result.stdout, server)
    assert len(tokens) == 2
    store = open_store(config)
    try:
        assert store.find_link(server.id, tokens[0])["url"] == "https://www.example.org/news/1"
    finally:
        store.close()
