"""The per-connection HTTP handler: gevent's WSGIHandler, hardened and trimmed.

gevent's ``pywsgi`` warns that it is not built to face the Internet; the fast
server does, so this subclass adds what is missing:

- an idle timeout between keep-alive requests and a deadline for the whole
  request head (a client trickling bytes is dropped, not kept for ever);
- an 8 KB limit on the request line and headers together (``431``), parsed by a
  small reader instead of ``email.parser``;
- one ``send`` per small response (headers and body together), which, with
  ``TCP_NODELAY`` on the socket, avoids the 40 ms delayed-ACK stall;
- ``Connection: close`` when the connection is closing, so clients know;
- client errors as at most one short log line, never a traceback;
- the access log only when configured (gevent formats a line per request even
  when nobody reads it).
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import sys
import time
from email.utils import formatdate
from typing import Any

import gevent
from gevent.pywsgi import WSGIHandler
from gevent.pywsgi import unquote_latin1

from ._routes import CLIENT_KEY

log = logging.getLogger("postal_tracking_plugin.web.errors")

MAX_HEAD_BYTES = 8192
MAX_HEADERS = 100
_SINGLE_WRITE = 64 * 1024


#: Request headers that need gevent's general request reading (a body, an
#: upgrade, 100-continue); requests without them are parsed and answered by
#: the lean path in :class:`TrackingHandler`.
_SPECIAL = frozenset(("content-length", "transfer-encoding", "expect", "upgrade"))
_FEW_HEADERS = 40
_HTTP_1 = ("HTTP/1.1", "HTTP/1.0")


class _NoInput:
    """``wsgi.input`` of a request without a body: always at its end."""

    def read(self, *_args: Any) -> bytes:
        return b""

    def readline(self, *_args: Any) -> bytes:
        return b""

    def readlines(self, *_args: Any) -> list[bytes]:
        return []

    def __iter__(self) -> Any:
        return iter(())

    def _discard(self) -> None:
        pass


_NO_INPUT = _NoInput()


class IdleTimeout(OSError):
    """No new request on a kept-alive connection in time (closed quietly)."""


class HeadTimeout(OSError):
    """The request line and headers did not arrive in time."""


class ResponseTimeout(OSError):
    """Reading the request body, the application and sending took too long (closed quietly)."""


def _response(status: str, body: bytes = b"") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


_TOO_LARGE = _response("431 Request Header Fields Too Large", b"Request headers too large.\n")
_TIMEOUT = _response("408 Request Timeout", b"Request timeout.\n")
_BAD = _response("400 Bad Request", b"Bad request.\n")


class Headers:
    """Just the part of ``http.client.HTTPMessage`` that gevent's handler uses."""

    __slots__ = ("_items", "status")

    def __init__(self, items: list[tuple[str, str]], status: str = "") -> None:
        self._items = items
        self.status = status

    def get(self, name: str, default: Any = None) -> Any:
        name = name.lower()
        for key, value in self._items:
            if key.lower() == name:
                return value
        return default

    getheader = get

    def __delitem__(self, name: str) -> None:
        name = name.lower()
        self._items = [(k, v) for k, v in self._items if k.lower() != name]

    @property
    def headers(self) -> list[str]:
        return [f"{k}: {v}\r\n" for k, v in self._items]

    @property
    def typeheader(self) -> str | None:
        return self.get("content-type")


