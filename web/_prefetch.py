"""Read links and messages into the lookup cache before anyone clicks them.

A link is written when its message is sent and clicked minutes or days later,
and almost every link is clicked for the first time (each recipient's message
has its own tokens), so a cache filled only by clicks rarely hits. The
prefetcher follows the ``links`` and ``messages`` tables instead: at start it
loads the newest rows (as many as the cache holds), then every second the rows
written since, in small ordered chunks by id. A click on anything sent in the
cache's window then costs no query at all, and keeps working while the store is
down; older links are still looked up on demand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from postal_tracking_plugin.errors import StoreError

from ._lookup import Lookup

if TYPE_CHECKING:
    from postal_tracking_plugin.store import Server

log = logging.getLogger(__name__)

CHUNK = 2000
SERVERS_EVERY = 60.0


class Prefetcher:
    """Follows every server's ``links`` and ``messages`` into a :class:`Lookup`.

    :param lookup: the cache to fill (its capacity bounds the first load).
    :param pause: called between chunks, so a long first load yields to requests.
    """

    def __init__(self, lookup: Lookup, pause: Callable[[], object] = lambda: None) -> None:
        self.lookup = lookup
        self.store = lookup.store
        self.pause = pause
        self._last: dict[tuple[str, int], int] = {}
        self._servers: list[Server] = []
        self._servers_at = 0.0
        self._warned = 0.0

    def __call__(self) -> int:
        """One pass; returns how many rows were read. Store failures are logged, not raised."""
        try:
            return self._pass()
        except StoreError as exc:
            self._warn(f"paused: {exc}")
            return 0

    def _pass(self) -> int:
        now = time.monotonic()
        if now - self._servers_at > SERVERS_EVERY or not self._servers:
            self._servers = self.store.list_servers()
            self._servers_at = now
            for server in self._servers:
                self.lookup.remember_server(server.token, server.id)
        total = 0
        for server in self._servers:
            try:
                total += self._follow(server.id, "links", self.lookup.link_capacity)
                total += self._follow(server.id, "messages", self.lookup.message_capacity)
            except StoreError as exc:  # one server's database: skip it, follow the others
                self._warn(f"server {server.id}: {exc}")
        return total

    def _warn(self, text: str) -> None:
        now = time.monotonic()
        if now - self._warned > 60:
            self._warned = now
            log.warning("link prefetch: %s", text)

    def _follow(self, server_id: int, table: str, capacity: int) -> int:
        key = (table, server_id)
        last = self._last.get(key)
        columns = "id, message_id, token, url" if table == "links" else "id, token"
        read = 0
        while True:
            with self.store.messages(server_id, readonly=True) as db:
                if last is None:
                    top = db.one(f"SELECT MAX(id) AS top FROM {table}")
                    last = max(0, int((top or {}).get("top") or 0) - capacity)
                rows = db.query(
                    f"SELECT {columns} FROM {table} WHERE id > %s ORDER BY id LIMIT {CHUNK}",
                    (last,),
                )
            for row in rows:
                if table == "links":
                    message_id = row["message_id"]
                    self.lookup.remember_link(
                        server_id,
                        row["token"],
                        int(row["id"]),
                        int(message_id) if message_id is not None else None,
                        str(row["url"]),
                    )
                elif row["token"]:
                    self.lookup.remember_message(server_id, row["token"], int(row["id"]))
            if rows:
                last = int(rows[-1]["id"])
            self._last[key] = last
            read += len(rows)
            if len(rows) < CHUNK:
                return read
            self.pause()
