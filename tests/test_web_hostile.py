"""The fast server against a hostile client: one test (or group) per row of issue 13.

Each row was reproduced against the server as it was; each test here asserts
the fixed behaviour a client sees: the status, whether the connection is
closed, that other clients are still answered (within a generous bound), and
what ends up in the store, the cache and the logs. A real worker on loopback,
SQLite store, in a thread of this process (``web_live``).
"""

from __future__ import annotations

import ast
import inspect
import logging
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web_live import LiveServer
from web_live import add_message
from web_live import raw_exchange
from web_live import rows
from web_live import with_settings

from postal_tracking_plugin.config import Config
from postal_tracking_plugin.errors import StoreError
from postal_tracking_plugin.store import Store
from postal_tracking_plugin.store import open_store
from postal_tracking_plugin.web import _handler
from postal_tracking_plugin.web import _http_body
from postal_tracking_plugin.web import proxy_protocol
from postal_tracking_plugin.web import server as server_module
from postal_tracking_plugin.web.server import Limits

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def site(write_config: Any) -> Iterator[dict[str, Any]]:
    config = write_config({"tracking": {"data_dir": "data"}})
    store = open_store(config)
    store.create_schema()
    server = store.add_server("Main")
    _, links = add_message(store, server.id, ["https://example.com/landing"])
    yield {"config": config, "store": store, "server": server, "link": links[0]}
    store.close()


def start(site: dict[str, Any], config: Config | None = None, **limits: float) -> LiveServer:
    return LiveServer(config or site["config"], site["store"], limits=Limits(**limits)).start()


def click_path(site: dict[str, Any]) -> str:
    return f"/{site['server'].token}/{site['link']}"


def answered_quickly(live: LiveServer, bound: float = 3.0) -> bool:
    """Another client's ``/`` is answered within ``bound`` seconds (a fairness bound, not a speed test)."""
    with socket.create_connection((live.host, live.http_port), timeout=bound) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        try:
            return sock.recv(100).startswith(b"HTTP/1.1 200")
        except TimeoutError:
            return False


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


# -- row 1: a body never stalls the worker -------------------------------------------


def test_row1_endless_one_byte_chunks_on_a_click_are_answered_and_closed(
    site: dict[str, Any],
) -> None:
    live = start(site)
    stop = threading.Event()
    sent = [0]

    def stream(sock: socket.socket) -> None:
        try:
            while not stop.is_set() and sent[0] < 4_000_000:
                sock.sendall(b"1\r\na\r\n" * 1000)
                sent[0] += 6000
        except OSError:
            pass  # the server closed the connection: what we want

    try:
        with socket.create_connection((live.host, live.http_port), timeout=10) as sock:
            sock.sendall(
                f"GET {click_path(site)} HTTP/1.1\r\nHost: x\r\n"
                "Transfer-Encoding: chunked\r\n\r\n".encode()
            )
            thread = threading.Thread(target=stream, args=(sock,), daemon=True)
            thread.start()
            try:
                assert answered_quickly(live)  # while the chunks stream in
                answer = read_until_closed(sock)  # the server closes; the client's 10 s do not pass
            finally:
                stop.set()
                thread.join(10)
        assert answer.startswith(b"HTTP/1.1 307")
        assert b"\r\nConnection: close\r\n" in answer
        assert answer.count(b"HTTP/1.1") == 1
    finally:
        live.stop()


def _read_body_in_a_hub(body: bytes) -> tuple[bytes | BaseException, int]:
    """Read a chunked ``body`` as the handler gives it to an application, in a hub of its own.

    Returns what the read gave (or raised) and how many turns another greenlet
    had meanwhile. The whole body is buffered in the socket before reading
    starts, so the reader never has to wait: only its own yields let others run.
    """
    out: list[Any] = []

    def run() -> None:
        import gevent
        from gevent import socket as gsocket

        ours, theirs = gsocket.socketpair()
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        theirs.sendall(body)
        theirs.shutdown(socket.SHUT_WR)
        turns = [0]

        def other() -> None:
            while True:
                turns[0] += 1
                gevent.sleep(0)

        rfile = ours.makefile("rb")
        reader = _http_body.Body(
            _http_body.BodyReader(rfile, _http_body.MAX_BODY), None, chunked_input=True
        )
        spinner = gevent.spawn(other)
        try:
            out.append(reader.read())
        except Exception as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)
        out.append(turns[0])
        spinner.kill()
        rfile.close()
        ours.close()
        theirs.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    return out[0], out[1]


