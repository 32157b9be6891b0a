"""The per-connection HTTP handler: gevent's WSGIHandler, hardened and trimmed.

gevent's ``pywsgi`` warns that it is not built to face the Internet; the fast
server does, so this subclass keeps only gevent's response writing and adds:

- the request head parsed strictly by :mod:`._http_head` (RFC 9112 framing,
  8 KB for the request line and headers, typed errors mapped to ``400``,
  ``408`` or ``431`` here, in one place, and the connection closed after them);
- a deadline per phase, each starting afresh for every request: waiting for
  the next request (``idle_timeout``), the head (``header_timeout``), the rest
  (``io_timeout``: body, application, response); a keep-alive client may stay
  as long as it keeps sending;
- request bodies read through :mod:`._http_body` (at most 64 KB on the wire,
  yielding to other connections as it reads); a body
  that is chunked, announced larger than the bound or behind ``Expect`` is not
  read at all: the answer says ``Connection: close`` and the connection closes;
- one ``send`` per small response (headers and body together), which, with
  ``TCP_NODELAY`` on the socket, avoids the 40 ms delayed-ACK stall;
- ``Connection: close`` and ``Cache-Control: no-store`` on the error answers
  it writes itself; client errors as at most one short log line, never a traceback.

What it is not: a general HTTP server. No upgrades (an ``Upgrade`` header is just
passed on), no HTTP/0.9, no bodies larger than the bound: it serves the tracking
app, whose routes read no body. The private gevent names it relies on are listed
in :data:`GEVENT_HANDLER_NAMES` and the two lists after it (checked by a test).
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from email.utils import formatdate
from typing import TYPE_CHECKING
from typing import Any
from typing import Literal

import gevent
from gevent import getcurrent
from gevent.pywsgi import WSGIHandler
from gevent.pywsgi import unquote_latin1  # type: ignore[attr-defined]  # not in the stubs

from ._http_body import MAX_BODY
from ._http_body import NO_INPUT
from ._http_body import Body
from ._http_body import BodyReader
from ._http_head import CHUNKED
from ._http_head import MAX_HEAD_BYTES
from ._http_head import HeadError
from ._http_head import HeadTooLarge
from ._http_head import IncompleteHead
from ._http_head import body_framing
from ._http_head import parse_request_line
from ._http_head import read_headers

if TYPE_CHECKING:
    from ._http_head import Headers
    from .server import Listener

log = logging.getLogger("postal_tracking_plugin.web.errors")

_SINGLE_WRITE = 64 * 1024

#: What this module relies on in gevent's ``pywsgi``, most of it undocumented
#: ("may be subclassed carefully"): the ``WSGIHandler`` attributes the handler
#: reads or sets (and ``_access_log`` reads), the methods it overrides (gevent
#: calls them; renamed, ours would silently stop being called), and module names.
#: ``tests/test_web_hostile.py`` checks that this names every one in use and that
#: gevent still has each: an upgrade fails there, in one place. Tested: gevent 26.
GEVENT_HANDLER_NAMES = (
    "_orig_status",
    "_write",
    "application",
    "client_address",
    "close_connection",
    "code",
    "command",
    "content_length",
    "environ",
    "headers",
    "headers_sent",
    "path",
    "provided_content_length",
    "provided_date",
    "request_version",
    "requestline",
    "response_headers",
    "response_length",
    "response_use_chunked",
    "rfile",
    "server",
    "socket",
    "status",
    "time_finish",
    "time_start",
    "write",
    "wsgi_input",
)
GEVENT_HANDLER_OVERRIDES = (
    "_handle_client_error",
    "_send_error_response_if_possible",
    "_write_with_headers",
    "finalize_headers",
    "get_environ",
    "handle",
    "handle_error",
    "handle_one_request",
    "handle_one_response",
    "ignored_socket_errors",
    "log_request",
    "start_response",
)
#: Module names, here and in ``_http_body``.
GEVENT_MODULE_NAMES = ("Input", "WSGIHandler", "_InvalidClientInput", "unquote_latin1")


class IdleTimeout(OSError):
    """No new request on a kept-alive connection in time (closed quietly)."""


class HeadTimeout(OSError):
    """The request line and headers did not arrive in time (``408``)."""


class ResponseTimeout(OSError):
    """Reading the request body, the application and sending took too long (closed quietly)."""

    def __init__(self) -> None:
        super().__init__(errno.ETIMEDOUT, "response timed out")


class _Deadline:
    """One phase's timer, restarted at its full length every time (``start``).

    Not ``gevent.Timeout``: on libev, ``Timeout.cancel()`` then ``start()``
    resumes the time that was left (gevent issue #1890: a keep-alive client
    was cut off once 15 s had passed in total). A repeating watcher restarted
    with ``again()`` always begins at its full length; a fresh ``Timeout`` per
    phase would too, at 4.6 us per phase against 0.5 (three phases a request).
    """

    __slots__ = ("_timer", "_exception", "expired")

    def __init__(self, loop: Any, seconds: float, exception: Any) -> None:
        self._timer = loop.timer(seconds, seconds)
        self._exception = exception
        self.expired = False

    def start(self) -> None:
        self.expired = False
        self._timer.again(self._fire, getcurrent(), update=False)

    def _fire(self, greenlet: Any) -> None:
        self.expired = True
        self._timer.stop()
        greenlet.throw(self._exception)

    def stop(self) -> None:
        self._timer.stop()

    def close(self) -> None:
        self._timer.close()


def _response(status: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Cache-Control: no-store\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


#: The answers to refused heads, by status: (response bytes, body length).
_REFUSALS = {
    status: (_response(status, body), len(body))
    for status, body in (
        ("400 Bad Request", b"Bad request.\n"),
        ("408 Request Timeout", b"Request timeout.\n"),
        ("431 Request Header Fields Too Large", b"Request headers too large.\n"),
    )
}
#: What gevent answers on its own (``_send_error_response_if_possible``), with no-store.
_ERROR_PAGES = {
    400: ("400 Bad Request", b"Bad request.\n"),
    500: ("500 Internal Server Error", b"Internal server error.\n"),
}


class _Date:
    """The ``Date`` header value, formatted once a second, not once a request."""

    second = 0
    value = b""

    @classmethod
    def now(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.value = formatdate(now, usegmt=True).encode("ascii")
            cls.second = now
        return cls.value


class TrackingHandler(WSGIHandler):
    """Settings come from the server (``server.limits``): see :class:`~.server.Limits`.

    The server also provides ``stats`` (counters), ``idle`` and ``kept_alive``
    (greenlets waiting for a request, and those of them that have served one,
    oldest first: the worker closes those when it runs short of connections),
    ``draining`` and ``access_log``.
    """

    if TYPE_CHECKING:
        # gevent's stubs describe gevent's own use of these; this handler keeps
        # bytes where gevent keeps str (encoded once per response) and None where
        # a request has no body or length.
        server: Listener
        headers: Headers  # type: ignore[assignment]
        path: str
        content_length: int | None  # type: ignore[assignment]
        wsgi_input: Any
        status: Any
        response_headers: Any
        provided_date: Any
        code: int
        _write: Any

    head_length = 0
    _requests = 0
    _framing: int | None = None
    _deadlines: tuple[_Deadline, _Deadline, _Deadline] | None = None

    ignored_socket_errors = (*WSGIHandler.ignored_socket_errors, errno.ETIMEDOUT)

    def handle(self) -> None:
        """Serve the connection, every phase under a deadline of its own.

        The socket itself has no timeout: gevent would make a new ``Timeout``
        for every wait on it (4% of a click's CPU).
        """
        limits = self.server.limits
        loop = self.server.loop
        self.socket.settimeout(None)
        self._deadlines = (
            _Deadline(loop, limits.idle_timeout, IdleTimeout),
            _Deadline(loop, limits.header_timeout, HeadTimeout),
            _Deadline(loop, limits.io_timeout, ResponseTimeout),
        )
        try:
            super().handle()
        finally:
            for deadline in self._deadlines:
                deadline.close()

    # -- reading the request ----------------------------------------------------

    def handle_one_request(self) -> Literal[True] | None:
        """One request: wait for it, read its head, answer. True to keep the connection."""
        if self.rfile.closed or not self._await_request():
            return None
        assert self._deadlines is not None
        self.environ = None
        self.response_length = 0
        head_deadline = self._deadlines[1]
        head_deadline.start()
        try:
            self._read_head()
        except HeadTimeout:
            self._refuse("408 Request Timeout", "head not received in time")
            return None
        except HeadError as exc:
            self._refuse(exc.status, str(exc))
            return None
        except OSError:
            return None  # the client went away
        finally:
            head_deadline.stop()
        self.environ = self.get_environ()
        self.application = self.server.application
        self.handle_one_response()
        if self.close_connection or self.rfile.closed or self.server.draining:
            return None
        return True

    def _await_request(self) -> bool:
        """Wait (``idle_timeout``) for the first byte of the next request; False to close."""
        server = self.server
        if server.draining:
            return False
        assert self._deadlines is not None
        current = getcurrent()
        served = self._requests
        server.idle[current] = None
        if served:
            server.kept_alive[current] = None
        deadline = self._deadlines[0]
        deadline.start()
        try:
            if served:
                # Let the other connections have their turn first. A keep-alive
                # client whose next request is already buffered would otherwise
                # be served again and again without a switch while the rest
                # wait: under wrk (64 connections) p99 was 24-200 ms with the
                # access log on, 9-11 ms with this yield, at the same CPU.
                gevent.sleep(0)
            self._requests = served + 1
            return bool(self.rfile.peek(1))
        except OSError:  # IdleTimeout included
            return False
        finally:
            deadline.stop()
            del server.idle[current]
            if served:
                server.kept_alive.pop(current, None)

    def _read_head(self) -> None:
        """Parse the head into gevent's attributes, or raise a ``HeadError``."""
        rfile = self.rfile
        line = rfile.readline(MAX_HEAD_BYTES + 1)
        if line in (b"\r\n", b"\n"):  # RFC 9112 2.2: one empty line before a request is ignored
            line = rfile.readline(MAX_HEAD_BYTES + 1)
        self.requestline = line.rstrip(b"\r\n").decode("latin-1")  # for the log, even if refused
        if len(line) > MAX_HEAD_BYTES:
            raise HeadTooLarge("request line too long")
        if not line:
            raise IncompleteHead("connection closed before the request line")
        self.command, self.path, version = parse_request_line(line)
        self.request_version = version
        self.headers = headers = read_headers(rfile.readline, MAX_HEAD_BYTES - len(line))
        framing = self._framing = body_framing(headers, self.command)
        noted = headers.noted
        connection = noted.get("connection")
        if connection is None:
            close = version == "HTTP/1.0"
        else:
            options = {o.strip(" \t").lower() for o in ",".join(connection).split(",")}
            close = "close" in options or (version == "HTTP/1.0" and "keep-alive" not in options)
        if framing:  # a body: read on only when it is small, sized and not waited on
            self.content_length = None if framing == CHUNKED else framing
            if framing == CHUNKED or framing > MAX_BODY or "expect" in noted:
                close = True
        else:
            self.content_length = framing
        self.close_connection = close

    def _refuse(self, status: str, reason: str) -> None:
        """Answer a refused head (``Connection: close``), log it, and end the connection."""
        assert self._deadlines is not None
        self.server.stats.bad_requests += 1
        log.debug("bad request from %s: %s", self.client_address, reason)
        self.close_connection = True
        response, body_length = _REFUSALS[status]
        self.status = self._orig_status = status
        self.head_length = len(response) - body_length
        deadline = self._deadlines[2]
        deadline.start()
        try:
            self.socket.sendall(response)
            self.response_length = len(response)
        except OSError:
            pass
        finally:
            deadline.stop()
        self.time_finish = time.time()
        self.log_request()

    def get_environ(self) -> dict[str, Any]:
        """The WSGI environ, built directly.

        gevent's version walks the headers through a generator and checks for
        upgrades on every request: a sixth of a click's CPU. ``wsgi.input`` is
        a bounded reader when there is a body (see :class:`~._http_body.BodyReader`).
        """
        env = dict(self.server.environ)
        env["REQUEST_METHOD"] = self.command
        env["SCRIPT_NAME"] = ""
        path, _, query = self.path.partition("?")
        env["PATH_INFO"] = unquote_latin1(path) if "%" in path else path
        env["QUERY_STRING"] = query
        env["SERVER_PROTOCOL"] = self.request_version
        address = self.client_address
        if isinstance(address, tuple):
            env["REMOTE_ADDR"] = str(address[0])
            env["REMOTE_PORT"] = str(address[1])
        for name, value in self.headers._items:
            if "_" in name:
                continue  # as gevent: such names could pose as another header
            key = name.upper().replace("-", "_")
            if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
                env.setdefault(key, value)  # as gevent: the first one
                continue
            key = "HTTP_" + key
            if key in env:
                env[key] += ("; " if "COOKIE" in key else ",") + value
            else:
                env[key] = value
        framing = self._framing
        if framing:
            chunked = framing == CHUNKED
            body = Body(
                BodyReader(self.rfile, MAX_BODY),  # type: ignore[arg-type]  # read, readline
                None if chunked else framing,
                socket=self.socket if env.get("HTTP_EXPECT") == "100-continue" else None,
                chunked_input=chunked,
            )
            body.keep_alive = not self.close_connection
            self.wsgi_input = body
            env["wsgi.input"] = body
        else:
            self.wsgi_input = NO_INPUT
            env["wsgi.input"] = NO_INPUT
        env["wsgi.input_terminated"] = True
        return env

    def handle_one_response(self) -> None:
        assert self._deadlines is not None
        deadline = self._deadlines[2]
        deadline.start()
        try:
            super().handle_one_response()
        finally:
            deadline.stop()
            if deadline.expired:  # gevent swallows socket errors while discarding a body
                self.close_connection = True

    def _handle_client_error(self, ex: BaseException) -> tuple[str, bytes]:
        """A bad body (gevent calls this; it then closes the connection)."""
        self.server.stats.bad_requests += 1
        log.debug("bad request body from %s: %s", self.client_address, ex)
        return "400", _REFUSALS["400 Bad Request"][0]

    def _send_error_response_if_possible(self, error_code: int) -> None:
        """gevent's, with ``Cache-Control: no-store`` and ``Connection: close``."""
        if self.response_length:
            self.close_connection = True
            return
        status, body = _ERROR_PAGES.get(error_code, _ERROR_PAGES[500])
        self.close_connection = True
        try:
            self.start_response(
                status,
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                    ("Cache-Control", "no-store"),
                    ("Connection", "close"),
                ],
            )
            self.write(body)
        except OSError:
            pass

    # -- writing the response ---------------------------------------------------

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        write: Any
        if exc_info is None and type(status) is str and self._start(status, headers):
            write = self.write
        else:  # gevent's, which raises the right error for a bad status or header
            write = super().start_response(status, headers, exc_info)
        if self.close_connection or self.server.draining:
            if self.request_version == "HTTP/1.1" and not any(
                k.lower() == b"connection" for k, _ in self.response_headers
            ):
                self.response_headers.append((b"Connection", b"close"))
            self.close_connection = True
        return write

    def _start(self, status: str, headers: Any) -> bool:
        """gevent's ``start_response`` in one pass over the headers, with the same checks.

        Returns False, having changed nothing, when a check fails: gevent's
        own code then raises its error.
        """
        encoded = []
        connection = date = length = None
        try:
            for name, value in headers:
                if (
                    type(name) is not str
                    or type(value) is not str
                    or "\r" in name
                    or "\n" in name
                    or "\r" in value
                    or "\n" in value
                ):
                    return False
                encoded.append((name.encode("latin-1"), value.encode("latin-1")))
                lower = name.lower()
                if lower == "connection":
                    connection = value
                elif lower == "date":
                    date = value
                elif lower == "content-length":
                    length = value
            if "\r" in status or "\n" in status:
                return False
            code = int(status.split(" ", 1)[0])
            status_bytes = status.encode("latin-1")
        except (UnicodeEncodeError, ValueError):
            return False
        if code in (304, 204) and length is not None and length != "0":
            return False
        self.status = status_bytes
        self._orig_status = status
        self.response_headers = encoded
        self.code = code
        self.provided_date = date
        self.provided_content_length = length
        if self.request_version == "HTTP/1.0" and connection is None:
            encoded.append((b"Connection", b"close" if self.close_connection else b"keep-alive"))
        elif connection == "close":
            self.close_connection = True
        return True

    def finalize_headers(self) -> None:
        if self.provided_date is None:
            self.response_headers.append((b"Date", _Date.now()))
            self.provided_date = True
        super().finalize_headers()

    def _write_with_headers(self, data: bytes) -> None:
        self.headers_sent = True
        self.finalize_headers()
        out = bytearray(b"HTTP/1.1 ")
        out += self.status
        out += b"\r\n"
        for header, value in self.response_headers:
            out += header
            out += b": "
            out += value
            out += b"\r\n"
        out += b"\r\n"
        self.head_length = len(out)
        if data and not self.response_use_chunked and len(data) <= _SINGLE_WRITE:
            out += data  # one send: no delayed-ACK stall between headers and body
            self._send_small(out)
            return
        self._send_small(out)
        self._write(data)

    def _send_small(self, data: bytearray) -> None:
        """Send a response head (and small body): one ``send`` in the common case.

        gevent's ``sendall`` asks the kernel for the socket's buffer size on every
        call (a ``getsockopt`` per response, ~5% of a click's CPU); a small
        response almost always fits in one ``send``, and what does not is
        finished by ``sendall``.
        """
        try:
            sent = self.socket.send(data)
            if sent < len(data):
                self.socket.sendall(memoryview(data)[sent:])
        except OSError as ex:
            self.status = f"socket error: {ex}"
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)

    def log_request(self) -> None:
        access_log = self.server.access_log
        if access_log is not None:
            access_log.write(self)

    def handle_error(self, t: Any, v: Any, tb: Any) -> None:
        log.error("error answering %s", getattr(self, "requestline", "?"), exc_info=(t, v, tb))
        self._send_error_response_if_possible(500)


def tune_socket(sock: socket.socket) -> None:
    """``TCP_NODELAY`` (see the module docstring)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
