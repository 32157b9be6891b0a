"""aiosmtpd's ``SMTP`` protocol, changed where an MTA's clients expect an MTA's behaviour.

- ``DATA`` accepts lines of any length (Postfix does; the size limit still
  holds) and normalises a bare LF to CRLF at any size. The end of the data
  is only ``<CR><LF>.<CR><LF>``, as Postfix's ``smtpd_forbid_bare_newline =
  normalize`` (no SMTP smuggling).
- ``DATA`` waits for one of ``max_buffered_messages`` slots before its 354, so
  a burst of large messages cannot all sit in memory at once.
- ``AUTH`` is refused outside ``allowed_networks`` before any credential is
  read; each failure is answered after a delay, and the connection is closed
  after :data:`AUTH_MAX_FAILURES` (as Postfix's error sleep and limits).
- The session's legacy ``login_data`` is kept without aiosmtpd's deprecation
  warning at every AUTH (we read ``auth_data``; aiosmtpd itself sets it).
- When the connection goes, the handler is told (``connection_closed``), so an
  upstream connection held for an open transaction is given back.

Subclassed carefully: the private aiosmtpd names used are listed in
:data:`AIOSMTPD_PRIVATE_NAMES`, checked by a canary test, and aiosmtpd is
pinned below 1.5 in setup.cfg.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING
from typing import Any

from aiosmtpd.smtp import MISSING
from aiosmtpd.smtp import SMTP
from aiosmtpd.smtp import Session
from aiosmtpd.smtp import syntax

if TYPE_CHECKING:
    from ._relay_handler import RelayHandler
    from ._relay_handler import Transaction

log = logging.getLogger("postal_tracking_plugin.hooks.smtp_relay")

#: Failed AUTH attempts answered before the connection is closed.
AUTH_MAX_FAILURES = 3

#: Seconds each failed AUTH waits before its 535 (Postfix's smtpd_error_sleep_time).
AUTH_FAILURE_DELAY = 1.0

#: Seconds a DATA waits for a free buffer slot before a 452.
BUFFER_WAIT = 60.0

#: aiosmtpd internals this module relies on (the canary test checks they exist).
AIOSMTPD_PRIVATE_NAMES = (
    "_reader",
    "_writer",
    "_create_session",
    "_call_handler_hook",
    "_set_post_data_state",
    "check_helo_needed",
    "check_auth_needed",
)


class _Session(Session):
    """aiosmtpd's session; ``login_data`` without the warning aiosmtpd logs on each AUTH."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class RelaySMTP(SMTP):
    """One client connection (see the module docstring)."""

    def __init__(
        self,
        handler: RelayHandler,
        *,
        buffers: asyncio.Semaphore,
        auth_failure_delay: float = AUTH_FAILURE_DELAY,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.buffers = buffers
        self.auth_failure_delay = auth_failure_delay
        self.auth_failures = 0
        #: Set by the handler's authenticator when credentials were wrong.
        self.auth_rejected = False
        #: The handler's per-transaction state (an open upstream transaction).
        self.relay_transaction: Transaction | None = None

    def _create_session(self) -> Session:
        return _Session(self.loop)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self.event_handler.connection_closed(self)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        assert self.session is not None
        if not self.event_handler.allowed(self.session.peer):
            await self.push("503 5.5.1 Error: authentication not enabled")
            return
        self.auth_rejected = False
        await super().smtp_AUTH(arg)
        if not self.auth_rejected:
            return
        self.auth_failures += 1
        await asyncio.sleep(self.auth_failure_delay)
        if self.auth_failures >= AUTH_MAX_FAILURES:
            await self.push("421 4.7.0 Too many failed AUTH attempts; closing the connection")
            self._close()
            return
        await self.push("535 5.7.8 Authentication credentials invalid")

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        try:
            await asyncio.wait_for(self.buffers.acquire(), BUFFER_WAIT)
        except TimeoutError:
            await self.push("452 4.3.1 Too many messages in progress; try again later")
            return
        try:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            content = await self._read_data()
            if content is None:
                await self.push("552 5.3.4 Message size exceeds fixed maximum message size")
                self._set_post_data_state()  # type: ignore[no-untyped-call]
                return
            self.envelope.content = self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push("250 OK" if status is MISSING else status)
        finally:
            self.buffers.release()

    async def _read_data(self) -> bytes | None:
        """The message up to ``CRLF.CRLF``, unstuffed and CRLF throughout; None if over SIZE."""
        limit = self.data_size_limit
        lines: list[bytes] = []
        fragments: list[bytes] = []
        size = 0
        after_crlf = True  # the previous line ended in CRLF (or there was none)
        while True:
            try:
                piece = await self._reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:
                # A line longer than the reader's buffer limit: take what is there.
                # Kept even past the size limit (dropped below), so that the rest of
                # a long line is never mistaken for the end of the data.
                fragments.append(await self._reader.read(exc.consumed))
                size += len(fragments[-1])
                if limit and size > limit:
                    fragments = [b"-"]  # still inside a line; its bytes are not kept
                continue
            except asyncio.CancelledError:
                log.info("smtp-relay: connection lost during DATA")
                self._writer.close()
                raise
            size += len(piece)
            if fragments:
                fragments.append(piece)
                line = b"".join(fragments)
                fragments = []
            elif after_crlf and piece == b".\r\n":
                break
            else:
                line = piece
            after_crlf = line.endswith(b"\r\n")
            if limit and size > limit:
                lines.clear()
                continue
            if not after_crlf:
                line = line[:-1] + b"\r\n"
            if line.startswith(b"."):
                line = line[1:]
            lines.append(line)
        if limit and size > limit:
            return None
        return b"".join(lines)
