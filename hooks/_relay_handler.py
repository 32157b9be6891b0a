"""The relay's aiosmtpd handler: who may relay, and what happens to each message.

A client's transaction is carried to the upstream as it happens: ``MAIL``
opens an upstream transaction (an upstream that is down gives 4xx there),
each ``RCPT`` is checked with the upstream and a refused recipient gets the
upstream's own reply while the others go on. At the end of ``DATA`` the send
pipeline runs once per recipient (or once for all with ``batch``) and each
copy is delivered; the pipeline and ``smtplib`` block, so that work runs in a
thread pool and the asyncio side only checks the client and collects the
envelope.

Never a copy twice: a recipient is remembered (``_relay_memory``) the moment
the upstream accepts its copy, and a client's retry skips it. The one reply
to the end of ``DATA``: 250 when every recipient has its copy; 4xx when any
may be retried (recipients already relayed are skipped then); 5xx, with the
upstream's own code, when the upstream refused every remaining copy for good.
"""

from __future__ import annotations

import asyncio
import email.utils
import hmac
import ipaddress
import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING

from aiosmtpd.smtp import AuthResult
from aiosmtpd.smtp import Envelope
from aiosmtpd.smtp import LoginPassword
from aiosmtpd.smtp import Session

from ._manager import run_send_pipeline
from ._relay_memory import RelayedRecipients
from ._relay_memory import message_key
from ._relay_upstream import TEMPORARY
from ._relay_upstream import Reply
from ._relay_upstream import Upstream
from ._relay_upstream import UpstreamConnection
from ._relay_upstream import UpstreamError
from ._relay_upstream import one_line

if TYPE_CHECKING:
    import pluggy

    from postal_tracking_plugin.config import Config
    from postal_tracking_plugin.store import Server
    from postal_tracking_plugin.store import Store

    from ._relay_smtp import RelaySMTP

log = logging.getLogger("postal_tracking_plugin.hooks.smtp_relay")

#: More recipients than this in one transaction get 452 (the client sends the rest later).
MAX_RECIPIENTS = 1000

