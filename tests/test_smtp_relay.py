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
from aiosmtpd.smtp import SMTP
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
        #: Scripted replies to the final dot, per (first) recipient; the message is not kept.
        self.refuse_data: dict[str, list[str]] = {}
        self.sessions: list[tuple[bool, Any]] = []  # (over TLS, AUTH data) per message
        self.helos: list[str] = []  # the EHLO name per message
        self.connections: list[int] = []  # id() of the connection per message

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        scripted = self.refuse.get(address)
        if scripted:
            return scripted.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        scripted = self.refuse_data.get(envelope.rcpt_tos[0])
        if scripted:
            return scripted.pop(0)
        tls = server.transport.get_extra_info("ssl_object") is not None
        self.sessions.append((tls, session.auth_data))
        self.helos.append(session.host_name)
        self.connections.append(id(server))
        self.received.append(
            (envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        )
        return "250 OK queued"


class LongLineSMTP(SMTP):
    line_length_limit = 1_000_000


class EphemeralController(Controller):
    """aiosmtpd's Controller on a socket bound to a free loopback port first."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        # proto given explicitly: asyncio sets TCP_NODELAY only then, and without it
        # every multi-line reply (EHLO) waits 40 ms for a delayed ACK.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen()
        super().__init__(
            handler,
            hostname="127.0.0.1",
            port=self._sock.getsockname()[1],
            server_hostname="upstream.test",
            **kwargs,
        )

    def factory(self) -> SMTP:
        # Long lines accepted, as Postfix does (aiosmtpd stops at 1,001 bytes).
        return LongLineSMTP(self.handler, **self.SMTP_kwargs)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)


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
            server="Main",
            listen="127.0.0.1:0",
            upstream=f"127.0.0.1:{upstream_port}",
            **{"upstream_timeout": 10, **relay},
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


def make_message(message_id: str = "<relay-test@example.com>") -> bytes:
    msg = EmailMessage()
    msg["From"] = "News <news@example.com>"
    msg["To"] = ", ".join(RECIPIENTS)
    msg["Subject"] = "Relayed"
    msg["Message-ID"] = message_id
    msg.set_content("Read https://www.example.org/news/1 today.\n")
    msg.add_alternative(
        '<html><body><p><a href="https://www.example.org/news/1">news</a></p></body></html>',
        subtype="html",
    )
    return msg.as_bytes()


#: Serialised once, so a retry sends the same bytes, as a client's queue does.
MESSAGE = make_message()


def send(
    relay: SmtpRelay,
    rcpts: list[str],
    *,
    login: tuple[str, str] | None = None,
    message: bytes = MESSAGE,
) -> None:
    host, port = relay.address
    with smtplib.SMTP(host, port, local_hostname="client.test", timeout=30) as client:
        if login:
            client.login(*login)
        client.sendmail("news@example.com", rcpts, message)


def decoded(data: bytes) -> str:
    """The message's text parts, transfer encoding undone."""
    return b"\n".join(
        part.get_payload(decode=True)
        for part in message_from_bytes(data).walk()
        if not part.is_multipart()
    ).decode()


def link_tokens(data: bytes, server: Server) -> list[str]:
    text = decoded(data)
    return re.findall(
        rf"https?://{re.escape(TRACK_DOMAIN)}/{server.token}/([A-Za-z0-9]{{16}})", text
    )


def test_each_recipient_gets_its_own_rewritten_copy_and_rows(
    tracking: tuple[Config, Store, Server],
    upstream: tuple[Collector, int],
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
            rf"with ESMTP\s+for <{re.escape(rcpt)}>;",
            trace,
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
    tracking: tuple[Config, Store, Server],
    upstream: tuple[Collector, int],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    config, store, server = tracking
    collector, port = upstream
    relay = start_relay(config, store, port)
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda i: send(relay, RECIPIENTS[:2], message=make_message(f"<c{i}@example.com>")),
                range(4),
            )
        )
    assert sorted(r for _, [r], _ in collector.received) == sorted(RECIPIENTS[:2] * 4)
    tokens = [t for _, _, data in collector.received for t in link_tokens(data, server)]
    assert len(tokens) == len(set(tokens)) == 16
    assert all(store.find_link(server.id, t) for t in tokens)


