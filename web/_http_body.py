"""Request bodies as the fast server hands them to the application: bounded and fair.

A tracking server has no use for request bodies, and reading one is where a
client can hold a worker: gevent's ``Input`` reads a chunked body of one-byte
chunks without ever yielding (0.75 s of CPU for 4 MB, every other client
waiting). So the bytes come through :class:`BodyReader`: at most
:data:`MAX_BODY` of them on the wire (chunk framing included), with a turn for
the other connections every few kilobytes. The handler decides when a body is
read at all (see ``_handler``); this module only reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import gevent
from gevent.pywsgi import Input
from gevent.pywsgi import _InvalidClientInput  # type: ignore[attr-defined]  # not in the stubs

#: Bytes of a request body read at most (on the wire, chunk framing included).
MAX_BODY = 64 * 1024
#: Body bytes read between two yields to the other connections (a read call counts 64).
_YIELD_EVERY = 4096


class _NoInput:
    """``wsgi.input`` of a request without a body: always at its end."""

    def read(self, *_args: object) -> bytes:
        return b""

    def readline(self, *_args: object) -> bytes:
        return b""

    def readlines(self, *_args: object) -> list[bytes]:
        return []

    def __iter__(self) -> Iterator[bytes]:
        return iter(())

    def _discard(self) -> None:
        pass


NO_INPUT = _NoInput()


class BodyTooLarge(_InvalidClientInput):  # type: ignore[misc]
    """More than :data:`MAX_BODY` bytes of body were asked for (gevent closes the connection)."""


class BodyReader:
    """The body's bytes from the connection (gevent's ``Input`` reads through this).

    At most ``limit`` bytes, else :class:`BodyTooLarge`; a turn for the others
    every :data:`_YIELD_EVERY` bytes, each call counting 64 more (one-byte
    chunks are three calls each).
    """

    __slots__ = ("_rfile", "_left", "_until_yield")

    def __init__(self, rfile: BinaryIO, limit: int) -> None:
        self._rfile = rfile
        self._left = limit
        self._until_yield = _YIELD_EVERY

    def read(self, size: int | None = -1) -> bytes:
        return self._took(self._rfile.read(self._size(size)))

    def readline(self, size: int | None = -1) -> bytes:
        return self._took(self._rfile.readline(self._size(size)))

    def _size(self, size: int | None) -> int:
        if size is None or size < 0 or size > self._left + 1:
            return self._left + 1
        return size

    def _took(self, data: bytes) -> bytes:
        self._left -= len(data)
        if self._left < 0:
            raise BodyTooLarge(f"request body over {MAX_BODY} bytes")
        self._until_yield -= len(data) + 64
        if self._until_yield <= 0:
            self._until_yield = _YIELD_EVERY
            gevent.sleep(0)
        return data


class Body(Input):
    """gevent's ``Input`` that reads what is left only when the connection stays open."""

    __slots__ = ("keep_alive",)
    keep_alive: bool

    def _discard(self) -> None:
        if self.keep_alive:
            super()._discard()  # type: ignore[misc]  # gevent's, not in the stubs
