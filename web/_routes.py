"""The two hot routes, clicks and opens, as a lean WSGI layer of the Flask app.

A click is: match the path, look the link up in the cache, answer ``307``, hand
the event to the recorder (which never waits on the store). Flask's request and
response machinery would cost more than all of that together, so these two
routes are answered here, in front of ``app.wsgi_app`` (Flask's documented place
for middleware); every other path falls through to the Flask views.

Paths match Postal's case-insensitive prefix regexes: ``/IMG/...``, a trailing
slash or extra segments all reach the same route, as they did in Postal.
"""

from __future__ import annotations

import logging
import re
import struct
import zlib
from collections.abc import Iterable
from typing import TYPE_CHECKING
from typing import Protocol

from postal_tracking_plugin.errors import StoreError

from ._client import ClientAddress
from ._lookup import Lookup

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment

log = logging.getLogger(__name__)

IMG_RE = re.compile(r"^/img/([a-z0-9-]+)/([a-z0-9-]+)", re.IGNORECASE)
CLICK_RE = re.compile(r"^/([a-z0-9-]+)/([a-z0-9-]+)", re.IGNORECASE)

#: Tokens longer than this are unknown without asking the cache or the store: Postal's
#: are 6 to 16 characters, and a cached miss must not cost a scanner's 8 KB token.
MAX_TOKEN = 64

#: Key in the WSGI environ where the resolved client address is left for the access log.
CLIENT_KEY = "postal_tracking.client"


class Recorder(Protocol):
    """Where the hot routes hand each counted click and open: the two calls they make.

    Defined here, by its consumer, with only what it calls, rather than as the
    whole :class:`~postal_tracking_plugin.events.EventRecorder` (which is one):
    a test or a benchmark passes a few lines that count, and ``web`` depends on
    no more of ``events`` than this. Both calls must return at once and never
    raise for the request's sake (an exception is logged, the answer goes out).
    The return value (the event id) is not used.
    """

    def click(
        self,
        *,
        server_id: int,
        server_token: str,
        message_id: int | None,
        link_id: int | None,
        url: str | None,
        ip_address: str | None,
        user_agent: str | None,
        method: str = "GET",
    ) -> object:
        """Record a click on link ``link_id`` of message ``message_id``."""
        ...

    def open(
        self,
        *,
        server_id: int,
        server_token: str,
        message_id: int | None,
        message_token: str | None,
        ip_address: str | None,
        user_agent: str | None,
        method: str = "GET",
    ) -> object:
        """Record an open (the pixel of message ``message_id`` loaded)."""
        ...


