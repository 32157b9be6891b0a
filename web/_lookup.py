"""An in-process LRU cache in front of the store for the click and open paths.

Links never change once written, so a link that has been clicked once is
answered from memory ever after: hot links cost no query and a store hiccup does
not turn a known link into an error. Server tokens and message tokens are cached
too. Misses (unknown tokens) are cached briefly, so a scanner trying random
tokens costs one query per token per ``negative_ttl`` rather than one per request.

Entries are kept compact (tuples, the ``Location`` value encoded once) because
the cache is what a worker's memory grows with.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import TYPE_CHECKING
from typing import Final
from typing import Generic
from typing import Literal
from typing import TypeVar
from urllib.parse import urlsplit

from postal_tracking_plugin.errors import StoreError

if TYPE_CHECKING:
    from postal_tracking_plugin.store import Store

from ._location import location_value

log = logging.getLogger(__name__)

#: (link id, message id or None, Location header value, stored URL if it differs)
LinkEntry = tuple[int, int | None, str, str | None]
_MissKey = tuple[str, int, str]


class _Missing(enum.Enum):
    """The answer of :meth:`_Lru.get` for a key it does not hold (a value may be None)."""

    MISS = enum.auto()


_MISS: Final = _Missing.MISS

_K = TypeVar("_K")
_V = TypeVar("_V")


def redirectable(url: object) -> bool:
    """Whether a stored URL may be redirected to: an ``http``/``https`` URL with a host.

    NULL, empty, ``javascript:``, ``data:`` or relative values never are (they
    would be an empty, ``None`` or script ``Location``).
    """
    if not isinstance(url, str) or not url[:8].lower().startswith(("http://", "https://")):
        return False
    try:
        return bool(urlsplit(url).netloc)
    except ValueError:
        return False


class _Lru(Generic[_K, _V]):
    """A bounded mapping that keeps recently used keys: two generations of plain dicts.

    New and recently read keys live in ``young``; when it holds ``size`` keys
    it becomes ``old`` (the previous old generation is dropped), and a key read
    from ``old`` moves back to ``young``. So the ``size`` most recently used keys
    are always kept (and at most twice as many), at about half the memory of an
    ``OrderedDict`` (no per-entry list node): the cache is what a worker's
    memory grows with.
    """

    __slots__ = ("_young", "_old", "_size")

    def __init__(self, size: int) -> None:
        self._young: dict[_K, _V] = {}
        self._old: dict[_K, _V] = {}
        self._size = max(1, size)

    def get(self, key: _K) -> _V | Literal[_Missing.MISS]:
        value = self._young.get(key, _MISS)
        if value is _MISS:
            value = self._old.pop(key, _MISS)
            if value is not _MISS:
                self.put(key, value)
        return value

    def put(self, key: _K, value: _V) -> None:
        young = self._young
        young[key] = value
        if len(young) >= self._size:
            self._old = young
            self._young = {}

    def clear(self) -> None:
        self._young = {}
        self._old = {}

    def __len__(self) -> int:
        return len(self._young) + len(self._old)


class Lookup:
    """Cached answers to the three questions the hot path asks the store.

    :param store: the :class:`~postal_tracking_plugin.store.Store`.
    :param links: how many of the most recently used links are kept (at most twice as
        many are held; each about 250 bytes).
    :param server_ttl: seconds a known server token is trusted before it is
        checked again (so a deleted server stops answering); if the store fails
        then, the old answer is kept.
    :param negative_ttl: seconds an unknown token is remembered as unknown.
    """

    def __init__(
        self,
        store: Store,
        *,
        links: int = 100_000,
        messages: int = 25_000,
        server_ttl: float = 60.0,
        negative_ttl: float = 10.0,
    ) -> None:
        self.store = store
        self._servers: dict[str, tuple[int | None, float]] = {}
        #: Token -> "server id, link id, message id, Location, URL", tab-separated.
        self._links: _Lru[str, str] = _Lru(links)
        #: Token -> "server id, message id", tab-separated.
        self._messages: _Lru[str, str] = _Lru(messages)
        #: ("l" or "m", server id, token) -> until when it is known to be unknown.
        self._misses: _Lru[_MissKey, float] = _Lru(10_000)
        self.server_ttl = server_ttl
        self.negative_ttl = negative_ttl

    def clear(self) -> None:
        """Forget everything (configuration reload)."""
        self._servers.clear()
        self._links.clear()
        self._messages.clear()
        self._misses.clear()

    @property
    def link_capacity(self) -> int:
        return self._links._size

    @property
    def message_capacity(self) -> int:
        return self._messages._size

    def remember_server(self, token: str, server_id: int) -> None:
        self._servers[token.lower()] = (server_id, time.monotonic() + self.server_ttl)

    def remember_link(
        self, server_id: int, token: str, link_id: int, message_id: int | None, url: str
    ) -> None:
        """Put a link read ahead of its first click (see :mod:`._prefetch`).

        A URL that is not ``http(s)`` is not kept: its first click finds it in
        the store, warns and answers "Link not found".
        """
        if not redirectable(url):
            return
        location = location_value(url)
        # One string per link, keyed by its token alone: a third of the memory
        # of tuples. The server id inside scopes it (tokens are per server).
        self._links.put(
            token,
            f"{server_id}\t{link_id}\t{'' if message_id is None else message_id}\t{location}"
            f"\t{'' if location == url else url}",
        )

    def remember_message(self, server_id: int, token: str, message_id: int) -> None:
        self._messages.put(token, f"{server_id}\t{message_id}")

    def server_id(self, token: str) -> int | None:
        """The id of the server with ``token`` (case-insensitive, as Postal), or None."""
        token = token.lower()
        cached = self._servers.get(token)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            server = self.store.server_by_token(token)
        except StoreError:
            if cached is not None:
                log.warning("store unavailable; using the cached answer for server %s", token)
                return cached[0]
            raise
        server_id = server.id if server is not None else None
        ttl = self.server_ttl if server_id is not None else self.negative_ttl
        if len(self._servers) > 10_000:
            self._servers.clear()  # only a flood of bogus tokens gets here
        self._servers[token] = (server_id, now + ttl)
        return server_id

    def link(self, server_id: int, token: str) -> LinkEntry | None:
        """``(link id, message id, Location, URL)`` of the server's link ``token``, or None."""
        entry = self._links.get(token)
        if entry is not _MISS:
            sid, link_text, message_text, location, url = entry.split("\t", 4)
            if int(sid) == server_id:
                return (
                    int(link_text),
                    int(message_text) if message_text else None,
                    location,
                    url or None,
                )
        if self._recent_miss(("l", server_id, token)):
            return None
        row = self.store.find_link(server_id, token)
        if row is None:
            self._misses.put(("l", server_id, token), time.monotonic() + self.negative_ttl)
            return None
        if not redirectable(row.get("url")):
            log.warning(
                "link %s of server %s has no http(s) URL to redirect to (%r): answering "
                "Link not found; fix or delete the links row",
                row.get("id"),
                server_id,
                row.get("url") if row.get("url") is None else str(row["url"])[:80],
            )
            self._misses.put(("l", server_id, token), time.monotonic() + self.negative_ttl)
            return None
        message_id = row.get("message_id")
        self.remember_link(
            server_id,
            token,
            int(row["id"]),
            int(message_id) if message_id is not None else None,
            str(row["url"]),
        )
        location = location_value(str(row["url"]))
        return (
            int(row["id"]),
            int(message_id) if message_id is not None else None,
            location,
            None if location == row["url"] else str(row["url"]),
        )

    def message_id(self, server_id: int, token: str) -> int | None:
        """The id of the server's message with ``token``, or None."""
        found = self._messages.get(token)
        if found is not _MISS:
            sid, message_text = found.split("\t", 1)
            if int(sid) == server_id:
                return int(message_text)
        if self._recent_miss(("m", server_id, token)):
            return None
        row = self.store.find_message(server_id, token)
        if row is None:
            self._misses.put(("m", server_id, token), time.monotonic() + self.negative_ttl)
            return None
        message_id = int(row["id"])
        self.remember_message(server_id, token, message_id)
        return message_id

    def _recent_miss(self, key: _MissKey) -> bool:
        until = self._misses.get(key)
        return until is not _MISS and until > time.monotonic()

    def sizes(self) -> dict[str, int]:
        return {"links": len(self._links), "messages": len(self._messages)}
