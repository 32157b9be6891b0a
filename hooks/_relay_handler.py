"""The relay's aiosmtpd handler: who may relay, and what happens to each message.

The asyncio side only checks the client (network, AUTH) and collects the
envelope; the work of a message (the send pipeline, the upstream delivery)
runs in a thread pool, because both block. One reply per transaction: 250
when every recipient got its copy, 4xx when any could be retried (the client
keeps the message and tries again: nothing is lost), 5xx when the upstream
refused permanently.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any

from aiosmtpd.smtp import AuthResult
from aiosmtpd.smtp import LoginPassword

from ._manager import run_send_pipeline
from ._relay_upstream import TEMPORARY
from ._relay_upstream import Copy
from ._relay_upstream import Upstream
from ._relay_upstream import UpstreamError
from ._relay_upstream import send_copies

if TYPE_CHECKING:
    import pluggy

    from postal_tracking_plugin.config import Config
    from postal_tracking_plugin.store import Server
    from postal_tracking_plugin.store import Store

log = logging.getLogger("postal_tracking_plugin.hooks.smtp_relay")

#: More recipients than this in one transaction get 452 (the client sends the rest later).
MAX_RECIPIENTS = 1000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class DeliveredRecipients:
    """Recipients already delivered in a transaction that was answered with an error.

    When some copies went out and others failed, the client is told to try
    again; on that retry the recipients that already got their copy are
    skipped, so they do not receive it twice. Kept in memory, bounded, for a
    few days (a client's retry window).
    """

    def __init__(self, max_entries: int = 100_000, ttl: float = 5 * 86400) -> None:
        self._entries: OrderedDict[bytes, float] = OrderedDict()
        self._max = max_entries
        self._ttl = ttl
        self._lock = threading.Lock()

    @staticmethod
    def _key(mail_from: str, rcpt: str, content: bytes) -> bytes:
        h = hashlib.sha256(content)
        h.update(b"\0" + mail_from.encode("utf-8", "surrogateescape"))
        h.update(b"\0" + rcpt.lower().encode("utf-8", "surrogateescape"))
        return h.digest()

    def remember(self, mail_from: str, rcpts: Sequence[str], content: bytes) -> None:
        now = time.monotonic()
        with self._lock:
            for rcpt in rcpts:
                key = self._key(mail_from, rcpt, content)
                self._entries[key] = now
                self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def seen(self, mail_from: str, rcpt: str, content: bytes) -> bool:
        key = self._key(mail_from, rcpt, content)
        with self._lock:
            at = self._entries.get(key)
            if at is None:
                return False
            if time.monotonic() - at > self._ttl:
                del self._entries[key]
                return False
            return True


class RelayHandler:
    """aiosmtpd handler of ``postal-tracking smtp-relay`` (see the module docstring)."""

    def __init__(
        self,
        *,
        pm: pluggy.PluginManager,
        config: Config,
        store: Store,
        server: Server | str,
        upstream: Upstream,
        executor: Executor,
        networks: Sequence[Network],
        auth_users: dict[str, str],
        batch: bool,
    ) -> None:
        self.pm = pm
        self.config = config
        self.store = store
        self.server = server
        self.upstream = upstream
        self.executor = executor
        self.networks = tuple(networks)
        # Not ``auth_*``: aiosmtpd takes every handler attribute named so for an AUTH mechanism.
        self.client_users = dict(auth_users)
        self.batch = batch
        self.delivered = DeliveredRecipients()
        #: Messages between DATA and our reply (read and written on the loop only).
        self.busy = 0
        #: Set when the relay stops: new transactions get 421, ones in progress finish.
        self.closing = False

    # -- the client ------------------------------------------------------------

    def allowed(self, peer: Any) -> bool:
        """Is the client's address inside ``tracking.relay.allowed_networks``?"""
        host = peer[0] if isinstance(peer, tuple) and peer else peer
        try:
            address = ipaddress.ip_address(str(host).split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        """aiosmtpd authenticator: ``tracking.relay.auth_users`` (user: password)."""
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        expected = self.client_users.get(user)
        ok = expected is not None and hmac.compare_digest(
            expected.encode("utf-8"), bytes(auth_data.password)
        )
        if not ok:
            log.warning("smtp-relay: failed AUTH %s as %r from %s", mechanism, user, session.peer)
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        if self.closing:
            return "421 4.3.2 The relay is shutting down; try again later"
        if not self.allowed(session.peer):
            log.warning(
                "smtp-relay: refused client %s: not in tracking.relay.allowed_networks",
                session.peer[0] if isinstance(session.peer, tuple) else session.peer,
            )
            return "550 5.7.1 Relay access denied"
        if self.client_users and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients; send the rest in another transaction"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        incoming = Incoming(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            content=envelope.original_content or b"",
            smtputf8=bool(envelope.smtp_utf8),
            trace=_trace(session, server.hostname),
        )
        loop = asyncio.get_running_loop()
        self.busy += 1
        try:
            return await loop.run_in_executor(self.executor, self.relay, incoming)
        finally:
            self.busy -= 1

    # -- the message (in a worker thread) --------------------------------------

    def relay(self, incoming: Incoming) -> str:
        """Run the pipeline and deliver; the reply for the client. Never raises."""
        try:
            return self._relay(incoming)
        except Exception:  # noqa: BLE001 - a bug here must make the client retry, not lose mail
            log.exception("smtp-relay: unexpected error; the client is asked to retry")
            return "451 4.3.0 Local error in the relay; try again later"

    def _relay(self, incoming: Incoming) -> str:
        mail_from, rcpt_tos, content = incoming.mail_from, incoming.rcpt_tos, incoming.content
        todo = [r for r in rcpt_tos if not self.delivered.seen(mail_from, r, content)]
        done_before = len(rcpt_tos) - len(todo)
        if not todo:
            return f"250 2.0.0 OK: already relayed to all {len(rcpt_tos)} recipients"
        try:
            conn = self.upstream.acquire()
        except UpstreamError as exc:
            log.warning("smtp-relay: %s; the client is asked to retry", exc.text)
            return _one_line(f"{exc.code} 4.4.1 {exc.text}; try again later")
        reusable = False
        try:
            failed, reusable = send_copies(
                conn, mail_from, self._copies(incoming, todo), smtputf8=incoming.smtputf8
            )
        finally:
            self.upstream.release(conn, reusable=reusable)
        delivered = [r for r in todo if r not in failed]
        reply = _reply(len(rcpt_tos), done_before + len(delivered), failed)
        if failed and delivered:
            self.delivered.remember(mail_from, delivered, content)
        log.info(
            "smtp-relay: from <%s> to %d recipient(s), %d delivered: %s",
            mail_from,
            len(rcpt_tos),
            done_before + len(delivered),
            reply,
        )
        return reply

    def _copies(self, incoming: Incoming, rcpts: list[str]) -> Iterator[Copy]:
        """The messages to send: one per recipient (its own tokens), or one for all.

        Each gets our ``Received:`` trace line on top (RFC 5321 4.4), after
        the pipeline, so plugins see the message as the client sent it.
        """
        groups = [rcpts] if self.batch else [[r] for r in rcpts]
        for group in groups:
            data = run_send_pipeline(
                self.pm,
                incoming.content,
                mail_from=incoming.mail_from,
                rcpt_to=group,
                server=self.server,
                config=self.config,
                store=self.store,
            )
            yield Copy(incoming.received_header(group) + data, tuple(group))


@dataclass(frozen=True)
class Incoming:
    """One message as the client handed it over."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    smtputf8: bool
    #: ``from <helo> ([ip]) by <host> (...) with <protocol>``, for the Received line.
    trace: str

    def received_header(self, rcpts: Sequence[str]) -> bytes:
        for_clause = f"\r\n\tfor <{_clean(rcpts[0])}>" if len(rcpts) == 1 else ""
        date = email.utils.formatdate(localtime=True)
        text = f"Received: {self.trace}{for_clause};\r\n\t{date}\r\n"
        return text.encode("utf-8", "replace")


def _trace(session: Any, hostname: str) -> str:
    peer = session.peer[0] if isinstance(session.peer, tuple) and session.peer else "unknown"
    helo = _clean(session.host_name or "unknown")
    protocol = "ESMTP" if session.extended_smtp else "SMTP"
    if session.ssl:
        protocol += "S"
    if session.authenticated:
        protocol += "A"
    return (
        f"from {helo} ([{_clean(str(peer))}])\r\n\tby {_clean(hostname)} "
        f"(postal-tracking smtp-relay) with {protocol}"
    )


def _clean(text: str) -> str:
    """Client-supplied text fit for a header: printable, no white space, bounded."""
    return "".join(c for c in text if c.isprintable() and not c.isspace())[:200]


def _reply(total: int, delivered: int, failed: dict[str, tuple[int, str]]) -> str:
    if not failed:
        return f"250 2.0.0 OK: relayed to {total} recipient{'s' if total != 1 else ''}"
    temporary = {r: v for r, v in failed.items() if v[0] < 500}
    if temporary:
        rcpt, (code, text) = next(iter(temporary.items()))
        code = code if 400 <= code < 500 else TEMPORARY
        return _one_line(
            f"{code} 4.4.0 Not relayed to {len(failed)} of {total} recipients, try again later "
            f"(recipients already relayed will be skipped); upstream said for {rcpt}: {text}"
        )
    rcpt, (code, text) = next(iter(failed.items()))
    if not delivered:
        return _one_line(f"{code} 5.0.0 Upstream refused the message: {code} {text}")
    return _one_line(
        f"554 5.0.0 Relayed to {delivered} of {total} recipients; the upstream refused "
        f"{len(failed)}, such as {rcpt}: {code} {text}"
    )


def _one_line(text: str, limit: int = 400) -> str:
    """An SMTP reply line: no CR/LF from upstream text, not too long."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
