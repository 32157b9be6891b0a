"""The request head of HTTP/1.1, parsed strictly (RFC 9112), with typed errors.

Pure: it reads lines through a ``readline(limit)`` callable it is given and never
touches a socket, a timer or a WSGI environ. What it accepts:

- a request line ``method SP request-target SP HTTP/1.1`` (or ``HTTP/1.0``),
  separated by exactly one SP each: no tab, no other whitespace, no second space;
- header lines ``name ":" OWS value OWS`` where the name is a token and OWS is
  only SP and HTAB (``str.strip()`` would also eat ``\\x0b``, ``\\x1c``, ``\\x85``,
  ``\\xa0``... and let ``Transfer-Encoding: chunked\\x85`` pass as chunked);
  no control bytes in values, no obsolete line folding;
- body framing that cannot be read two ways: ``Content-Length`` is ``1*DIGIT``
  and given once; ``Transfer-Encoding`` is exactly ``chunked``; never both.

Every refusal is a :class:`HeadError` whose ``status`` says what to answer; the
connection is closed after it (the stream cannot be trusted to resynchronise).
What it does not do: read bodies (see ``_handler._BodyReader``), or HTTP/0.9.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Request line and headers together, in bytes; beyond it: 431.
MAX_HEAD_BYTES = 8192
MAX_HEADERS = 100
#: ``Content-Length`` digits: more than this is not a length a tracking server takes.
_MAX_LENGTH_DIGITS = 18

#: The body is chunked (the value :func:`body_framing` returns for it).
CHUNKED = -1

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_OWS = " \t"
#: Control bytes that may not appear in a field value (HTAB may), nor in a target.
_CTL_IN_VALUE = frozenset(chr(c) for c in (*range(0x20), 0x7F)) - {"\t"}
_CTL_IN_TARGET = frozenset(chr(c) for c in (*range(0x21), 0x7F))
_VERSIONS = ("HTTP/1.1", "HTTP/1.0")
#: Header names the handler needs to look at (lower case); others are only passed on.
_NOTED = frozenset(("content-length", "transfer-encoding", "connection", "expect"))


class HeadError(ValueError):
    """The request head is refused; ``status`` is the answer, and the connection closes."""

    status = "400 Bad Request"


class MalformedRequestLine(HeadError):
    """Not ``method SP target SP HTTP/1.x`` with single spaces."""


class MalformedHeader(HeadError):
    """A header line that is not ``token ":" OWS value OWS``, or a folded one."""


class AmbiguousFraming(HeadError):
    """``Content-Length`` and ``Transfer-Encoding`` that a proxy could read otherwise."""


class IncompleteHead(HeadError):
    """The connection ended inside the head."""


class HeadTooLarge(HeadError):
    """Request line and headers over :data:`MAX_HEAD_BYTES`, or too many headers."""

    status = "431 Request Header Fields Too Large"


class Headers:
    """The request headers in order, plus the few the handler decides on (lower-case names).

    Provides the part of ``http.client.HTTPMessage`` gevent's handler uses.
    """

    __slots__ = ("_items", "noted")

    def __init__(self, items: list[tuple[str, str]], noted: dict[str, list[str]]) -> None:
        self._items = items
        self.noted = noted

    def get(self, name: str, default: Any = None) -> Any:
        name = name.lower()
        for key, value in self._items:
            if key.lower() == name:
                return value
        return default

    getheader = get

    @property
    def headers(self) -> list[str]:
        return [f"{k}: {v}\r\n" for k, v in self._items]

    @property
    def typeheader(self) -> str | None:
        return self.get("content-type")


def _strip_eol(line: bytes) -> str:
    """The line without CRLF (or a bare LF, RFC 9112 2.2), as latin-1 text."""
    if line.endswith(b"\r\n"):
        return line[:-2].decode("latin-1")
    if line.endswith(b"\n"):
        return line[:-1].decode("latin-1")
    raise IncompleteHead("connection closed inside the request head")


def parse_request_line(line: bytes) -> tuple[str, str, str]:
    """``(method, target, version)`` of a request line read with its line ending."""
    text = _strip_eol(line)
    parts = text.split(" ")
    if len(parts) != 3:
        raise MalformedRequestLine(f"request line is not three words split by single spaces: {text!r:.80}")
    method, target, version = parts
    if version not in _VERSIONS:
        raise MalformedRequestLine(f"unsupported HTTP version: {version!r:.20}")
    if not method or not _TCHAR.issuperset(method):
        raise MalformedRequestLine(f"bad method: {method!r:.20}")
    if not target or not _CTL_IN_TARGET.isdisjoint(target):
        raise MalformedRequestLine(f"bad request target: {target!r:.80}")
    return method, target, version


def read_headers(readline: Callable[[int], bytes], budget: int) -> Headers:
    """Header lines up to the blank line, within ``budget`` bytes."""
    items: list[tuple[str, str]] = []
    noted: dict[str, list[str]] = {}
    while True:
        line = readline(budget + 1)
        budget -= len(line)
        if budget < 0 or len(items) >= MAX_HEADERS:
            raise HeadTooLarge("request head too large")
        text = _strip_eol(line)
        if not text:
            return Headers(items, noted)
        name, sep, value = text.partition(":")
        if not sep or not name or not _TCHAR.issuperset(name):
            # Also a line starting with SP or HTAB: obsolete folding (RFC 9112 5.2).
            raise MalformedHeader(f"malformed header line: {text!r:.80}")
        value = value.strip(_OWS)
        if not _CTL_IN_VALUE.isdisjoint(value):
            raise MalformedHeader(f"control character in header {name!r:.40}")
        items.append((name, value))
        lower = name.lower()
        if lower in _NOTED:
            noted.setdefault(lower, []).append(value)


def body_framing(headers: Headers, method: str) -> int | None:
    """How the body is delimited: None (no body), its length, or :data:`CHUNKED`.

    Refuses (``AmbiguousFraming``) what two parsers could read two ways:
    both headers, a coding other than exactly ``chunked``, a length that is not
    ``1*DIGIT`` or is given more than once (RFC 9110 8.6 allows refusing even
    repeated equal values, and nothing legitimate sends them to a tracking link).
    """
    noted = headers.noted
    if not noted:
        return None
    encodings = noted.get("transfer-encoding")
    lengths = noted.get("content-length")
    if encodings is not None:
        if lengths is not None:
            raise AmbiguousFraming("both Content-Length and Transfer-Encoding")
        if len(encodings) != 1 or encodings[0].lower() != "chunked":
            raise AmbiguousFraming(f"unsupported Transfer-Encoding: {', '.join(encodings)!r:.60}")
        return CHUNKED
    if lengths is None:
        return None
    if len(lengths) != 1:
        raise AmbiguousFraming(f"Content-Length given {len(lengths)} times")
    value = lengths[0]
    if not value or not value.isascii() or not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
        raise AmbiguousFraming(f"Content-Length is not 1*DIGIT: {value!r:.30}")
    length = int(value)
    if length and method == "HEAD":
        raise AmbiguousFraming("a HEAD request with a body")
    return length