def test_batch_sends_one_copy_to_all_recipients(
    tracking: tuple[Config, Store, Server],
    upstream: tuple[Collector, int],
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
    with pytest.raises(smtplib.SMTPSenderRefused) as info:  # at MAIL, before any data
        send(relay, RECIPIENTS)
    assert 400 <= info.value.smtp_code < 500
    assert b"unreachable" in info.value.smtp_error


def test_a_temporary_refusal_is_retried_without_duplicates(
    tracking: tuple[Config, Store, Server],
    upstream: tuple[Collector, int],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    config, store, _ = tracking
    collector, port = upstream
    collector.refuse["bob@example.net"] = ["452 4.2.2 Mailbox full, try later"]
    relay = start_relay(config, store, port)
    host, port = relay.address
    with smtplib.SMTP(host, port, timeout=30) as client:
        refused = client.sendmail("news@example.com", RECIPIENTS, MESSAGE)
    # Refused at RCPT with the upstream's own reply; the others went on.
    assert refused == {"bob@example.net": (452, b"4.2.2 Mailbox full, try later")}
    assert sorted(r for _, [r], _ in collector.received) == ["ann@example.net", "cy@example.org"]

    send(relay, ["bob@example.net"])  # the client's retry for bob
    assert sorted(r for _, [r], _ in collector.received) == sorted(RECIPIENTS)


def test_a_permanent_refusal_of_every_recipient_is_passed_back_as_5xx(
    tracking: tuple[Config, Store, Server],
    upstream: tuple[Collector, int],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    config, store, _ = tracking
    collector, port = upstream
    for rcpt in RECIPIENTS:
        collector.refuse[rcpt] = ["550 5.1.1 No such user"]
    relay = start_relay(config, store, port)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        send(relay, RECIPIENTS)
    assert info.value.recipients == dict.fromkeys(RECIPIENTS, (550, b"5.1.1 No such user"))
    assert collector.received == []


def test_a_pooled_upstream_connection_that_was_dropped_is_replaced(
    tracking: tuple[Config, Store, Server],
    make_upstream: Callable[..., tuple[Collector, int]],
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
    tracking: tuple[Config, Store, Server],
    start_relay: Callable[..., SmtpRelay],
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
    tracking: tuple[Config, Store, Server],
    upstream: tuple[Collector, int],
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
    tracking: tuple[Config, Store, Server],
    upstream: tuple[Collector, int],
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
        {
            "fast_server": {"enabled": True, "bind_address": "127.0.0.1"},
            "tracking": {"data_dir": "data"},
        }
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
    sqlite_tracking: tuple[Config, Store],
    ca: tuple[ssl.SSLContext, Path],
    make_upstream: Callable[..., tuple[Collector, int]],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    config, store = sqlite_tracking
    context, ca_file = ca
    collector, port = make_upstream(
        tls_context=context,
        require_starttls=True,
        authenticator=upstream_login,
        auth_required=True,
    )
    relay = start_relay(
        config,
        store,
        port,
        upstream_tls="starttls",
        upstream_ca_file=str(ca_file),
        upstream_username="relay",
        upstream_password="pw",
    )
    send(relay, RECIPIENTS[:1])
    send(relay, RECIPIENTS[1:2])  # on the pooled connection
    assert [r for _, r, _ in collector.received] == [RECIPIENTS[:1], RECIPIENTS[1:2]]
    assert collector.sessions == [(True, b"relay"), (True, b"relay")]


def test_implicit_tls_to_the_upstream(
    sqlite_tracking: tuple[Config, Store],
    ca: tuple[ssl.SSLContext, Path],
    make_upstream: Callable[..., tuple[Collector, int]],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    config, store = sqlite_tracking
    context, ca_file = ca
    collector, port = make_upstream(ssl_context=context)
    relay = start_relay(config, store, port, upstream_tls="implicit", upstream_ca_file=str(ca_file))
    send(relay, RECIPIENTS[:1])
    assert [r for _, r, _ in collector.received] == [RECIPIENTS[:1]]
    assert collector.sessions == [(True, None)]


def test_an_upstream_certificate_from_an_unknown_ca_gives_a_4xx(
    sqlite_tracking: tuple[Config, Store],
    ca: tuple[ssl.SSLContext, Path],
    make_upstream: Callable[..., tuple[Collector, int]],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    config, store = sqlite_tracking
    context, _ = ca
    collector, port = make_upstream(tls_context=context, require_starttls=True)
    relay = start_relay(config, store, port, upstream_tls="starttls")
    with pytest.raises(smtplib.SMTPSenderRefused) as info:
        send(relay, RECIPIENTS[:1])
    assert 400 <= info.value.smtp_code < 500
    assert b"CERTIFICATE_VERIFY_FAILED" in info.value.smtp_error
    assert collector.received == []


def test_a_wrong_upstream_password_gives_a_4xx(
    sqlite_tracking: tuple[Config, Store],
    ca: tuple[ssl.SSLContext, Path],
    make_upstream: Callable[..., tuple[Collector, int]],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    config, store = sqlite_tracking
    context, ca_file = ca
    collector, port = make_upstream(
        tls_context=context,
        require_starttls=True,
        authenticator=upstream_login,
        auth_required=True,
    )
    relay = start_relay(
        config,
        store,
        port,
        upstream_tls="starttls",
        upstream_ca_file=str(ca_file),
        upstream_username="relay",
        upstream_password="bad",
    )
    with pytest.raises(smtplib.SMTPSenderRefused) as info:
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
    section = readme[readme.index("## SMTP relay") :]
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
    return [
        sys.executable,
        "-m",
        "postal_tracking_plugin.cli",
        "-c",
        str(config.source),
        "smtp-relay",
        *args,
    ]


def test_the_command_relays_until_sigterm(
    cli_config: Config, upstream: tuple[Collector, int], tmp_path: Path
) -> None:
    collector, port = upstream
    proc = subprocess.Popen(
        cli(cli_config, "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{port}"),
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.search(
            r"smtp-relay: listening on 127\.0\.0\.1:(\d+), relaying to "
            rf"127\.0\.0\.1:{port} \(opportunistic TLS\) for server 'Main'",
            line,
        )
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
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"postal-tracking: error: cannot listen on 127.0.0.1:{port}: the port is in use by "
        "another program; stop that program, or set tracking.relay.listen (or --listen) to "
        "another port"
    )


# -- issue 18: never a copy twice, honest answers, what MTAs accept ------------------


def rcpts_received(collector: Collector) -> list[str]:
    return sorted(r for _, rcpts, _ in collector.received for r in rcpts)


def test_a_recipient_the_upstream_cannot_take_without_smtputf8_gets_553_the_others_go_once(
    tracking: tuple[Config, Store, Server],
    make_upstream: Callable[..., tuple[Collector, int]],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    """Row 1: was a UnicodeEncodeError, 451 on every try and one more copy each time."""
    config, store, _ = tracking
    collector, port = make_upstream(enable_SMTPUTF8=False)
    relay = start_relay(config, store, port)
    rcpts = ["ann@example.net", "jörg@example.net", "cy@example.org"]
    for _ in range(3):  # the client's first try and two retries
        with smtplib.SMTP(*relay.address, timeout=30) as client:
            refused = client.sendmail("news@example.com", rcpts, MESSAGE, ["SMTPUTF8"])
        assert refused == {"jörg@example.net": (553, refused["jörg@example.net"][1])}
        assert refused["jörg@example.net"][1].startswith(b"5.6.7 ")
    assert rcpts_received(collector) == ["ann@example.net", "cy@example.org"]
    # Without SMTPUTF8 declared, a non-ASCII address is refused as Postfix does.
    with smtplib.SMTP(*relay.address, timeout=30) as client:
        client.ehlo()
        client.mail("news@example.com")
        client.command_encoding = "utf-8"
        assert client.rcpt("jörg@example.net") == (
            553,
            b"5.6.7 Must declare SMTPUTF8 to send a non-ASCII address",
        )


def test_a_late_reply_to_the_final_dot_is_waited_for_with_its_own_timeout(
    tracking: tuple[Config, Store, Server],
    make_upstream: Callable[..., tuple[Collector, int]],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    """Row 2: the reply to the final dot came after upstream_timeout; it was 451 and a copy."""
    config, store, _ = tracking
    collector = SlowCollector()  # answers the final dot after 0.3 s
    controller = EphemeralController(collector)
    controller.start()
    try:
        relay = start_relay(
            config, store, controller.port, upstream_timeout=0.1, upstream_data_done_timeout=10
        )
        send(relay, RECIPIENTS[:1])
        assert rcpts_received(collector) == RECIPIENTS[:1]
        relay.stop()
    finally:
        controller.stop()


def test_no_reply_to_the_final_dot_is_deferred_as_postfix_does(
    tracking: tuple[Config, Store, Server],
    start_relay: Callable[..., SmtpRelay],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After upstream_data_done_timeout: 4xx saying it may have been delivered, a warning."""
    config, store, _ = tracking
    collector = SlowCollector()
    controller = EphemeralController(collector)
    controller.start()
    try:
        relay = start_relay(config, store, controller.port, upstream_data_done_timeout=0.1)
        with pytest.raises(smtplib.SMTPDataError) as info:
            send(relay, RECIPIENTS[:1])
        assert info.value.smtp_code == 451
        assert b"it may have been delivered" in info.value.smtp_error
        assert "may be delivered twice" in caplog.text
        relay.stop()
    finally:
        controller.stop()


def test_a_recipient_is_remembered_even_when_the_relay_fails_after_its_copy(
    tracking: tuple[Config, Store, Server],
    upstream: tuple[Collector, int],
    start_relay: Callable[..., SmtpRelay],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception while making the second copy: 451, and the retry skips the first."""
    config, store, _ = tracking
    collector, port = upstream
    relay = start_relay(config, store, port)
    handler = relay.handler
    real_copy = handler._copy

    def failing_copy(incoming: Any, group: list[str]) -> bytes:
        if group == ["bob@example.net"]:
            raise RuntimeError("a bug while making bob's copy")
        return real_copy(incoming, group)

    monkeypatch.setattr(handler, "_copy", failing_copy)
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(relay, RECIPIENTS)
    assert info.value.smtp_code == 451
    assert rcpts_received(collector) == ["ann@example.net"]
    monkeypatch.setattr(handler, "_copy", real_copy)
    send(relay, RECIPIENTS)
    assert rcpts_received(collector) == sorted(RECIPIENTS)


def test_a_data_refusal_of_one_copy_is_retried_and_the_retry_is_keyed_on_message_id(
    tracking: tuple[Config, Store, Server],
    upstream: tuple[Collector, int],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    """Row 7b: the retry is re-rendered (new Date) yet matches on Message-ID."""
    config, store, _ = tracking
    collector, port = upstream
    collector.refuse_data["bob@example.net"] = ["451 4.3.0 Queue file write error"]
    relay = start_relay(config, store, port)
    first = make_message("<once@example.com>")
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(relay, RECIPIENTS, message=first)
    assert info.value.smtp_code == 451
    assert b"recipients already relayed will be skipped" in info.value.smtp_error
    assert rcpts_received(collector) == ["ann@example.net", "cy@example.org"]
    retry = b"Date: Mon, 7 Dec 2026 16:00:00 +0000\r\n" + first
    send(relay, RECIPIENTS, message=retry)
    assert rcpts_received(collector) == sorted(RECIPIENTS)
    send(relay, RECIPIENTS[:1], message=make_message("<another@example.com>"))
    assert rcpts_received(collector) == sorted([*RECIPIENTS, "ann@example.net"])


def test_a_permanent_data_refusal_passes_the_upstreams_own_code(
    tracking: tuple[Config, Store, Server],
    upstream: tuple[Collector, int],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    config, store, _ = tracking
    collector, port = upstream
    collector.refuse_data["ann@example.net"] = ["554 5.7.1 Spam detected"]
    collector.refuse["bob@example.net"] = ["550 5.7.1 <bob@example.net>: Relay access denied"]
    relay = start_relay(config, store, port)
    with smtplib.SMTP(*relay.address, timeout=30) as client:
        client.ehlo()
        client.mail("news@example.com")
        assert client.rcpt("bob@example.net") == (
            550,
            b"5.7.1 <bob@example.net>: Relay access denied",
        )
        assert client.rcpt("ann@example.net")[0] == 250
        assert client.data(make_message("<spam@example.com>")) == (554, b"5.7.1 Spam detected")
    assert collector.received == []


def raw_session(relay: SmtpRelay, commands: bytes) -> bytes:
    """Send ``commands`` at once (pipelined) and read until the server closes."""
    with socket.create_connection(relay.address, timeout=10) as sock:
        sock.sendall(commands)
        replies = b""
        while chunk := sock.recv(65536):
            replies += chunk
    return replies


def test_long_lines_and_bare_lf_are_accepted_and_pipelining_is_advertised(
    tracking: tuple[Config, Store, Server],
    upstream: tuple[Collector, int],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    """Row 4: a 5,000-byte line and a bare-LF message over 1 KB were 500 Line too long."""
    config, store, _ = tracking
    collector, port = upstream
    relay = start_relay(config, store, port)
    long_line = b"x" * 5000
    body = b"\n".join([b"line %d" % i for i in range(200)])
    message = (
        b"From: a@example.com\nTo: ann@example.net\nSubject: lf\nMessage-ID: <lf@example.com>\n\n"
        + long_line
        + b"\n"
        + body
        + b"\n.not the end\n.\nstill not the end\r\n"
    )
    replies = raw_session(
        relay,
        b"EHLO client.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<ann@example.net>\r\n"
        b"DATA\r\n" + message + b".\r\nQUIT\r\n",
    )
    assert b"250-PIPELINING\r\n" in replies
    assert b"\r\n250 2.0.0 OK: relayed to 1 recipient\r\n221" in replies
    [(_, _, data)] = collector.received
    assert b"\r\n" + long_line + b"\r\n" in data
    assert b"\n" not in data.replace(b"\r\n", b"")  # every bare LF became CRLF
    # "\n.\n" is no end of data (only CRLF.CRLF is); a leading dot is unstuffed as ever.
    assert data.endswith(b"\r\nnot the end\r\n\r\nstill not the end\r\n")


def test_ehlo_says_the_upstreams_size_and_helo_name_is_used_upstream(
    tracking: tuple[Config, Store, Server],
    make_upstream: Callable[..., tuple[Collector, int]],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    """Rows 5 and 9: the EHLO name was socket.gethostname(); SIZE was always 32 MiB."""
    config, store, _ = tracking
    collector, port = make_upstream(data_size_limit=123456)
    relay = start_relay(config, store, port, helo_name="relay.example.com")
    send(relay, RECIPIENTS[:1])
    with smtplib.SMTP(*relay.address, timeout=30) as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "123456"
        assert "pipelining" in client.esmtp_features
        assert client.ehlo_resp.startswith(b"relay.example.com")
    assert collector.helos == ["relay.example.com"]


def test_opportunistic_starttls_is_used_when_offered_whatever_the_certificate(
    sqlite_tracking: tuple[Config, Store],
    ca: tuple[ssl.SSLContext, Path],
    make_upstream: Callable[..., tuple[Collector, int]],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    """Row 9: upstream_tls none never used STARTTLS; the default is now opportunistic."""
    config, store = sqlite_tracking
    context, _ = ca  # a CA the relay does not know: opportunistic TLS verifies nothing
    collector, port = make_upstream(tls_context=context)
    relay = start_relay(config, store, port)
    send(relay, RECIPIENTS[:1])
    assert collector.sessions == [(True, None)]


def test_upstream_connections_are_retired_after_their_max_age(
    tracking: tuple[Config, Store, Server],
    upstream: tuple[Collector, int],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    """Row 7a: a busy pooled connection lived for ever (40 s of mail past a postfix reload)."""
    config, store, _ = tracking
    collector, port = upstream
    relay = start_relay(config, store, port, upstream_connection_max_age=0)
    for i in range(3):
        send(relay, RECIPIENTS[:1], message=make_message(f"<age{i}@example.com>"))
    assert len(set(collector.connections)) == 3
    young = start_relay(config, store, port)
    for i in range(3):
        send(young, RECIPIENTS[:1], message=make_message(f"<young{i}@example.com>"))
    assert len(set(collector.connections[3:])) == 1


class CountingCollector(SlowCollector):
    """Counts the DATA transactions it is inside at once."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self.most_inside = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            return await super().handle_DATA(server, session, envelope)
        finally:
            self.inside -= 1


def test_max_buffered_messages_bounds_the_messages_in_memory_at_once(
    tracking: tuple[Config, Store, Server],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    """Row 8: every message was buffered at once (ten 14 MB messages: 466 MB)."""
    config, store, _ = tracking
    collector = CountingCollector()
    controller = EphemeralController(collector)
    controller.start()
    try:
        relay = start_relay(config, store, controller.port, max_buffered_messages=1)
        with ThreadPoolExecutor(3) as pool:
            list(
                pool.map(
                    lambda i: send(
                        relay, RECIPIENTS[:1], message=make_message(f"<b{i}@example.com>")
                    ),
                    range(3),
                )
            )
        assert len(collector.received) == 3
        assert collector.most_inside == 1
        relay.stop()
    finally:
        controller.stop()


def test_auth_outside_the_allowed_networks_is_refused_before_any_credential(
    tracking: tuple[Config, Store, Server],
    upstream: tuple[Collector, int],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    """Row 6: from outside allowed_networks a right password got 235."""
    config, store, _ = tracking
    _, port = upstream
    relay = start_relay(
        config, store, port, auth_users={"app": "s3cret"}, allowed_networks=("10.0.0.0/8",)
    )
    with smtplib.SMTP(*relay.address, timeout=30) as client:
        client.ehlo()
        assert "auth" not in client.esmtp_features
        assert client.docmd("AUTH", "PLAIN AGFwcABzM2NyZXQ=") == (
            503,
            b"5.5.1 Error: authentication not enabled",
        )


def test_failed_auth_is_slowed_and_the_connection_closed_after_three(
    tracking: tuple[Config, Store, Server],
    upstream: tuple[Collector, int],
    start_relay: Callable[..., SmtpRelay],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Row 6: 50 wrong passwords were answered in milliseconds, no disconnect."""
    config, store, _ = tracking
    _, port = upstream
    relay = start_relay(config, store, port, auth_users={"app": "s3cret"})
    wrong = "PLAIN AGFwcAB3cm9uZw=="  # app / wrong
    with smtplib.SMTP(*relay.address, timeout=30) as client:
        client.ehlo()
        started = time.monotonic()
        assert client.docmd("AUTH", wrong) == (535, b"5.7.8 Authentication credentials invalid")
        assert time.monotonic() - started >= 0.9  # the failure waited its second
        assert client.docmd("AUTH", wrong)[0] == 535
        assert client.docmd("AUTH", wrong) == (
            421,
            b"4.7.0 Too many failed AUTH attempts; closing the connection",
        )
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
    caplog.clear()
    send(relay, RECIPIENTS[:1], login=("app", "s3cret"))
    assert "deprecated" not in caplog.text  # aiosmtpd's login_data warning, row 9


def test_the_received_line_names_the_protocol(
    tracking: tuple[Config, Store, Server],
    upstream: tuple[Collector, int],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    """Row 9: SMTPUTF8 sessions said ESMTP; RFC 6531 says UTF8SMTP (and ...A when AUTH)."""
    config, store, _ = tracking
    collector, port = upstream
    relay = start_relay(config, store, port, auth_users={"app": "s3cret"})
    with smtplib.SMTP(*relay.address, timeout=30) as client:
        client.login("app", "s3cret")
        client.sendmail("news@example.com", RECIPIENTS[:1], MESSAGE, ["SMTPUTF8"])
        client.sendmail("news@example.com", RECIPIENTS[:1], make_message("<p2@example.com>"))
    protocols = [
        re.search(rb"with (\S+)", data).group(1)  # type: ignore[union-attr]
        for _, _, data in collector.received
    ]
    assert protocols == [b"UTF8SMTPA", b"ESMTPA"]


def test_the_aiosmtpd_internals_the_relay_relies_on_are_there() -> None:
    """Canary: hooks/_relay_smtp.py subclasses aiosmtpd's SMTP (aiosmtpd pinned < 1.5)."""
    from postal_tracking_plugin.hooks._relay_smtp import AIOSMTPD_PRIVATE_NAMES

    missing = [name for name in AIOSMTPD_PRIVATE_NAMES if not hasattr(SMTP, name)]
    # _reader and _writer are set per instance; the rest are methods.
    assert missing == ["_reader", "_writer"]
    import inspect

    source = inspect.getsource(SMTP.__init__) + inspect.getsource(SMTP._cb_client_connected)
    assert "self._reader" in source and "self._writer" in source


class HeldCollector(Collector):
    """Holds its reply to the final dot until ``go`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.data_started = threading.Event()
        self.go = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_started.set()
        while not self.go.is_set():
            await asyncio.sleep(0.01)
        return await super().handle_DATA(server, session, envelope)


def test_the_same_message_on_two_connections_at_once_goes_out_once(
    tracking: tuple[Config, Store, Server],
    start_relay: Callable[..., SmtpRelay],
) -> None:
    """A client that gave up waiting and retried while the first try is still in flight."""
    config, store, _ = tracking
    collector = HeldCollector()
    controller = EphemeralController(collector)
    controller.start()
    try:
        relay = start_relay(config, store, controller.port)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(send, relay, RECIPIENTS[:1])
            assert collector.data_started.wait(30)
            with pytest.raises(smtplib.SMTPDataError) as info:
                send(relay, RECIPIENTS[:1])
            assert info.value.smtp_code == 451
            assert b"on another connection right now" in info.value.smtp_error
            collector.go.set()
            first.result()
        send(relay, RECIPIENTS[:1])  # the retry after: already relayed
        assert rcpts_received(collector) == RECIPIENTS[:1]
        relay.stop()
    finally:
        controller.stop()


def test_the_memory_key_is_the_message_id_however_the_header_is_written() -> None:
    from postal_tracking_plugin.hooks._relay_memory import message_key

    plain = b"Subject: a\r\nMessage-ID: <k@example.com>\r\n\r\nbody one\r\n"
    folded = b"Date: now\r\nmessage-id:\r\n <k@example.com>\r\nSubject: b\r\n\r\nbody two\r\n"
    assert message_key("s@example.com", plain) == message_key("s@example.com", folded)
    assert message_key("s@example.com", plain) != message_key("t@example.com", plain)
    # In the body, it is no header: without one, the bytes are the key.
    body_only = b"Subject: a\r\n\r\nMessage-ID: <k@example.com>\r\n"
    assert message_key("s@example.com", body_only) != message_key("s@example.com", plain)
    assert message_key("s@example.com", body_only) != message_key(
        "s@example.com", body_only + b"more\r\n"
    )
