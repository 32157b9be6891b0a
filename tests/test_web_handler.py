"""The fast server's lean request path gives applications the environ gevent would.

Each request is sent, byte for byte, to two servers in a gevent hub of their
own: one with gevent's stock ``WSGIHandler`` (the oracle) and one with our
``TrackingHandler``. An application that echoes its environ (and the body it
reads) must see the same thing on both.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from postal_tracking_plugin.web._handler import TrackingHandler
from postal_tracking_plugin.web.server import Limits
from postal_tracking_plugin.web.server import Stats

VARYING = {"REMOTE_PORT", "SERVER_PORT", "wsgi.input", "wsgi.errors", "wsgi.file_wrapper"}


RESPONSES: dict[str, tuple[str, list[tuple[str, str]], bytes]] = {
    "/plain": ("200 OK", [("Content-Type", "text/plain"), ("X-A", "1")], b"ok"),
    "/sized": (
        "307 Temporary Redirect",
        [("Location", "https://e.example/x"), ("Content-Length", "0")],
        b"",
    ),
    "/dated": ("200 OK", [("Date", "Mon, 01 Jan 2024 00:00:00 GMT"), ("X-Len", "2")], b"ok"),
    "/closing": ("200 OK", [("Connection", "close"), ("X-Len", "2")], b"ok"),
    "/latin": ("200 OK", [("X-Name", "caf\u00e9")], b"ok"),
    "/bad-value": ("200 OK", [("X-Bad", "a\r\nSet-Cookie: x=1")], b"ok"),
    "/bad-name": ("200 OK", [("X-Bad\n", "a")], b"ok"),
    "/not-latin": ("200 OK", [("X-Name", "\u20ac")], b"ok"),
    "/bad-status": ("20x OK", [], b"ok"),
    "/no-content": ("204 No Content", [("Content-Length", "5")], b""),
}


def respond(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    status, headers, body = RESPONSES[environ["PATH_INFO"]]
    start_response(status, list(headers))
    return [body] if body else []


#: Query strings of the requests ``echo`` answered, in the order it answered them.
ANSWERED: list[str] = []


def echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    if environ["QUERY_STRING"]:
        ANSWERED.append(environ["QUERY_STRING"])
    if environ["PATH_INFO"] in RESPONSES:
        return respond(environ, start_response)
    has_body = environ.get("CONTENT_LENGTH") or environ.get("HTTP_TRANSFER_ENCODING")
    body = environ["wsgi.input"].read() if has_body else b""  # an upgrade's input never ends
    seen = {
        k: v
        for k, v in environ.items()
        if isinstance(v, (str, bool, int)) and k not in VARYING and not k.startswith("gevent")
    }
    seen["body"] = body.decode("latin-1")
    out = json.dumps(seen, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("X-Len", str(len(out)))])
    return [out]


@pytest.fixture(scope="module")
def servers() -> Any:
    import gevent
    from gevent.pywsgi import WSGIHandler
    from gevent.pywsgi import WSGIServer

    ports: dict[str, Any] = {}
    ready = threading.Event()

    def run() -> None:
        ports["hub"] = gevent.get_hub()
        stock = WSGIServer(("127.0.0.1", 0), echo, handler_class=WSGIHandler, log=None)
        ours = WSGIServer(("127.0.0.1", 0), echo, handler_class=TrackingHandler, log=None)
        ours.limits, ours.stats, ours.idle, ours.kept_alive = Limits(), Stats(), {}, {}
        ours.draining, ours.access_log = False, None
        for name, server in (("stock", stock), ("ours", ours)):
            server.start()
            ports[name] = server.server_port
        ready.set()
        gevent.sleep(3600)

    threading.Thread(target=run, daemon=True).start()
    assert ready.wait(10)
    return SimpleNamespace(**ports)


def exchange(port: int, raw: bytes) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(v for k, v in _headers(head) if k == "x-len"))
        while len(body) < length:
            body += sock.recv(65536)
    return json.loads(body[:length])


def _headers(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]


REQUESTS = {
    "click": b"GET /abcdef/tok123 HTTP/1.1\r\nHost: click.example.com\r\nUser-Agent: Mail/1.0\r\n\r\n",
    "query and escapes": b"GET /img/abc%2Fdef/x%20y?src=1&a=%41 HTTP/1.1\r\nHost: h\r\n\r\n",
    "repeated headers": (
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 192.0.2.1\r\nX-Forwarded-For: 192.0.2.2\r\n"
        b"Cookie: a=1\r\nCookie: b=2\r\nAccept: text/html\r\n\r\n"
    ),
    "underscore header dropped": b"GET / HTTP/1.1\r\nHost: h\r\nX_Forwarded_For: 1.2.3.4\r\n\r\n",
    "HTTP/1.0 keep-alive": b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "HTTP/1.0": b"HEAD /x HTTP/1.0\r\n\r\n",
    "content type without body": b"GET / HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\n\r\n",
    "POST with a body": (
        b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 7\r\n\r\na=1&b=2"
    ),
    "chunked POST": (
        b"POST /form HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    ),
}
UPGRADE = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_the_environ_is_the_one_gevent_builds(servers: Any, name: str) -> None:
    raw = REQUESTS[name]
    stock = exchange(servers.stock, raw)
    ours = exchange(servers.ours, raw)
    assert ours == stock
    assert stock["REQUEST_METHOD"] in ("GET", "HEAD", "POST")  # the oracle answered


def test_an_upgrade_is_an_ordinary_request_without_a_body(servers: Any) -> None:
    """No upgrades: gevent would hand the application the raw connection as its input."""
    stock = exchange(servers.stock, UPGRADE)
    ours = exchange(servers.ours, UPGRADE)
    assert stock.pop("wsgi.input_terminated") is False
    assert ours.pop("wsgi.input_terminated") is True
    assert ours == stock
    assert ours["HTTP_UPGRADE"] == "websocket" and ours["body"] == ""


def test_keep_alive_requests_each_get_their_own_environ(servers: Any) -> None:
    first = b"GET /one?x=1 HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 192.0.2.9\r\n\r\n"
    second = b"GET /two HTTP/1.1\r\nHost: h\r\n\r\n"
    with socket.create_connection(("127.0.0.1", servers.ours), timeout=5) as sock:
        answers = []
        for raw in (first, second):
            sock.sendall(raw)
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(v for k, v in _headers(head) if k == "x-len"))
            while len(body) < length:
                body += sock.recv(65536)
            answers.append(json.loads(body[:length]))
    assert answers[0]["PATH_INFO"] == "/one" and answers[0]["QUERY_STRING"] == "x=1"
    assert answers[0]["HTTP_X_FORWARDED_FOR"] == "192.0.2.9"
    assert answers[1]["PATH_INFO"] == "/two" and answers[1]["QUERY_STRING"] == ""
    assert "HTTP_X_FORWARDED_FOR" not in answers[1]


def response_of(port: int, path: str, version: str = "HTTP/1.1") -> tuple[str, list[str], bytes]:
    """Status line, header lines (without Date and Connection) and body of one request."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} {version}\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    kept = sorted(
        line for line in lines if line.split(":")[0].lower() not in ("date", "connection")
    )
    return status, kept, body


