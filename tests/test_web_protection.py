"""The fast server against slow, oversized, malformed and proxied connections."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web_live import LiveServer
from web_live import add_message
from web_live import raw_exchange
from web_live import rows
from web_live import tls_client_context
from web_live import with_settings

from postal_tracking_plugin.config import Config
from postal_tracking_plugin.default_certificate import ensure_default_certificate
from postal_tracking_plugin.store import Store
from postal_tracking_plugin.store import open_store
from postal_tracking_plugin.web._handler import TrackingHandler
from postal_tracking_plugin.web.server import Limits


@pytest.fixture
def sqlite_store(write_config: Any) -> Iterator[tuple[Config, Store]]:
    config = write_config({"tracking": {"data_dir": "data"}})
    store = open_store(config)
    store.create_schema()
    yield config, store
    store.close()


def start(config: Config, store: Store, **limits: float) -> LiveServer:
    return LiveServer(config, store, limits=Limits(**limits)).start()


def test_accepted_sockets_have_tcp_nodelay(
    sqlite_store: tuple[Config, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    original = TrackingHandler.handle

    def handle(self: TrackingHandler) -> None:
        seen.append(self.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        original(self)

    monkeypatch.setattr(TrackingHandler, "handle", handle)
    live = start(*sqlite_store)
    try:
        assert live.request("GET", "/")[0].status == 200
        ctx = tls_client_context()
        with socket.create_connection((live.host, live.https_port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert tls.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        live.stop()
    assert seen and all(seen), seen


def test_keep_alive_answers_in_one_write_per_response(
    sqlite_store: tuple[Config, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Head and body leave in one send: two would stall on the client's delayed ACK."""
    import gevent._socket3

    live = start(*sqlite_store)
    sends: list[int] = []  # bytes per send() on the server's side of the connection
    original = gevent._socket3.socket.send

    def send(self: Any, data: Any, *args: Any, **kwargs: Any) -> int:
        if self.getsockname()[1] == live.http_port:
            sends.append(len(data))
        return original(self, data, *args, **kwargs)

    monkeypatch.setattr(gevent._socket3.socket, "send", send)  # sendall() goes through send()
    try:
        with socket.create_connection((live.host, live.http_port), timeout=10) as sock:
            for path in ("/", "/img/nosuch/token", "/", "/nosuch/token"):
                before = len(sends)
                sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
                data = b""
                while b"\r\n\r\n" not in data:
                    data += sock.recv(4096)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(re.search(rb"\r\nContent-Length: (\d+)", head, re.I)[1])  # type: ignore[index]
                while len(body) < length:
                    body += sock.recv(4096)
                assert head.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 404 ")), head
                assert sends[before:] == [len(head) + 4 + len(body)], (path, sends[before:])
    finally:
        live.stop()


def test_oversized_headers_get_431_and_the_server_keeps_answering(
    sqlite_store: tuple[Config, Store],
) -> None:
    live = start(*sqlite_store)
    try:
        big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
        assert raw_exchange(live.host, live.http_port, big).startswith(b"HTTP/1.1 431")
        many = (
            b"GET / HTTP/1.1\r\n"
            + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 90) for i in range(90))
            + b"\r\n"
        )
        assert raw_exchange(live.host, live.http_port, many).startswith(b"HTTP/1.1 431")
        long_line = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"
        answer = raw_exchange(live.host, live.http_port, long_line)
        assert answer.startswith((b"HTTP/1.1 431", b"HTTP/1.1 414"))
        assert live.request("GET", "/")[0].status == 200
    finally:
        live.stop()


def test_malformed_requests_do_not_stop_good_ones(sqlite_store: tuple[Config, Store]) -> None:
    live = start(*sqlite_store)
    try:
        junk = [
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 50 + b"\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET / HTTP/9.9\r\n\r\n",
            b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
            b"GET / HTTP/1.1\r\n folded: header\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        ] * 5
        for data in junk:
            answer = raw_exchange(live.host, live.http_port, data)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:40]
        assert live.request("GET", "/")[0].status == 200
        assert live.worker.stats.bad_requests >= 20
    finally:
        live.stop()


