"""Which recipients already have their copy of a message, so a client's retry never doubles one.

A recipient is remembered the moment the upstream answers 250 to the final
dot of its copy, whatever happens next (another copy failing, an exception,
the client's connection dropping before it reads our reply). When the client
sends the message again, remembered recipients are skipped and counted as
relayed.

The key must survive a retry, so it is the message's ``Message-ID`` header
plus the envelope sender and the recipient: a client that re-renders the
message for its retry (a new ``Date:``, a new boundary) still sends the same
``Message-ID``. A message without one is keyed on its bytes plus the envelope.
Consequence, documented in docs/relay.md: the same ``Message-ID`` sent again to
the same recipient within :data:`RETRY_WINDOW` is treated as a retry and not
delivered again (RFC 5322 3.6.4 wants a Message-ID unique to one message).

A copy being sent is *in flight*: the same message to the same recipient on
another connection meanwhile (a client that gave up waiting and retried) is
told to try again later rather than sent a second copy.

What it is not: durable. It lives in the relay's memory, bounded to
:data:`MAX_ENTRIES` (oldest forgotten first); a restart forgets it.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable

#: How long a recipient is remembered: a client's retry window (Postfix's
#: maximal_queue_lifetime is 5 days).
RETRY_WINDOW = 5 * 86400.0

#: Recipients remembered at most (about 150 bytes each: ~30 MB).
MAX_ENTRIES = 200_000

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MESSAGE_ID = re.compile(
    rb"""
    ^message-id [ \t]* :          # the field name, any case, at a line start
    ( [^\r\n]* (?: \r?\n [ \t] [^\r\n]* )* )   # its value, folded lines included
    """,
    re.IGNORECASE | re.MULTILINE | re.VERBOSE,
)


def message_key(mail_from: str, content: bytes) -> bytes:
    """What identifies one message across a client's retries (see the module docstring)."""
    end = _HEADER_END.search(content)
    headers = content[: end.start()] if end else content
    found = _MESSAGE_ID.search(headers)
    message_id = b"".join(found.group(1).split()) if found else b""
    h = hashlib.sha256()
    if message_id:
        h.update(b"message-id\0" + message_id)
    else:
        h.update(b"content\0" + content)
    h.update(b"\0" + mail_from.encode("utf-8", "surrogateescape"))
    return h.digest()


class RelayedRecipients:
    """Recipients whose copy of a message the upstream accepted (thread-safe)."""

    def __init__(self, max_entries: int = MAX_ENTRIES, ttl: float = RETRY_WINDOW) -> None:
        self._entries: OrderedDict[bytes, float] = OrderedDict()
        self._in_flight: set[bytes] = set()
        self._max = max_entries
        self._ttl = ttl
        self._lock = threading.Lock()

    @staticmethod
    def _key(message: bytes, rcpt: str) -> bytes:
        return message + rcpt.lower().encode("utf-8", "surrogateescape")

    def remember(self, message: bytes, rcpts: Iterable[str]) -> None:
        """``message`` from :func:`message_key`."""
        now = time.monotonic()
        with self._lock:
            for rcpt in rcpts:
                key = self._key(message, rcpt)
                self._entries[key] = now
                self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def claim(self, message: bytes, rcpts: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
        """Sort ``rcpts`` into (to send now, relayed before, in flight elsewhere).

        Those to send are in flight until :meth:`remember` or :meth:`release`.
        """
        todo: list[str] = []
        done: list[str] = []
        busy: list[str] = []
        for rcpt in rcpts:
            key = self._key(message, rcpt)
            if self.seen(message, rcpt):
                done.append(rcpt)
                continue
            with self._lock:
                if key in self._in_flight:
                    busy.append(rcpt)
                    continue
                self._in_flight.add(key)
            todo.append(rcpt)
        return todo, done, busy

    def release(self, message: bytes, rcpts: Iterable[str]) -> None:
        """No longer in flight (sent or not)."""
        with self._lock:
            for rcpt in rcpts:
                self._in_flight.discard(self._key(message, rcpt))

    def seen(self, message: bytes, rcpt: str) -> bool:
        key = self._key(message, rcpt)
        with self._lock:
            at = self._entries.get(key)
            if at is None:
                return False
            if time.monotonic() - at > self._ttl:
                del self._entries[key]
                return False
            return True

    def __len__(self) -> int:
        return len(self._entries)