#: SIZE we advertise until the upstream's is known, and when it has none.
DEFAULT_SIZE = 32 * 1024 * 1024

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class Transaction:
    """A client's open transaction and its upstream half (MAIL and the accepted RCPTs sent)."""

    conn: UpstreamConnection
    smtputf8: bool
    accepted: list[str] = field(default_factory=list)


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
        self.relayed = RelayedRecipients()
        #: Messages between DATA and our reply (read and written on the loop only).
        self.busy = 0
        #: Set when the relay stops: new transactions get 421, ones in progress finish.
        self.closing = False

    # -- the client ------------------------------------------------------------

    def allowed(self, peer: object) -> bool:
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
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: object,
    ) -> AuthResult:
        """aiosmtpd authenticator: ``tracking.relay.auth_users`` (user: password).

        A failure is left for :class:`~._relay_smtp.RelaySMTP` to answer
        (``handled``), after its delay.
        """
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        expected = self.client_users.get(user)
        ok = (
            self.allowed(session.peer)
            and expected is not None
            and hmac.compare_digest(expected.encode("utf-8"), bytes(auth_data.password))
        )
        if ok:
            return AuthResult(success=True, handled=False, auth_data=user)
        log.warning("smtp-relay: failed AUTH %s as %r from %s", mechanism, user, session.peer)
        server.auth_rejected = True
        return AuthResult(success=False, handled=True)

    async def handle_EHLO(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """PIPELINING; SIZE as the upstream's; AUTH offered only inside ``allowed_networks``."""
        session.host_name = hostname
        server.data_size_limit = self.upstream.size_limit or DEFAULT_SIZE
        allowed = self.allowed(session.peer)
        out = []
        for line in responses:
            keyword = line[4:].split(" ", 1)[0].upper()
            if keyword == "SIZE":
                line = f"250-SIZE {server.data_size_limit}"
            elif keyword == "AUTH" and not allowed:
                continue
            out.append(line)
        out.insert(-1, "250-PIPELINING")
        return out

    async def handle_MAIL(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
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
        if not _encodable(address):
            return "553 5.1.3 The sender address is not valid UTF-8"
        await self._drop(server)  # a HELO or EHLO in mid-transaction reset it
        smtputf8 = bool(envelope.smtp_utf8)
        loop = asyncio.get_running_loop()
        try:
            conn, reply = await loop.run_in_executor(
                self.executor, lambda: self.upstream.begin(address, smtputf8=smtputf8)
            )
        except UpstreamError as exc:
            log.warning("smtp-relay: %s; the client is asked to retry", exc.text)
            return one_line(f"{exc.code} 4.4.1 {exc.text}; try again later")
        if not reply.ok:
            await loop.run_in_executor(self.executor, self.upstream.release, conn)
            return reply.line()
        server.relay_transaction = Transaction(conn, smtputf8)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        txn: Transaction | None = server.relay_transaction
        if txn is None:  # pragma: no cover - aiosmtpd sends RCPT here only after our MAIL 250
            return "503 5.5.1 Error: need MAIL command"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients; send the rest in another transaction"
        if not _encodable(address):
            return "553 5.1.3 The recipient address is not valid UTF-8"
        assert envelope.mail_from is not None  # set by our MAIL, as txn is
        if not address.isascii() and not (txn.smtputf8 or not envelope.mail_from.isascii()):
            return "553 5.6.7 Must declare SMTPUTF8 to send a non-ASCII address"
        if not address.isascii() and not txn.conn.smtputf8:
            return (
                "553 5.6.7 The upstream does not offer SMTPUTF8, which this recipient address needs"
            )
        if txn.conn.broken:
            return "451 4.4.2 Connection to the upstream lost; try again later"
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(self.executor, txn.conn.rcpt, address)
        if not reply.ok:
            return reply.line()
        txn.accepted.append(address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_RSET(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        await self._drop(server)
        return "250 2.0.0 OK"

    def connection_closed(self, server: RelaySMTP) -> None:
        """The client's connection went (called on the loop): give back its upstream connection."""
        txn, server.relay_transaction = server.relay_transaction, None
        if txn is None:
            return
        try:
            self.executor.submit(self.upstream.release, txn.conn)
        except RuntimeError:  # the relay is stopping: the pool is shut down
            txn.conn.close()

    async def _drop(self, server: RelaySMTP) -> None:
        txn, server.relay_transaction = server.relay_transaction, None
        if txn is not None:
            await asyncio.get_running_loop().run_in_executor(
                self.executor, self.upstream.release, txn.conn
            )

    async def handle_DATA(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        txn, server.relay_transaction = server.relay_transaction, None
        incoming = Incoming(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            content=envelope.original_content or b"",
            smtputf8=bool(envelope.smtp_utf8),
            trace=_trace(session, server.hostname, smtputf8=bool(envelope.smtp_utf8)),
        )
        loop = asyncio.get_running_loop()
        self.busy += 1
        try:
            return await loop.run_in_executor(self.executor, self.relay, incoming, txn)
        finally:
            self.busy -= 1

    # -- the message (in a worker thread) --------------------------------------

    def relay(self, incoming: Incoming, txn: Transaction | None) -> str:
        """Run the pipeline and deliver; the reply for the client. Never raises."""
        held: list[UpstreamConnection | None] = [txn.conn if txn else None]
        try:
            return self._relay(incoming, txn, held)
        except Exception:  # a bug here must make the client retry, not lose mail
            log.exception("smtp-relay: unexpected error; the client is asked to retry")
            return "451 4.3.0 Local error in the relay; try again later"
        finally:
            if held[0] is not None:
                self.upstream.release(held[0])

    def _relay(
        self, incoming: Incoming, txn: Transaction | None, held: list[UpstreamConnection | None]
    ) -> str:
        """``held[0]``: the upstream connection in use, for :meth:`relay` to release."""
        key = message_key(incoming.mail_from, incoming.content)
        rcpts = tuple(dict.fromkeys(incoming.rcpt_tos))  # a recipient given twice: one copy
        todo, done, busy = self.relayed.claim(key, rcpts)
        try:
            return self._send(incoming, txn, held, key, rcpts, todo, len(done), busy)
        finally:
            self.relayed.release(key, todo)

    def _send(
        self,
        incoming: Incoming,
        txn: Transaction | None,
        held: list[UpstreamConnection | None],
        key: bytes,
        rcpts: tuple[str, ...],
        todo: list[str],
        done_before: int,
        busy: list[str],
    ) -> str:
        if not todo and not busy:
            return f"250 2.0.0 OK: already relayed to all {len(rcpts)} recipients"
        outcome: dict[str, Reply] = dict.fromkeys(
            busy,
            Reply(
                TEMPORARY,
                "4.3.0 This message is being relayed to this recipient on another "
                "connection right now",
            ),
        )
        groups = ([todo] if self.batch else [[r] for r in todo]) if todo else []
        for group in groups:
            data = self._copy(incoming, group)
            reply, held[0] = self._deliver(incoming, group, data, txn, held[0])
            txn = None  # the open upstream transaction serves the first copy at most
            if reply.ok:
                self.relayed.remember(key, group)  # at once: nothing below may forget it
            elif reply.unknown:
                log.warning(
                    "smtp-relay: no reply from the upstream after the end of the message "
                    "for %s; the client is asked to retry, so it may be delivered twice "
                    "(as Postfix does; tracking.relay.upstream_data_done_timeout)",
                    ", ".join(group),
                )
            outcome.update(dict.fromkeys(group, reply))
        reply_line = _answer(len(rcpts), done_before, outcome)
        log.info(
            "smtp-relay: from <%s> to %d recipient(s), %d relayed: %s",
            incoming.mail_from,
            len(rcpts),
            done_before + sum(r.ok for r in outcome.values()),
            reply_line,
        )
        return reply_line

    def _deliver(
        self,
        incoming: Incoming,
        group: list[str],
        data: bytes,
        txn: Transaction | None,
        conn: UpstreamConnection | None,
    ) -> tuple[Reply, UpstreamConnection | None]:
        """One copy to ``group``: on the client's open transaction if it matches, else a new one."""
        if txn is not None and not conn_broken(conn) and txn.accepted == group:
            assert conn is not None
            return conn.data(data), conn
        if conn is not None and conn.in_transaction:
            conn.rset()
        if conn_broken(conn):
            conn = None
        if conn is None:
            try:
                conn = self.upstream.acquire()
            except UpstreamError as exc:
                return Reply(TEMPORARY, f"4.4.1 {exc.text}"), None
        reply = conn.mail(incoming.mail_from, smtputf8=incoming.smtputf8)
        if conn.broken and conn.reused:
            try:
                conn = self.upstream.acquire()
            except UpstreamError as exc:
                return Reply(TEMPORARY, f"4.4.1 {exc.text}"), None
            reply = conn.mail(incoming.mail_from, smtputf8=incoming.smtputf8)
        if not reply.ok:
            return reply, conn
        for rcpt in group:
            reply = conn.rcpt(rcpt)
            if not reply.ok:
                # One copy per group: a group of one (or a batch refused in part; the
                # batch's other recipients were accepted at RCPT time, so retry them).
                return reply, conn
        return conn.data(data), conn

    def _copy(self, incoming: Incoming, group: list[str]) -> bytes:
        """The message for ``group``: the pipeline's result with our ``Received:`` on top.

        The trace line (RFC 5321 4.4) is added after the pipeline, so plugins
        see the message as the client sent it.
        """
        data = run_send_pipeline(
            self.pm,
            incoming.content,
            mail_from=incoming.mail_from,
            rcpt_to=group,
            server=self.server,
            config=self.config,
            store=self.store,
        )
        return incoming.received_header(group) + data


def conn_broken(conn: UpstreamConnection | None) -> bool:
    return conn is not None and conn.broken


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


def _trace(session: Session, hostname: str, *, smtputf8: bool) -> str:
    """RFC 3848 / RFC 6531 protocol names: ESMTP[S][A], UTF8SMTP[S][A]."""
    peer = session.peer[0] if isinstance(session.peer, tuple) and session.peer else "unknown"
    helo = _clean(session.host_name or "unknown")
    if not session.extended_smtp:
        protocol = "SMTP"
    else:
        protocol = "UTF8SMTP" if smtputf8 else "ESMTP"
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


def _encodable(address: str) -> bool:
    """aiosmtpd keeps bytes that are not UTF-8 as surrogates; those cannot go upstream."""
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _answer(total: int, done_before: int, outcome: dict[str, Reply]) -> str:
    """The one reply to the end of DATA (see the module docstring)."""
    delivered_now = sum(r.ok for r in outcome.values())
    if done_before + delivered_now == total:
        return f"250 2.0.0 OK: relayed to {total} recipient{'s' if total != 1 else ''}"
    failed = {rcpt: r for rcpt, r in outcome.items() if not r.ok}
    temporary = {rcpt: r for rcpt, r in failed.items() if not r.permanent}
    if temporary or delivered_now:
        # A retry is worth it: the temporary ones may pass, and on the retry the
        # permanently refused ones are alone (refused at RCPT, or at DATA with
        # nothing delivered: the 5xx below), so it ends. Recipients already
        # relayed are skipped.
        rcpt, r = next(iter((temporary or failed).items()))
        code = r.code if 400 <= r.code < 500 else TEMPORARY
        return one_line(
            f"{code} 4.4.0 Not relayed to {len(failed)} of {total} recipients yet, try "
            f"again later (recipients already relayed will be skipped); upstream said for "
            f"{rcpt}: {r.code} {r.text}"
        )
    # Every copy refused for good: the upstream's own reply, code and all.
    return next(iter(failed.values())).line()