def read_headers(rfile: Any, budget: int) -> tuple[Headers, bool]:
    """Read header lines up to the blank line; returns the headers and whether they fit."""
    items: list[tuple[str, str]] = []
    while True:
        line = rfile.readline(budget + 1)
        budget -= len(line)
        if budget < 0 or len(items) > MAX_HEADERS:
            return Headers([], "too large"), False
        if line in (b"\r\n", b"\n"):
            return Headers(items), True
        if not line.endswith(b"\n"):
            return Headers([], "incomplete headers"), True
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip() or name[0] in " \t":
            return Headers([], "malformed header line"), True
        items.append((name, value.strip()))


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
    """Settings come from the server (``server.limits``): see :class:`~.server.Limits`."""

    _too_large = False
    _plain = False
    _head_timer: Any = None
    head_length = 0
    _requests = 0

    ignored_socket_errors = (*WSGIHandler.ignored_socket_errors, errno.ETIMEDOUT)

    def handle(self) -> None:
        """Serve the connection, every phase under a timer of its own.

        The socket itself has no timeout: gevent would make a new ``Timeout``
        for every wait on it (4% of a click's CPU). Instead three timers per
        connection, started and cancelled around each phase, bound the wait
        for the next request (``idle_timeout``), the request head
        (``header_timeout``) and everything after it (``io_timeout``: the
        body, the application, the response).
        """
        limits = self.server.limits
        self.socket.settimeout(None)
        self._idle_timer = gevent.Timeout(limits.idle_timeout, IdleTimeout)
        self._head_timer = gevent.Timeout(limits.header_timeout, HeadTimeout)
        self._io_timer = gevent.Timeout(
            limits.io_timeout, ResponseTimeout(errno.ETIMEDOUT, "response timed out")
        )
        try:
            super().handle()
        finally:
            self._idle_timer.close()
            self._head_timer.close()
            self._io_timer.close()

    # -- reading the request ----------------------------------------------------

    def read_requestline(self) -> str:
        idle = self.server.idle
        current = gevent.getcurrent()
        timer = self._idle_timer
        idle.add(current)
        timer.start()
        try:
            if self.server.draining:
                return ""
            if self._requests:
                # Let the other connections have their turn first. A keep-alive
                # client whose next request is already buffered would otherwise
                # be served again and again without a switch while the rest
                # wait: under wrk (64 connections) p99 was 24-200 ms with the
                # access log on, 9-11 ms with this yield, at the same CPU.
                gevent.sleep(0)
            self._requests += 1
            self.rfile.peek(1)
        finally:
            timer.cancel()
            idle.discard(current)
        self._too_large = False
        self._head_timer.start()
        try:
            line = self.rfile.readline(MAX_HEAD_BYTES + 1)
        except BaseException:
            self._head_timer.cancel()
            raise
        if len(line) > MAX_HEAD_BYTES:
            self._too_large = True
        return line.decode("latin-1")

    def handle_one_request(self) -> Any:
        try:
            result = super().handle_one_request()
        except IdleTimeout:
            return None
        finally:
            self._head_timer.cancel()
        if self.server.draining and result is True:
            return None
        if isinstance(result, tuple):
            self._io_timer.start()  # gevent's handle() sends this error answer, then closes
        return result

    def handle_one_response(self) -> None:
        timer = self._io_timer
        timer.start()
        try:
            super().handle_one_response()
        finally:
            if not timer.pending:  # it fired (gevent swallows errors while discarding a body)
                self.close_connection = True
            timer.cancel()

    def read_request(self, raw_requestline: str) -> bool:
        """gevent's parse for HTTP/1.x requests, without its generic branches.

        Anything else (HTTP/0.9, a malformed line) goes to gevent's own code,
        which raises the same errors it always did.
        """
        self._plain = False
        if self._too_large:
            raise ValueError("request line too long")
        try:
            words = raw_requestline.split()
            if len(words) != 3 or words[2] not in _HTTP_1:
                return super().read_request(raw_requestline)
            self.requestline = raw_requestline.rstrip()
            self.command, self.path, self.request_version = words
            self.headers = headers = self.MessageClass(self.rfile, 0)
            if headers.status:
                raise ValueError(f"invalid headers: {headers.status}")
            items = headers._items
            connection = (headers.get("connection") or "").lower()
            self.content_length = None
            if (
                len(items) > _FEW_HEADERS
                or connection == "upgrade"
                or _SPECIAL.intersection(k.lower() for k, _ in items)
            ):
                self._read_body_headers(headers)  # and gevent builds the environ
            else:
                self._plain = True
            if self.request_version == "HTTP/1.1":
                self.close_connection = connection == "close"
            else:
                self.close_connection = connection != "keep-alive"
            return True
        finally:
            self._head_timer.cancel()

    def _read_body_headers(self, headers: Headers) -> None:
        """gevent's checks of the headers that announce a body."""
        if (headers.get("transfer-encoding") or "").lower() == "chunked":
            del headers["content-length"]
        length = headers.get("content-length")
        if length is not None:
            self.content_length = int(length)
            if self.content_length < 0:
                raise ValueError(f"invalid Content-Length: {length!r}")
            if self.content_length and self.command == "HEAD":
                raise ValueError("unexpected Content-Length")

    def get_environ(self) -> dict[str, Any]:
        """The WSGI environ; for a request without a body, built directly.

        gevent's version makes an input stream, walks the headers through a
        generator and checks for upgrades on every request: a sixth of a
        click's CPU. A request with a body, or any header that changes how it
        is read, takes gevent's path (``_SPECIAL``).
        """
        if not self._plain:
            return super().get_environ()
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
            if key != "CONTENT_TYPE":
                key = "HTTP_" + key
            if key in env:
                env[key] += ("; " if "COOKIE" in key else ",") + value
            else:
                env[key] = value
        self.wsgi_input = _NO_INPUT
        env["wsgi.input"] = _NO_INPUT
        env["wsgi.input_terminated"] = True
        return env

    def MessageClass(self, fp: Any, *_args: Any) -> Headers:  # noqa: N802 - gevent's name
        headers, fits = read_headers(fp, MAX_HEAD_BYTES - len(self.requestline))
        if not fits:
            self._too_large = True
        return headers

    def _handle_client_error(self, ex: BaseException) -> tuple[str, bytes]:
        self.server.stats.bad_requests += 1
        if self._too_large:
            return ("431", _TOO_LARGE)
        if isinstance(ex, HeadTimeout):
            return ("408", _TIMEOUT)
        log.debug("bad request from %s: %s", self.client_address, ex)
        return ("400", _BAD)

    # -- writing the response ---------------------------------------------------

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
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