def test_row1_reading_a_body_yields_to_other_connections() -> None:
    """60 KB of one-byte chunks: others get turns while it is read (none did before)."""
    data, turns = _read_body_in_a_hub(b"1\r\na\r\n" * 10_000 + b"0\r\n\r\n")
    assert data == b"a" * 10_000
    assert turns >= 10, turns


def test_row1_a_body_is_never_read_beyond_64_kb() -> None:
    data, _ = _read_body_in_a_hub(b"1\r\na\r\n" * 100_000 + b"0\r\n\r\n")
    assert isinstance(data, _http_body.BodyTooLarge)


def test_row1_a_small_sized_body_keeps_the_connection_and_is_skipped(site: dict[str, Any]) -> None:
    """The control case: 5 bytes of body, then a second request, both answered on one connection."""
    live = start(site)
    try:
        first = f"GET {click_path(site)} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        second = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        answer = raw_exchange(live.host, live.http_port, (first + second).encode())
        assert answer.startswith(b"HTTP/1.1 307")
        assert answer.count(b"HTTP/1.1 ") == 2 and answer.endswith(b"Hello.")
    finally:
        live.stop()


@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: 10000000\r\n", b"Content-Length: 5\r\nExpect: 100-continue\r\n"],
    ids=["over 64 KB", "behind Expect"],
)
def test_row1_a_body_announced_over_64_kb_or_behind_expect_is_not_read(
    site: dict[str, Any], framing: bytes
) -> None:
    live = start(site)
    try:
        head = f"GET {click_path(site)} HTTP/1.1\r\nHost: x\r\n".encode() + framing + b"\r\n"
        answer = raw_exchange(live.host, live.http_port, head + SMUGGLED)
        assert answer.startswith(b"HTTP/1.1 307") and b"\r\nConnection: close\r\n" in answer
        assert answer.count(b"HTTP/1.1") == 1
    finally:
        live.stop()


# -- row 2: strict framing -------------------------------------------------------------

LENIENT = {
    "TE with a leading VT": b"Transfer-Encoding: \x0bchunked\r\n",
    "TE with a trailing NEL": b"Transfer-Encoding: chunked\x85\r\n",
    "TE gzip, chunked": b"Transfer-Encoding: gzip, chunked\r\n",
    "TE twice": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    "TE identity": b"Transfer-Encoding: identity\r\n",
    "CL twice, differing": b"Content-Length: 0\r\nContent-Length: 58\r\n",
    "CL twice, equal": b"Content-Length: 36\r\nContent-Length: 36\r\n",
    "CL as a list": b"Content-Length: 36, 36\r\n",
    "CL with a sign": b"Content-Length: +36\r\n",
    "CL with an underscore": b"Content-Length: 3_6\r\n",
    "CL hexadecimal": b"Content-Length: 0x24\r\n",
    "CL superscript digit": b"Content-Length: \xb9\r\n",
    "CL and TE": b"Content-Length: 36\r\nTransfer-Encoding: chunked\r\n",
    "space before the colon": b"Content-Length : 36\r\n",
    "folded header": b"X-A: 1\r\n Content-Length: 36\r\n",
    "control byte in a value": b"X-A: 1\x01\r\n",
}


@pytest.mark.parametrize("name", sorted(LENIENT))
def test_row2_ambiguous_framing_is_400_and_closed(site: dict[str, Any], name: str) -> None:
    live = start(site)
    try:
        request = b"POST / HTTP/1.1\r\nHost: x\r\n" + LENIENT[name] + b"\r\n" + SMUGGLED
        answer = raw_exchange(live.host, live.http_port, request)
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert b"\r\nConnection: close\r\n" in answer and b"Cache-Control: no-store" in answer
        assert answer.count(b"HTTP/1.1") == 1  # the hidden request was not answered
        assert live.worker.stats.bad_requests == 1
    finally:
        live.stop()


def test_row2_what_the_grammar_allows_is_still_served(site: dict[str, Any]) -> None:
    """Tabs as OWS, a case-insensitive ``Chunked``, an empty line before the request line."""
    live = start(site)
    try:
        sized = b"\r\nPOST / HTTP/1.1\r\nHost:\tx\t\r\nContent-Length: \t5 \r\n\r\nhello"
        answer = raw_exchange(
            live.host,
            live.http_port,
            sized + SMUGGLED.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"),
        )
        assert answer.count(b"HTTP/1.1 200 ") == 2  # a sized body: the next request is read
        chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        answer = raw_exchange(live.host, live.http_port, chunked + SMUGGLED)
        assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nConnection: close\r\n" in answer
        assert answer.count(b"HTTP/1.1") == 1  # chunked: answered, then closed
    finally:
        live.stop()