@pytest.mark.parametrize("path", sorted(RESPONSES))
@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_responses_are_the_ones_gevent_sends(servers: Any, path: str, version: str) -> None:
    stock = response_of(servers.stock, path, version)
    ours = response_of(servers.ours, path, version)
    bad = path.startswith(("/bad", "/not-latin", "/no-content"))
    if bad:  # the same status; our error page is not to be cached
        assert ours[0] == stock[0]
        assert "Cache-Control: no-store" in ours[1]
    else:
        assert ours == stock
    expected = "500" if bad else "307" if path == "/sized" else "200"
    assert stock[0].split(" ")[1] == expected  # the oracle did what the case is about


def test_a_client_with_requests_queued_up_does_not_keep_the_others_waiting(servers: Any) -> None:
    """Between keep-alive requests a connection yields, even when its next one is buffered.

    Both connections' requests are waiting when the server's hub resumes; the
    busy one has 300 pipelined. Without the yield all 300 were answered before
    the other connection's single request.
    """
    request = b"GET /sized?%s HTTP/1.1\r\nHost: a\r\n\r\n"
    with (
        socket.create_connection(("127.0.0.1", servers.ours), timeout=5) as busy,
        socket.create_connection(("127.0.0.1", servers.ours), timeout=5) as other,
    ):
        for sock in (busy, other):  # both accepted and waiting for their next request
            sock.sendall(request % b"warm-up")
            assert sock.recv(65536).startswith(b"HTTP/1.1 307")
        ANSWERED.clear()
        servers.hub.loop.run_callback_threadsafe(time.sleep, 0.5)  # hold the server still
        time.sleep(0.1)
        # In this order libev hands the busy connection its turn first (its
        # pending watchers run last-in, first-out).
        other.sendall(request % b"other")
        busy.sendall(b"".join(request % f"busy-{i}".encode() for i in range(300)))
        assert other.recv(65536).startswith(b"HTTP/1.1 307")
        received = b""
        while received.count(b"HTTP/1.1 307") < 300:
            received += busy.recv(65536)
    assert sorted(ANSWERED) == sorted(["other", *(f"busy-{i}" for i in range(300))])
    assert ANSWERED.index("other") < 5, ANSWERED.index("other")
    assert [a for a in ANSWERED if a != "other"] == [f"busy-{i}" for i in range(300)]