class AccessLog:
    """One line per request, ``common`` (NCSA) or ``json``, to a file or stderr."""

    def __init__(self, fmt: str, stream: Any) -> None:
        self.fmt = fmt
        self.stream = stream

    def close(self) -> None:
        if self.stream not in (sys.stderr, sys.stdout):
            self.stream.close()

    def write(self, handler: TrackingHandler) -> None:
        environ = getattr(handler, "environ", None) or {}
        client = environ.get(CLIENT_KEY) or environ.get("REMOTE_ADDR")
        if client is None:
            address = handler.client_address
            client = address[0] if isinstance(address, tuple) else address
        status = getattr(handler, "_orig_status", None) or handler.status or "000"
        if isinstance(status, bytes):
            status = status.decode("latin-1")
        code = status.split(" ", 1)[0]
        length = max(0, (handler.response_length or 0) - handler.head_length)
        if self.fmt == "json":
            line = json.dumps(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "client": client,
                    "request": handler.requestline or "",
                    "host": environ.get("HTTP_HOST"),
                    "status": int(code) if code.isdigit() else code,
                    "bytes": length,
                    "user_agent": environ.get("HTTP_USER_AGENT"),
                    "duration": round((handler.time_finish or time.time()) - handler.time_start, 6),
                },
                separators=(",", ":"),
            )
        else:
            when = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
            line = (
                f'{client or "-"} - - [{when}] "{handler.requestline or ""}" {code} {length or "-"}'
            )
        try:
            self.stream.write(line + "\n")
        except (OSError, ValueError):
            pass


def tune_socket(sock: socket.socket) -> None:
    """``TCP_NODELAY`` (see the module docstring)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