def test_row2_the_request_line_pattern_expands_to_its_golden_copy() -> None:
    """The verbose pattern, comments and layout removed: what it matches, in one line."""
    from postal_tracking_plugin.web._http_head import REQUEST_LINE

    expanded = re.sub(r"\s+#[^\n]*|\s+", "", REQUEST_LINE.pattern)
    assert (
        expanded == r"([!#$%&'*+.^_`|~0-9A-Za-z-]+)\x20([^\x00-\x20\x7f]+)\x20(HTTP/1\.[01])\r?\n"
    )


REQUEST_LINES = {
    "split by FS": b"GET\x1c/ HTTP/1.1\r\n",
    "split by NBSP": b"GET\xa0/\xa0HTTP/1.1\r\n",
    "split by a tab": b"GET\t/ HTTP/1.1\r\n",
    "two spaces": b"GET  / HTTP/1.1\r\n",
    "trailing space": b"GET / HTTP/1.1 \r\n",
    "HTTP/0.9": b"GET /\r\n",
    "HTTP/2.0": b"GET / HTTP/2.0\r\n",
    "lower-case version": b"GET / http/1.1\r\n",
    "control in target": b"GET /\x7f HTTP/1.1\r\n",
}


@pytest.mark.parametrize("name", sorted(REQUEST_LINES))
def test_row2_request_lines_split_by_anything_but_one_space_are_400(
    site: dict[str, Any], name: str
) -> None:
    live = start(site)
    try:
        answer = raw_exchange(live.host, live.http_port, REQUEST_LINES[name] + b"Host: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ") and answer.count(b"HTTP/1.1") == 1
        assert answered_quickly(live)
    finally:
        live.stop()


# -- row 3: deadlines restart with every request ------------------------------------------


def test_row3_a_keep_alive_client_stays_as_long_as_it_keeps_sending(site: dict[str, Any]) -> None:
    """Every 0.3 s for 2.4 s with 0.6 s deadlines: once they added up, the 3rd request was cut."""
    live = start(site, idle_timeout=0.6, header_timeout=0.6, io_timeout=0.6)
    try:
        with socket.create_connection((live.host, live.http_port), timeout=10) as sock:
            for _ in range(8):
                time.sleep(0.3)
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                data = b""
                while not data.endswith(b"Hello."):
                    chunk = sock.recv(4096)
                    assert chunk, "the server closed a connection that kept sending"
                    data += chunk
                assert data.startswith(b"HTTP/1.1 200")
            assert read_until_closed(sock) == b""  # silent now: closed by the idle deadline
    finally:
        live.stop()


# -- row 4: a half-sent PROXY line is waited for, not polled ---------------------------------


