"""The SMTP sidecar relay, end to end over real loopback sockets.

A real ``smtplib`` client sends to ``smtp-relay`` (in this process on an
ephemeral port, or the CLI in a subprocess), which relays to an aiosmtpd server
on loopback that collects what it receives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from aiosmtpd.smtp import LoginPassword

from _support import free_port
from postal_tracking_plugin.config import Config
from postal_tracking_plugin.config import FastServerConfig
from postal_tracking_plugin.config import RelayConfig
from postal_tracking_plugin.config import parse_config
from postal_tracking_plugin.errors import ConfigError
from postal_tracking_plugin.errors import NotFound
from postal_tracking_plugin.hooks import get_plugin_manager
from postal_tracking_plugin.hooks.smtp_relay import RelayError
from postal_tracking_plugin.hooks.smtp_relay import SmtpRelay
from postal_tracking_plugin.store import Server
from postal_tracking_plugin.store import Store
from postal_tracking_plugin.store import open_store

TRACK_DOMAIN = "click.example.com"
RECIPIENTS = ["ann@example.net", "bob@example.net", "cy@example.org"]


class Collector:
    """Upstream handler: keeps each message; ``refuse`` scripts RCPT replies per address."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []
        self.refuse: dict[str, list[str]] = {}
        self.sessions: list[tuple[bool, Any]] = []  # (over TLS, AUTH data) per message

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        scripted = self.refuse.get(address)
        if scripted:
            return scripted.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        tls = server.transport.get_extra_info("ssl_object") is not None
        self.sessions.append((tls, session.auth_data))
        self.received.append(
            (envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        )
        return "250 OK queued"


class EphemeralController(Controller):
    """aiosmtpd's Controller on a socket bound to a free loopback port first."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        # proto given explicitly: asyncio sets TCP_NODELAY only then, and without it
        # every multi-line reply (EHLO) waits 40 ms for a delayed ACK.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen()
        super().__init__(
            handler, hostname="127.0.0.1", port=self._sock.getsockname()[1],
            server_hostname="upstream.test", **kwargs,
        )

    def _create_server(self) -> Any:
        return self.loop.create_server(
            self._factory_invoker, sock=self._sock, ssl=self.ssl_context
        )


@pytest.fixture
def upstream() -> Iterator[tuple[Collector, int]]:
    collector = Collector()
    controller = EphemeralController(collector)
    controller.start()
    yield collector, controller.port
    controller.stop()


@pytest.fixture
def make_upstream() -> Iterator[Callable[..., tuple[Collector, int]]]:
    """Start upstreams with Controller options (TLS, AUTH); stopped after the relay is.

    Request it before ``start_relay``: fixtures are torn down in reverse, so
    the relay closes its pooled upstream connections first.
    """
    controllers: list[Controller] = []

    def make(**kwargs: Any) -> tuple[Collector, int]:
        collector = Collector()
        controller = EphemeralController(collector, **kwargs)
        controller.start()
        controllers.append(controller)
        return collector, controller.port

    yield make
    for controller in controllers:
        controller.stop()


@pytest.fixture
def tracking(store: Store, backend_config: Config) -> tuple[Config, Store, Server]:
    config = dataclasses.replace(
        backend_config, fast_server=FastServerConfig(enabled=True, bind_address=("127.0.0.1",))
    )
    server = store.add_server("Main")
    store.add_track_domain(server, TRACK_DOMAIN, ssl_enabled=False, dns_status="OK")
    return config, store, server


@pytest.fixture
def start_relay() -> Iterator[Callable[..., SmtpRelay]]:
    """Start an in-process relay on a free port with ``tracking.relay`` set from kwargs."""
    running: list[SmtpRelay] = []

    def start(config: Config, store: Store, upstream_port: int, **relay: Any) -> SmtpRelay:
        settings = RelayConfig(
            server="Main", listen="127.0.0.1:0", upstream=f"127.0.0.1:{upstream_port}",
            upstream_timeout=10, **relay,
        )
        config = dataclasses.replace(
            config, tracking=dataclasses.replace(config.tracking, relay=settings)
        )
        r = SmtpRelay(config, store, get_plugin_manager())
        r.start()
        running.append(r)
        return r

    yield start
    for r in running:
        r.stop()


def make_message() -> bytes:
    msg = EmailMessage()
    msg["From"] = "News <news@example.com>"
    msg["To"] = ", ".join(RECIPIENTS)
    msg["Subject"] = "Relayed"
    msg["Message-ID"] = "<relay-test@example.com>"
    msg.set_content("Read https://www.example.org/news/1 today.\n")
    msg.add_alternative(
        "<html><body><p><a href=\"https://www.example.org/news/1\">news</a></p></body></html>",
        subtype="html",
    )
    return msg.as_bytes()


#: Serialised once, so a retry sends the same bytes, as a client's queue does.
MESSAGE = make_message()


def send(relay: SmtpRelay, rcpts: list[str], *, login: tuple[str, str] | None = None) -> None:
    host, port = relay.address
    with smtplib.SMTP(host, port, local_hostname="client.test", timeout=30) as client:
        if login:
            client.login(*login)
        client.sendmail("news@example.com", rcpts, MESSAGE)


def decoded(data: bytes) -> str:
    """The message's text parts, transfer encoding undone."""
    return b"\n".join(
        part.get_payload(decode=True)
        for part in message_from_bytes(data).walk()
        if not part.is_multipart()
    ).decode()


def link_tokens(data: bytes, server: Server) -> list[str]:
    text = decoded(data)
    return re.findall(rf"https?://{re.escape(TRACK_DOMAIN)}/{server.token}/([A-Za-z0-9]{{16}})", text)


def test_each_recipient_gets_its_own_rewritten_copy_and_rows(
    tracking: tuple[Config, Store, Server], upstream: tuple[Collector, int],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    config, store, server = tracking
    collector, port = upstream
    relay = start_relay(config, store, port)
    send(relay, RECIPIENTS)

    assert sorted(rcpts for _, rcpts, _ in collector.received) == [[r] for r in sorted(RECIPIENTS)]
    message_ids = set()
    message_tokens: set[str] = set()
    all_tokens: set[str] = set()
    for mail_from, [rcpt], data in collector.received:
        assert mail_from == "news@example.com"
        trace = message_from_bytes(data)["Received"]
        assert re.match(
            r"from client\.test \(\[127\.0\.0\.1\]\)\s+by \S+ \(postal-tracking smtp-relay\) "
            rf"with ESMTP\s+for <{re.escape(rcpt)}>;", trace
        ), trace
        tokens = link_tokens(data, server)
        assert len(tokens) == 2  # the text part's link and the HTML part's
        all_tokens.update(tokens)
        links = [store.find_link(server.id, t) for t in tokens]
        assert {link["url"] for link in links} == {"https://www.example.org/news/1"}
        [message_id] = {link["message_id"] for link in links}
        message_ids.add(message_id)
        with store.messages(server.id, readonly=True) as db:
            row = db.one("SELECT rcpt_to, token FROM messages WHERE id = %s", (message_id,))
        assert row["rcpt_to"] == rcpt
        [pixel_token] = re.findall(rf"/img/{server.token}/([A-Za-z0-9]{{16}})", decoded(data))
        assert pixel_token == row["token"]
        message_tokens.add(pixel_token)
    assert len(message_ids) == 3
    assert len(message_tokens) == 3
    assert len(all_tokens) == 6


def test_concurrent_clients_each_get_their_copies(
    tracking: tuple[Config, Store, Server], upstream: tuple[Collector, int],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    config, store, server = tracking
    collector, port = upstream
    relay = start_relay(config, store, port)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: send(relay, RECIPIENTS[:2]), range(4)))
    assert sorted(r for _, [r], _ in collector.received) == sorted(RECIPIENTS[:2] * 4)
    tokens = [t for _, _, data in collector.received for t in link_tokens(data, server)]
    assert len(tokens) == len(set(tokens)) == 16
    assert all(store.find_link(server.id, t) for t in tokens)


def test_batch_sends_one_copy_to_all_recipients(
    tracking: tuple[Config, Store, Server], upstream: tuple[Collector, int],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    config, store, server = tracking
    collector, port = upstream
    relay = start_relay(config, store, port, batch=True)
    with smtplib.SMTP(*relay.address, timeout=30) as client:
        client.ehlo()
        assert "auth" not in client.esmtp_features  # no client AUTH unless auth_users are set
    send(relay, RECIPIENTS)
    [(_, rcpts, data)] = collector.received
    assert rcpts == RECIPIENTS
    assert len(link_tokens(data, server)) == 2


def test_upstream_down_gives_the_client_a_4xx(
    tracking: tuple[Config, Store, Server], start_relay: Callable[..., SmtpRelay]
) -> None:
    config, store, _ = tracking
    relay = start_relay(config, store, free_port())
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(relay, RECIPIENTS)
    assert 400 <= info.value.smtp_code < 500
    assert b"unreachable" in info.value.smtp_error


def test_a_temporary_refusal_is_retried_without_duplicates(
    tracking: tuple[Config, Store, Server], upstream: tuple[Collector, int],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    config, store, _ = tracking
    collector, port = upstream
    collector.refuse["bob@example.net"] = ["452 4.2.2 Mailbox full, try later"]
    relay = start_relay(config, store, port)
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(relay, RECIPIENTS)
    assert info.value.smtp_code == 452
    assert sorted(r for _, [r], _ in collector.received) == ["ann@example.net", "cy@example.org"]

    send(relay, RECIPIENTS)  # the client's retry: only bob is still owed a copy
    assert sorted(r for _, [r], _ in collector.received) == sorted(RECIPIENTS)


def test_a_permanent_refusal_of_every_recipient_is_passed_back_as_5xx(
    tracking: tuple[Config, Store, Server], upstream: tuple[Collector, int],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    config, store, _ = tracking
    collector, port = upstream
    for rcpt in RECIPIENTS:
        collector.refuse[rcpt] = ["550 5.1.1 No such user"]
    relay = start_relay(config, store, port)
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(relay, RECIPIENTS)
    assert info.value.smtp_code == 550
    assert b"No such user" in info.value.smtp_error
    assert collector.received == []


def test_a_pooled_upstream_connection_that_was_dropped_is_replaced(
    tracking: tuple[Config, Store, Server], make_upstream: Callable[..., tuple[Collector, int]],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    """The upstream drops idle clients after 0.2 s; the relay reconnects, no 4xx."""
    config, store, _ = tracking
    collector, port = make_upstream(timeout=0.2)
    relay = start_relay(config, store, port)
    send(relay, RECIPIENTS[:1])
    time.sleep(0.5)  # long enough for the upstream to close the pooled connection
    send(relay, RECIPIENTS[1:2])
    assert [r for _, r, _ in collector.received] == [RECIPIENTS[:1], RECIPIENTS[1:2]]


class SlowCollector(Collector):
    """Signals when DATA arrives, then takes a moment to answer."""

    def __init__(self) -> None:
        super().__init__()
        self.data_started = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_started.set()
        await asyncio.sleep(0.3)
        return await super().handle_DATA(server, session, envelope)


def test_stopping_finishes_the_message_in_progress_then_refuses_new_ones(
    tracking: tuple[Config, Store, Server], start_relay: Callable[..., SmtpRelay],
) -> None:
    config, store, _ = tracking
    collector = SlowCollector()
    controller = EphemeralController(collector)
    controller.start()
    try:
        relay = start_relay(config, store, controller.port)
        with ThreadPoolExecutor(1) as pool:
            sending = pool.submit(send, relay, RECIPIENTS[:1])
            assert collector.data_started.wait(30)
            relay.stop()  # while the upstream is still answering DATA
            sending.result()  # the client got its 250
        assert [r for _, r, _ in collector.received] == [RECIPIENTS[:1]]
        with pytest.raises(OSError):
            send(relay, RECIPIENTS[:1])
    finally:
        controller.stop()


def test_a_client_outside_the_allowed_networks_is_refused(
    tracking: tuple[Config, Store, Server], upstream: tuple[Collector, int],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    config, store, _ = tracking
    collector, port = upstream
    relay = start_relay(config, store, port, allowed_networks=("10.0.0.0/8",))
    with pytest.raises(smtplib.SMTPSenderRefused) as info:
        send(relay, RECIPIENTS)
    assert info.value.smtp_code == 550
    assert collector.received == []


def test_client_auth_when_auth_users_are_set(
    tracking: tuple[Config, Store, Server], upstream: tuple[Collector, int],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    config, store, _ = tracking
    collector, port = upstream
    relay = start_relay(config, store, port, auth_users={"app": "s3cret"})
    with smtplib.SMTP(*relay.address, timeout=30) as client:
        client.ehlo()
        assert sorted(client.esmtp_features["auth"].split()) == ["LOGIN", "PLAIN"]
    with pytest.raises(smtplib.SMTPSenderRefused) as info:
        send(relay, RECIPIENTS[:1])
    assert info.value.smtp_code == 530
    with pytest.raises(smtplib.SMTPAuthenticationError):
        send(relay, RECIPIENTS[:1], login=("app", "wrong"))
    send(relay, RECIPIENTS[:1], login=("app", "s3cret"))
    assert [r for _, r, _ in collector.received] == [RECIPIENTS[:1]]


def test_the_relay_needs_a_server_that_exists(tracking: tuple[Config, Store, Server]) -> None:
    config, store, _ = tracking
    with pytest.raises(ConfigError, match="tracking.relay.server is not set"):
        SmtpRelay(config, store, get_plugin_manager())
    with pytest.raises(NotFound, match="no server named 'Nope'"):
        SmtpRelay(config, store, get_plugin_manager(), server="Nope")


def test_a_port_in_use_is_one_clear_error(tracking: tuple[Config, Store, Server]) -> None:
    config, store, _ = tracking
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        relay = SmtpRelay(
            config, store, get_plugin_manager(), server="Main", listen=f"127.0.0.1:{port}"
        )
        with pytest.raises(RelayError, match=f"127.0.0.1:{port}: the port is in use"):
            relay.bind()


# -- TLS and AUTH to the upstream ----------------------------------------------


@pytest.fixture
def sqlite_tracking(write_config: Callable[..., Config]) -> Iterator[tuple[Config, Store]]:
    config = write_config(
        {"fast_server": {"enabled": True, "bind_address": "127.0.0.1"},
         "tracking": {"data_dir": "data"}}
    )
    store = open_store(config)
    store.create_schema()
    server = store.add_server("Main")
    store.add_track_domain(server, TRACK_DOMAIN, ssl_enabled=False, dns_status="OK")
    yield config, store
    store.close()


@pytest.fixture
def ca(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """An upstream server certificate for 127.0.0.1 from a private CA, and the CA's file."""
    authority = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "upstream-ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    return context, ca_file


def upstream_login(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data == (b"relay", b"pw")
    return AuthResult(success=ok, handled=False, auth_data=b"relay" if ok else None)


def test_starttls_and_login_to_the_upstream(
    sqlite_tracking: tuple[Config, Store], ca: tuple[ssl.SSLContext, Path],
    make_upstream: Callable[..., tuple[Collector, int]], start_relay: Callable[..., SmtpRelay],
) -> None:
    config, store = sqlite_tracking
    context, ca_file = ca
    collector, port = make_upstream(
        tls_context=context, require_starttls=True, authenticator=upstream_login,
        auth_required=True,
    )
    relay = start_relay(
        config, store, port, upstream_tls="starttls",
        upstream_ca_file=str(ca_file), upstream_username="relay", upstream_password="pw",
    )
    send(relay, RECIPIENTS[:1])
    send(relay, RECIPIENTS[1:2])  # on the pooled connection
    assert [r for _, r, _ in collector.received] == [RECIPIENTS[:1], RECIPIENTS[1:2]]
    assert collector.sessions == [(True, b"relay"), (True, b"relay")]


def test_implicit_tls_to_the_upstream(
    sqlite_tracking: tuple[Config, Store], ca: tuple[ssl.SSLContext, Path],
    make_upstream: Callable[..., tuple[Collector, int]], start_relay: Callable[..., SmtpRelay],
) -> None:
    config, store = sqlite_tracking
    context, ca_file = ca
    collector, port = make_upstream(ssl_context=context)
    relay = start_relay(
        config, store, port, upstream_tls="implicit", upstream_ca_file=str(ca_file)
    )
    send(relay, RECIPIENTS[:1])
    assert [r for _, r, _ in collector.received] == [RECIPIENTS[:1]]
    assert collector.sessions == [(True, None)]


def test_an_upstream_certificate_from_an_unknown_ca_gives_a_4xx(
    sqlite_tracking: tuple[Config, Store], ca: tuple[ssl.SSLContext, Path],
    make_upstream: Callable[..., tuple[Collector, int]], start_relay: Callable[..., SmtpRelay],
) -> None:
    config, store = sqlite_tracking
    context, _ = ca
    collector, port = make_upstream(tls_context=context, require_starttls=True)
    relay = start_relay(config, store, port, upstream_tls="starttls")
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(relay, RECIPIENTS[:1])
    assert 400 <= info.value.smtp_code < 500
    assert b"CERTIFICATE_VERIFY_FAILED" in info.value.smtp_error
    assert collector.received == []


def test_a_wrong_upstream_password_gives_a_4xx(
    sqlite_tracking: tuple[Config, Store], ca: tuple[ssl.SSLContext, Path],
    make_upstream: Callable[..., tuple[Collector, int]], start_relay: Callable[..., SmtpRelay],
) -> None:
    config, store = sqlite_tracking
    context, ca_file = ca
    collector, port = make_upstream(
        tls_context=context, require_starttls=True, authenticator=upstream_login,
        auth_required=True,
    )
    relay = start_relay(
        config, store, port, upstream_tls="starttls",
        upstream_ca_file=str(ca_file), upstream_username="relay", upstream_password="bad",
    )
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(relay, RECIPIENTS[:1])
    assert 400 <= info.value.smtp_code < 500
    assert b"refused our login as 'relay'" in info.value.smtp_error


def test_bad_relay_settings_fail_at_start_up_naming_the_key(
    sqlite_tracking: tuple[Config, Store], tmp_path: Path
) -> None:
    config, store = sqlite_tracking
    pm = get_plugin_manager()
    with pytest.raises(ConfigError, match="--listen: 'localhost:99999' has a bad port"):
        SmtpRelay(config, store, pm, server="Main", listen="localhost:99999")
    relay = RelayConfig(
        server="Main", upstream_tls="starttls", upstream_ca_file=str(tmp_path / "missing.pem")
    )
    broken = dataclasses.replace(config, tracking=dataclasses.replace(config.tracking, relay=relay))
    with pytest.raises(ConfigError, match="tracking.relay.upstream_ca_file: cannot load .*missing"):
        SmtpRelay(broken, store, pm)
    with pytest.raises(ConfigError, match="is the relay's own listening address"):
        SmtpRelay(
            config, store, pm, server="Main", listen="0.0.0.0:2525", upstream="localhost:2525"
        )


def test_the_readme_relay_configuration_loads() -> None:
    readme = (Path(__file__).resolve().parent.parent / "docs" / "relay.md").read_text()
    section = readme[readme.index("## SMTP relay"):]
    block = section[section.index("```yaml\n") + 8 :]
    relay = parse_config(block[: block.index("```")]).tracking.relay
    assert (relay.server, relay.upstream_tls, relay.batch) == ("Main", "starttls", False)


# -- the command ---------------------------------------------------------------


@pytest.fixture
def cli_config(write_config: Callable[..., Config]) -> Config:
    """A SQLite postal.yml with tracking on and a server with a tracking domain."""
    config = write_config(
        {
            "fast_server": {"enabled": True, "bind_address": "127.0.0.1"},
            "tracking": {"data_dir": "data", "relay": {"server": "Main"}},
        }
    )
    store = open_store(config)
    store.create_schema()
    server = store.add_server("Main")
    store.add_track_domain(server, TRACK_DOMAIN, ssl_enabled=False, dns_status="OK")
    store.close()
    return config


def cli(config: Config, *args: str) -> list[str]:
    return [sys.executable, "-m", "postal_tracking_plugin.cli", "-c", str(config.source),
            "smtp-relay", *args]


def test_the_command_relays_until_sigterm(
    cli_config: Config, upstream: tuple[Collector, int], tmp_path: Path
) -> None:
    collector, port = upstream
    proc = subprocess.Popen(
        cli(cli_config, "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{port}"),
        stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.search(r"smtp-relay: listening on 127\.0\.0\.1:(\d+), relaying to "
                          rf"127\.0\.0\.1:{port} for server 'Main'", line)
        assert found, line
        with smtplib.SMTP("127.0.0.1", int(found.group(1)), timeout=30) as client:
            client.sendmail("news@example.com", RECIPIENTS[:2], MESSAGE)
        assert sorted(r for _, [r], _ in collector.received) == RECIPIENTS[:2]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        rest = proc.stderr.read()
        assert "smtp-relay: stopped" in rest
        assert "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_the_command_warns_when_nothing_will_be_tracked(
    write_config: Callable[..., Config], tmp_path: Path
) -> None:
    config = write_config({"tracking": {"data_dir": "data", "relay": {"server": "Main"}}})
    store = open_store(config)
    store.create_schema()
    store.add_server("Main")
    store.close()
    proc = subprocess.Popen(
        cli(config, "--listen", "127.0.0.1:0"), stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline().startswith("smtp-relay: listening on 127.0.0.1:")
        assert proc.stderr.readline() == (
            "smtp-relay: warning: fast_server.enabled is false, so messages are relayed "
            "without tracking\n"
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_the_command_says_in_one_line_that_the_port_is_in_use(
    cli_config: Config, tmp_path: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = subprocess.run(
            cli(cli_config, "--listen", f"127.0.0.1:{port}"),
            capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"postal-tracking: error: cannot listen on 127.0.0.1:{port}: the port is in use by "
        "another program; stop that program, or set tracking.relay.listen (or --listen) to "
        "another port"
    )