def test_slow_clients_are_dropped(sqlite_store: tuple[Config, Store]) -> None:
    live = start(*sqlite_store, header_timeout=0.5, idle_timeout=0.5)
    try:
        # A request head trickling in: cut off by the header deadline (408 or close).
        with socket.create_connection((live.host, live.http_port), timeout=10) as slow:
            slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            answer = slow.recv(1000)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
        # An idle kept-alive connection: closed after the idle timeout.
        with socket.create_connection((live.host, live.http_port), timeout=10) as idle:
            idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while not data.endswith(b"Hello."):
                data += idle.recv(4096)
            assert idle.recv(100) == b""  # the server closed it; the client's 10 s did not pass
        # A connection that says nothing at all.
        with socket.create_connection((live.host, live.http_port), timeout=10) as silent:
            assert silent.recv(100) == b""
        assert live.request("GET", "/")[0].status == 200
    finally:
        live.stop()


def test_a_body_that_never_arrives_is_cut_off_by_the_io_timeout(
    sqlite_store: tuple[Config, Store],
) -> None:
    live = start(*sqlite_store, io_timeout=0.5)
    try:
        with socket.create_connection((live.host, live.http_port), timeout=10) as slow:
            slow.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b")
            data = b""
            while chunk := slow.recv(4096):  # the server closes it; the client's 10 s do not pass
                data += chunk
            assert data == b"" or data.startswith(b"HTTP/1.1 ")
        assert live.request("GET", "/")[0].status == 200
    finally:
        live.stop()


def test_proxy_protocol_gives_the_client_address(
    sqlite_store: tuple[Config, Store],
) -> None:
    config, store = sqlite_store
    server = store.add_server("Main")
    _, links = add_message(store, server.id, ["https://example.com/p"])
    live = start(with_settings(config, proxy_protocol=True), store)
    try:
        request = f"GET /{server.token}/{links[0]} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        line = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 5010\r\n"
        answer = raw_exchange(live.host, live.http_port, line + request.encode())
        assert answer.startswith(b"HTTP/1.1 307")
        line6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 56324 5010\r\n"
        assert raw_exchange(live.host, live.http_port, line6 + request.encode()).startswith(
            b"HTTP/1.1 307"
        )
        # Without a valid PROXY line the connection is closed unanswered.
        for bad in (b"", b"PROXY TCP4 nonsense\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2"):
            assert raw_exchange(live.host, live.http_port, bad + request.encode()) == b""
        assert live.worker.stats.proxy_failures >= 3
        live.flush()
    finally:
        live.stop()
    found = [
        r["ip_address"] for r in rows(store, server.id, "SELECT ip_address FROM clicks ORDER BY id")
    ]
    assert found == ["203.0.113.7", "2001:db8::7"]


def test_proxy_protocol_before_tls(sqlite_store: tuple[Config, Store]) -> None:
    config, store = sqlite_store
    live = start(with_settings(config, proxy_protocol=True), store)
    try:
        ctx = tls_client_context()
        with socket.create_connection((live.host, live.https_port), timeout=10) as raw:
            raw.sendall(b"PROXY TCP4 198.51.100.1 192.0.2.1 40000 5011\r\n")
            with ctx.wrap_socket(raw, server_hostname="click.example.com") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert tls.recv(200).startswith(b"HTTP/1.1 200")
    finally:
        live.stop()