def _png_1x1() -> bytes:
    """A 1x1 transparent PNG, built once."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)  # 8-bit RGBA
    pixels = zlib.compress(b"\x00\x00\x00\x00\x00")  # filter byte + one transparent pixel
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


PIXEL = _png_1x1()
PIXEL_HEADERS = [
    ("Content-Type", "image/png"),
    ("Content-Length", str(len(PIXEL))),
    ("Cache-Control", "no-store, no-cache, must-revalidate, max-age=0"),
]


def _page(title: str, text: str) -> bytes:
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>'
        f"<body><h1>{title}</h1><p>{text}</p></body></html>\n"
    ).encode()


def _html(body: bytes) -> list[tuple[str, str]]:
    return [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
    ]


INVALID_SERVER = _page(
    "Invalid Server Token", "This tracking link does not belong to any mail server here."
)
LINK_NOT_FOUND = _page(
    "Link not found", "This link is unknown: it may have been mistyped or it has been removed."
)
UNAVAILABLE = _page("Service Unavailable", "Please try again in a moment.")
SRC_REFUSED = b"The src parameter is not supported.\n"
SRC_HEADERS = [
    ("Content-Type", "text/plain; charset=utf-8"),
    ("Content-Length", str(len(SRC_REFUSED))),
    ("Cache-Control", "no-store"),
]
_INVALID_SERVER_HEADERS = _html(INVALID_SERVER)
_LINK_NOT_FOUND_HEADERS = _html(LINK_NOT_FOUND)
_UNAVAILABLE_HEADERS = [*_html(UNAVAILABLE), ("Retry-After", "5")]
_NO_BODY: list[bytes] = []


class HotRoutes:
    """WSGI middleware answering ``/<server>/<link>`` and ``/img/<server>/<message>``.

    :param fallback: the Flask app's own ``wsgi_app``, for every other path.
    :param lookup: the cache in front of the store.
    :param recorder: the event recorder (``click``/``open``), or None to count nothing.
    :param client: resolves the client address (trusted proxies).
    """

    def __init__(
        self,
        fallback: WSGIApplication,
        lookup: Lookup,
        recorder: Recorder | None,
        client: ClientAddress,
    ) -> None:
        self.fallback = fallback
        self.lookup = lookup
        self.recorder = recorder
        self.client = client

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if len(path) > 4 and path[1] in "iI":
            match = IMG_RE.match(path)
            if match is not None:
                return self.pixel(environ, start_response, match[1], match[2])
        match = CLICK_RE.match(path)
        if match is not None:
            return self.click(environ, start_response, match[1], match[2])
        return self.fallback(environ, start_response)

    def click(
        self, environ: WSGIEnvironment, start_response: StartResponse, server_token: str, token: str
    ) -> Iterable[bytes]:
        head = environ["REQUEST_METHOD"] == "HEAD"
        try:
            # An over-long token is an unknown one, found without the cache or the store.
            server_id = (
                self.lookup.server_id(server_token) if len(server_token) <= MAX_TOKEN else None
            )
            if server_id is None:
                start_response("404 Not Found", _INVALID_SERVER_HEADERS)
                return _NO_BODY if head else [INVALID_SERVER]
            link = self.lookup.link(server_id, token) if len(token) <= MAX_TOKEN else None
        except StoreError as exc:
            return self._unavailable(start_response, head, exc)
        if link is None:
            start_response("404 Not Found", _LINK_NOT_FOUND_HEADERS)
            return _NO_BODY if head else [LINK_NOT_FOUND]
        link_id, message_id, location, url = link
        start_response(
            "307 Temporary Redirect",
            [("Location", location), ("Cache-Control", "no-store"), ("Content-Length", "0")],
        )
        client = environ[CLIENT_KEY] = self.client(environ)
        if message_id is not None and environ["REQUEST_METHOD"] == "GET" and self.recorder:
            try:
                self.recorder.click(
                    server_id=server_id,
                    server_token=server_token.lower(),
                    message_id=message_id,
                    link_id=link_id,
                    url=url or location,
                    ip_address=client,
                    user_agent=environ.get("HTTP_USER_AGENT"),
                    method="GET",
                )
            except Exception:  # recording must never cost the redirect
                log.exception("could not record a click")
        return _NO_BODY

    def pixel(
        self, environ: WSGIEnvironment, start_response: StartResponse, server_token: str, token: str
    ) -> Iterable[bytes]:
        head = environ["REQUEST_METHOD"] == "HEAD"
        query = environ.get("QUERY_STRING")
        if query and _has_src(query):
            start_response("400 Bad Request", SRC_HEADERS)
            return _NO_BODY if head else [SRC_REFUSED]
        try:
            server_id = (
                self.lookup.server_id(server_token) if len(server_token) <= MAX_TOKEN else None
            )
            if server_id is None:
                start_response("404 Not Found", _INVALID_SERVER_HEADERS)
                return _NO_BODY if head else [INVALID_SERVER]
            message_id = (
                self.lookup.message_id(server_id, token) if len(token) <= MAX_TOKEN else None
            )
        except StoreError as exc:
            # Postal's rule: the pixel is served even when recording cannot be.
            log.warning("store unavailable for an open: %s", exc)
            message_id = None
            server_id = None
        start_response("200 OK", PIXEL_HEADERS)
        client = environ[CLIENT_KEY] = self.client(environ)
        if head:
            return _NO_BODY
        # A message id implies a server id (both are None when the store failed).
        if (
            message_id is not None
            and server_id is not None
            and environ["REQUEST_METHOD"] == "GET"
            and self.recorder
        ):
            try:
                self.recorder.open(
                    server_id=server_id,
                    server_token=server_token.lower(),
                    message_id=message_id,
                    message_token=token,
                    ip_address=client,
                    user_agent=environ.get("HTTP_USER_AGENT"),
                    method="GET",
                )
            except Exception:  # recording must never cost the pixel
                log.exception("could not record an open")
        return [PIXEL]

    def _unavailable(
        self, start_response: StartResponse, head: bool, exc: Exception
    ) -> Iterable[bytes]:
        log.warning("store unavailable for a click: %s", exc)
        start_response("503 Service Unavailable", _UNAVAILABLE_HEADERS)
        return _NO_BODY if head else [UNAVAILABLE]


def _has_src(query: str) -> bool:
    for pair in query.split("&"):
        name = pair.split("=", 1)[0]
        if name.lower() == "src" or name.lower() == "src%5b%5d" or name.lower().startswith("src["):
            return True
    return False