def test_row4_half_sent_proxy_lines_wait_without_polling(
    site: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[int] = []
    original = proxy_protocol.wait_readable

    def counted(sock: socket.socket, timeout: float) -> bool:
        waits.append(1)
        return original(sock, timeout)

    monkeypatch.setattr(proxy_protocol, "wait_readable", counted)
    live = start(site, with_settings(site["config"], proxy_protocol=True))
    try:
        half = [
            socket.create_connection((live.host, live.http_port), timeout=10) for _ in range(20)
        ]
        for sock in half:
            sock.sendall(b"PROXY TCP4 203.0.113.7 19")
        time.sleep(1.0)  # a 5 ms poll would have woken each of them ~200 times
        assert len(waits) <= 2 * len(half), len(waits)
        # The rest of the line, then a request arriving in two pieces: served, with the address.
        first = half[0]
        first.sendall(b"2.0.2.1 56324 5010\r\nG")
        time.sleep(0.1)
        first.sendall(
            f"ET {click_path(site)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        assert read_until_closed(first).startswith(b"HTTP/1.1 307")
        half[1].close()  # closed inside the line: dropped and counted
        for sock in half:
            sock.close()
        live.flush()
    finally:
        live.stop()
    found = rows(site["store"], site["server"].id, "SELECT ip_address FROM clicks")
    assert [r["ip_address"] for r in found] == ["203.0.113.7"]


# -- row 5: idle keep-alive connections make room; per-address cap ----------------------------


def test_row5_idle_keep_alive_connections_are_closed_first(site: dict[str, Any]) -> None:
    config = with_settings(site["config"], tracking={"max_connections": 3})
    live = start(site, config)
    try:
        kept = [socket.create_connection((live.host, live.http_port), timeout=10) for _ in range(2)]
        for sock in kept:  # served once, now idle
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(1000).startswith(b"HTTP/1.1 200")
        time.sleep(0.1)
        answer = raw_exchange(
            live.host, live.http_port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 200")  # at once, not after a 15 s idle timeout
        assert read_until_closed(kept[0]) == b""  # the longest idle one was closed for it
        kept[1].sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept[1].recv(1000).startswith(b"HTTP/1.1 200")  # the other one still serves
        assert live.worker.stats.idle_closed == 1
        for sock in kept:
            sock.close()
    finally:
        live.stop()


def test_row5_connections_over_the_per_address_cap_are_closed(site: dict[str, Any]) -> None:
    config = with_settings(site["config"], tracking={"max_connections_per_address": 2})
    live = start(site, config)
    try:
        held = [socket.create_connection((live.host, live.http_port), timeout=10) for _ in range(2)]
        for sock in held:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # heads in progress
        over = raw_exchange(live.host, live.http_port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert over == b""
        assert live.worker.stats.over_address_cap == 1
        held[0].close()
        time.sleep(0.2)
        assert answered_quickly(live)  # a slot of this address is free again
        held[1].close()
    finally:
        live.stop()


# -- row 6: over-long tokens never reach the cache --------------------------------------------


def test_row6_tokens_longer_than_64_are_404_without_the_cache(site: dict[str, Any]) -> None:
    live = start(site)
    try:
        lookup = live.worker.lookup
        token = site["server"].token
        before = (len(lookup._misses), len(lookup._servers))
        for i in range(50):
            response, body = live.request("GET", f"/{token}/{'a' * 65}{i}")
            assert response.status == 404 and b"Link not found" in body
            response, body = live.request("GET", f"/{'b' * 65}{i}/abc")
            assert response.status == 404 and b"Invalid Server Token" in body
            response, _ = live.request("GET", f"/img/{token}/{'c' * 65}{i}")
            assert response.status == 200  # the pixel, counting nothing
        assert (len(lookup._misses), len(lookup._servers)) == before
        assert live.request("GET", f"/{token}/{'a' * 64}")[0].status == 404
        assert len(lookup._misses) == before[0] + 1  # 64 is still a token: looked up
    finally:
        live.stop()


# -- row 7: /health says ok or unavailable, nothing else ----------------------------------------


class _DownStore:
    """The store, with ``ping`` failing as a refused MySQL login does."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def ping(self) -> None:
        raise StoreError("cannot connect to MySQL as tracker@db.internal:3306/postal-secret")


def test_row7_health_tells_nothing_about_the_database(
    site: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    live = start(site)
    try:
        response, body = live.request("GET", "/health")
        assert response.status == 200 and body == b"ok\n"
    finally:
        live.stop()
    down = LiveServer(site["config"], _DownStore(site["store"])).start()
    try:
        with caplog.at_level(logging.WARNING):
            response, body = down.request("GET", "/health")
        assert response.status == 503 and body == b"unavailable\n"
        assert response.getheader("Cache-Control") == "no-store"
        assert "tracker@db.internal" in caplog.text  # the detail is in the log
    finally:
        down.stop()


# -- row 8: max_connections fits the open-file limit; EMFILE once a minute ------------------------


def _fit_in_child(soft: int, hard: int, wanted: int) -> subprocess.CompletedProcess[str]:
    code = (
        "import logging, resource, sys\n"
        "logging.basicConfig(stream=sys.stderr, format='%(levelname)s %(message)s')\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
        "from postal_tracking_plugin.web.server import fit_open_files\n"
        f"print(fit_open_files({wanted}, say=True))\n"
        f"print(fit_open_files({wanted}, say=False))\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )


def test_row8_max_connections_is_reconciled_with_the_open_file_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2000:
        pytest.skip(f"the hard open-file limit here is {hard}")
    raised = _fit_in_child(256, 2000, 1000)  # the soft limit can be raised: it is
    assert raised.stdout.split() == ["1000", "1000", "1064"] and "WARNING" not in raised.stderr
    lowered = _fit_in_child(200, 200, 10000)  # it cannot: the cap is lowered, and said once
    assert lowered.stdout.split() == ["136", "136", "200"]
    assert lowered.stderr.count("WARNING") == 1
    assert "tracking.max_connections is 10000" in lowered.stderr and "136" in lowered.stderr


def test_row8_emfile_on_accept_is_logged_once_and_accepting_resumes(
    site: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from gevent.server import StreamServer

    failures = [30]
    original = StreamServer.do_read

    def out_of_files(self: Any) -> Any:
        if failures[0] > 0:
            failures[0] -= 1
            raise OSError(24, "Too many open files")
        return original(self)

    monkeypatch.setattr(StreamServer, "do_read", out_of_files)
    live = start(site)
    try:
        with caplog.at_level(logging.INFO):
            for _ in range(3):
                assert live.request("GET", "/")[0].status == 200
        errors = [r for r in caplog.records if "out of file descriptors" in r.getMessage()]
        assert len(errors) == 1 and errors[0].exc_info is None
        assert failures[0] < 30
    finally:
        live.stop()


# -- row 9: the access log escapes what came from the wire ------------------------------------------


def test_row9_access_log_escapes_like_apache(site: dict[str, Any], tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    log_settings = type(site["config"].tracking.log)(
        access_log="common", access_log_path=str(log_path)
    )
    live = start(site, with_settings(site["config"], tracking={"log": log_settings}))
    try:
        raw_exchange(
            live.host,
            live.http_port,
            b'GET /a"b\xff\\c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
        )
        raw_exchange(live.host, live.http_port, b"GET /\x1b[31mred\x1b[0m HTTP/1.1\r\n\r\n")
    finally:
        live.stop()
    lines = log_path.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith('"GET /a\\"b\\xff\\\\c HTTP/1.1" 200 6')
    assert lines[1].endswith('"GET /\\x1b[31mred\\x1b[0m HTTP/1.1" 400 13')
    assert all(line.isascii() and line.isprintable() for line in lines)


# -- row 10: client addresses are validated -------------------------------------------------------


def test_row10_scoped_or_overlong_addresses_are_not_client_addresses(site: dict[str, Any]) -> None:
    config = with_settings(site["config"], tracking={"trusted_proxies": ("127.0.0.1/32",)})
    live = start(site, config)
    try:
        for forged in (
            "fe80::1%<script>",
            "fe80::1%eth0",
            "1" * 50,
            "::ffff:" + "0" * 40 + "1.2.3.4",
        ):
            response, _ = live.request("GET", click_path(site), {"X-Forwarded-For": forged})
            assert response.status == 307
        live.flush()
    finally:
        live.stop()
    found = {
        r["ip_address"]
        for r in rows(site["store"], site["server"].id, "SELECT ip_address FROM clicks")
    }
    assert found == {"127.0.0.1"}  # the proxy itself, not what it forwarded


def test_row10_a_scoped_address_in_a_proxy_line_is_refused(site: dict[str, Any]) -> None:
    assert not proxy_protocol.parse_line(b"PROXY TCP6 fe80::1%<script> ::1 1000 5010\r\n")
    live = start(site, with_settings(site["config"], proxy_protocol=True))
    try:
        line = b"PROXY TCP6 fe80::1%eth0 ::1 1000 5010\r\n"
        request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        assert raw_exchange(live.host, live.http_port, line + request) == b""
        assert live.worker.stats.proxy_failures == 1
    finally:
        live.stop()


# -- row 11: only http(s) URLs are redirected to ---------------------------------------------------


@pytest.mark.parametrize(
    "url", [None, "", "javascript:alert(1)", "data:text/html,x", "//evil.example/", "https://"]
)
def test_row11_a_stored_url_that_is_not_http_is_link_not_found(
    site: dict[str, Any], caplog: pytest.LogCaptureFixture, url: str | None
) -> None:
    store, server = site["store"], site["server"]
    _, links = add_message(store, server.id, ["https://example.com/placeholder"])
    with store.messages(server.id) as db:
        db.execute("UPDATE links SET url = %s WHERE token = %s", (url, links[0]))
    live = start(site)
    try:
        with caplog.at_level(logging.WARNING):
            response, body = live.request("GET", f"/{server.token}/{links[0]}")
        assert response.status == 404 and b"Link not found" in body
        assert response.getheader("Location") is None
        assert response.getheader("Cache-Control") == "no-store"
        assert "no http(s) URL" in caplog.text
    finally:
        live.stop()


# -- row 12: 408 for a head that times out; no-store on every error page ----------------------------


def test_row12_a_head_that_times_out_mid_line_gets_408(site: dict[str, Any]) -> None:
    live = start(site, header_timeout=0.5)
    try:
        for partial in (b"GET / HT", b"GET / HTTP/1.1\r\nHost: x\r\n"):
            with socket.create_connection((live.host, live.http_port), timeout=10) as sock:
                sock.sendall(partial)
                answer = read_until_closed(sock)
            assert answer.startswith(b"HTTP/1.1 408 ") and b"Cache-Control: no-store" in answer
    finally:
        live.stop()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("TRACE", "/", 405),
        ("TRACE", "/health", 405),
        ("GET", "/.well-known/acme-challenge/none", 404),
        ("GET", "/abcdef/unknown", 404),
    ],
)
def test_row12_error_pages_are_not_cached(
    site: dict[str, Any], method: str, path: str, status: int
) -> None:
    live = start(site)
    try:
        response, _ = live.request(method, path)
        assert response.status == status
        assert response.getheader("Cache-Control") == "no-store"
    finally:
        live.stop()


def test_row12_flasks_own_error_pages_are_not_cached(site: dict[str, Any]) -> None:
    """Any view's 404, as Flask's error handling makes it (every path reaches a view today)."""
    from flask import abort

    from postal_tracking_plugin.web.app import close_app
    from postal_tracking_plugin.web.app import create_app

    app = create_app(site["config"], site["store"])
    try:
        app.add_url_rule("/gone", "gone", lambda: abort(404))
        response = app.test_client().get("/gone")
    finally:
        close_app(app)
    assert response.status_code == 404 and response.headers["Cache-Control"] == "no-store"


# -- structure: the gevent names we rely on ------------------------------------------------------------


def _self_attributes(cls: type) -> tuple[set[str], set[str]]:
    """Attribute names a class reads or writes on ``self``, and those it assigns."""
    tree = ast.parse(inspect.getsource(cls).lstrip())
    used = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"
    }
    assigned = set()
    for n in ast.walk(tree):
        targets = (
            n.targets
            if isinstance(n, ast.Assign)
            else [n.target]
            if isinstance(n, ast.AnnAssign)
            else []
        )
        assigned |= {t.attr for t in targets if isinstance(t, ast.Attribute)}
    return used, assigned


def _gevent_names(cls: type) -> set[str]:
    """What gevent's ``cls`` has: class attributes and attributes its methods assign."""
    names = set(dir(cls))
    for klass in cls.__mro__:
        if klass.__module__.startswith("gevent"):
            names |= set(re.findall(r"self\.(\w+)\s*=", inspect.getsource(klass)))
    return names


def test_canary_every_gevent_name_the_handler_and_listener_use_is_listed_and_exists() -> None:
    """A gevent upgrade that renames any of them fails here, and only here."""
    from gevent import pywsgi

    handler = _handler.TrackingHandler
    own = set(vars(handler))
    used, _ = _self_attributes(handler)
    access_log = inspect.getsource(sys.modules["postal_tracking_plugin.web._access_log"])
    used |= set(re.findall(r"handler\.(\w+)", access_log))
    gevent_handler = _gevent_names(pywsgi.WSGIHandler)
    assert set(_handler.GEVENT_HANDLER_NAMES) == used - own
    assert set(_handler.GEVENT_HANDLER_OVERRIDES) == {
        n for n in own if n in gevent_handler and not n.startswith("__")
    }
    missing = [
        n
        for n in (*_handler.GEVENT_HANDLER_NAMES, *_handler.GEVENT_HANDLER_OVERRIDES)
        if n not in gevent_handler
    ]
    missing += [n for n in _handler.GEVENT_MODULE_NAMES if not hasattr(pywsgi, n)]

    listener = server_module.Listener
    own = set(vars(listener))
    used, assigned = _self_attributes(listener)
    gevent_server = _gevent_names(pywsgi.WSGIServer)
    assert set(server_module.GEVENT_SERVER_NAMES) == used - own - assigned
    assert set(server_module.GEVENT_SERVER_OVERRIDES) == {
        n for n in own if n in gevent_server and not n.startswith("__")
    }
    missing += [
        n
        for n in (*server_module.GEVENT_SERVER_NAMES, *server_module.GEVENT_SERVER_OVERRIDES)
        if n not in gevent_server
    ]
    assert not missing, f"gevent no longer has {missing}: adapt web/_handler.py and web/server.py"