@pytest.mark.parametrize("fmt", ["common", "json"])
def test_access_log(sqlite_store: tuple[Config, Store], tmp_path: Path, fmt: str) -> None:
    config, store = sqlite_store
    log_path = tmp_path / "access.log"
    config = with_settings(
        config,
        tracking={"log": type(config.tracking.log)(access_log=fmt, access_log_path=str(log_path))},
    )
    live = start(config, store)
    try:
        live.request("GET", "/hello-there", {"User-Agent": "UA/1"})
        live.request("GET", "/zzzzzz/abc")
    finally:
        live.stop()
    lines = log_path.read_text().splitlines()
    assert len(lines) == 2
    if fmt == "json":
        first = json.loads(lines[0])
        assert first["client"] == "127.0.0.1" and first["status"] == 200
        assert first["request"] == "GET /hello-there HTTP/1.1" and first["user_agent"] == "UA/1"
        assert json.loads(lines[1])["status"] == 404
    else:
        assert lines[0].startswith("127.0.0.1 - - [")
        assert lines[0].endswith('"GET /hello-there HTTP/1.1" 200 6')
        assert " 404 " in lines[1]


def test_draining_finishes_requests_and_flushes_events(sqlite_store: tuple[Config, Store]) -> None:
    config, store = sqlite_store
    server = store.add_server("Main")
    _, links = add_message(store, server.id, ["https://example.com/d"])
    live = start(config, store)
    keep = socket.create_connection((live.host, live.http_port), timeout=10)
    try:
        keep.sendall(f"GET /{server.token}/{links[0]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert keep.recv(1000).startswith(b"HTTP/1.1 307")
        live.stop()  # the kept-alive connection must not hold the stop up
        assert keep.recv(100) == b""
    finally:
        keep.close()
    assert len(rows(store, server.id, "SELECT id FROM clicks")) == 1
    with pytest.raises(OSError):
        socket.create_connection((live.host, live.http_port), timeout=2).close()


def test_connections_beyond_max_connections_wait_their_turn(
    sqlite_store: tuple[Config, Store],
) -> None:
    """Busy connections (here: heads still arriving) fill the worker; the next one waits."""
    config, store = sqlite_store
    live = start(with_settings(config, tracking={"max_connections": 2}), store)
    try:
        holders = [
            socket.create_connection((live.host, live.http_port), timeout=10) for _ in range(2)
        ]
        for sock in holders:  # two requests in progress fill the worker
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        third = socket.create_connection((live.host, live.http_port), timeout=10)
        third.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        third.settimeout(0.5)
        with pytest.raises(TimeoutError):
            third.recv(1000)  # accepted by the kernel, not served yet
        holders[0].close()  # a slot frees up: the waiting request is answered
        third.settimeout(10)
        assert third.recv(1000).startswith(b"HTTP/1.1 200")
        third.close()
        holders[1].close()
    finally:
        live.stop()


def test_a_stop_while_starting_leaves_the_worker_stopped(
    sqlite_store: tuple[Config, Store],
) -> None:
    """SIGTERM's handler (stop) can run while start() waits, between two listeners:
    the rest of start() then opens no listener (it used to raise AttributeError on a
    listener stop() had closed, and the worker exited 1: seen in test_quickstart)."""
    import threading

    import gevent

    from postal_tracking_plugin.web.server import ListenSpec
    from postal_tracking_plugin.web.server import Worker
    from postal_tracking_plugin.web.server import bind

    config, store = sqlite_store
    ensure_default_certificate(config)
    outcome: list[object] = []

    def run() -> None:
        sockets = [
            (bind(ListenSpec("127.0.0.1", 0, False), reuse_port=False), False),
            (bind(ListenSpec("127.0.0.1", 0, True), reuse_port=False), True),
        ]
        try:
            worker = Worker(config, store, sockets, prefetch=False)
            worker.freeze_gc = False
            first = worker.listeners[0]
            started = first.start

            def start_then_yield() -> None:
                started()
                gevent.sleep(0.1)  # where the signal's greenlet gets to run

            first.start = start_then_yield  # type: ignore[method-assign]
            gevent.spawn_later(0.05, worker.stop)
            worker.start()
            worker.wait()
            outcome.append([listener.started for listener in worker.listeners])
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert outcome == [[False, False]]
