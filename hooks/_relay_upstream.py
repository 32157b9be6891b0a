"""The relay's upstream side: blocking ``smtplib`` transactions, run in worker threads.

Never called on the asyncio loop (``smtplib`` blocks); the relay's handler
hands each call to a thread pool. A client's transaction holds one
:class:`UpstreamConnection` from its ``MAIL`` to the reply to its final dot,
so each ``RCPT`` is checked with the upstream while the client waits (and
refused with the upstream's own reply). Connections are pooled between
transactions (connecting, greeting, TLS and AUTH cost more than a message)
and retired after ``upstream_connection_max_age``, as Postfix's
``smtp_connection_reuse_time_limit`` does, so an upstream reload is picked up.

Failures are returned as :class:`Reply` values, never raised, with one
exception: :class:`UpstreamError` when no connection can be had at all. A
reply whose outcome cannot be known (the final dot was sent, no answer came
within ``upstream_data_done_timeout``) is marked ``unknown``.

What this is not: a queue. Nothing is kept once the client has its answer.
"""

from __future__ import annotations

import logging
import re
import smtplib
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from postal_tracking_plugin.config import RelayConfig

log = logging.getLogger("postal_tracking_plugin.hooks.smtp_relay")

#: Reply code for a recipient that could not be tried because the upstream was unusable.
TEMPORARY = 451

#: An idle upstream connection older than this is closed rather than reused
#: (servers drop idle clients; Postfix after 300 s, many sooner).
IDLE_SECONDS = 20.0

_BARE_LF = re.compile(rb"(?<!\r)\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


@dataclass(frozen=True)
class Reply:
    """One upstream reply (or what stands for it when none came)."""

    code: int
    text: str
    #: The final dot was sent and no reply came: the upstream may have queued it.
    unknown: bool = False

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return self.code >= 500 and not self.unknown

    def line(self) -> str:
        """The reply as one SMTP reply line for our client (CR/LF flattened, bounded)."""
        return one_line(f"{self.code} {self.text}")


class UpstreamError(Exception):
    """The upstream cannot be used at all (down, TLS or AUTH failure): try again later."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def parse_hostport(value: str, key: str, default_port: int) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``host`` -> (host, port); ValueError naming ``key``."""
    text = value.strip()
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{key}: {value!r} has an unclosed [")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{key}: {value!r} is not [address]:port")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"{key}: {value!r} has no host (write it as host:port)")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{key}: {value!r} has a bad port {port_text!r} (0-65535)")
    return host, int(port_text)


class UpstreamConnection:
    """One greeted (and maybe TLS, AUTH) connection; one transaction at a time."""

    def __init__(self, smtp: smtplib.SMTP, *, tls: bool, data_done_timeout: float) -> None:
        self.smtp = smtp
        self.tls = tls
        self.data_done_timeout = data_done_timeout
        self.born = time.monotonic()
        self.idle_since = self.born
        #: The connection failed; it is closed and never reused.
        self.broken = False
        #: MAIL was accepted and neither DATA's end nor RSET has closed the transaction.
        self.in_transaction = False
        self.reused = False

    @property
    def smtputf8(self) -> bool:
        return self.smtp.has_extn("smtputf8")

    def size_limit(self) -> int | None:
        """The upstream's SIZE (RFC 1870), None when unlimited or not said."""
        value = self.smtp.esmtp_features.get("size", "").strip()
        return int(value) if value.isdigit() and int(value) > 0 else None

    def mail(self, sender: str, *, smtputf8: bool) -> Reply:
        """``MAIL FROM``; SMTPUTF8 is asked for when the client did and the upstream has it."""
        options = []
        if self.smtp.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        utf8 = (smtputf8 or not sender.isascii()) and self.smtputf8
        if utf8:
            options.append("SMTPUTF8")
        if not sender.isascii() and not utf8:
            return Reply(
                553, "5.6.7 The upstream does not offer SMTPUTF8, which the sender address needs"
            )
        self.smtp.command_encoding = "utf-8" if utf8 else "ascii"
        reply = self._command(self.smtp.mail, sender, options)
        self.in_transaction = reply.ok
        return reply

    def rcpt(self, recipient: str) -> Reply:
        if not recipient.isascii() and self.smtp.command_encoding != "utf-8":
            return Reply(
                553,
                "5.6.7 The upstream does not offer SMTPUTF8, which this recipient address needs",
            )
        return self._command(self.smtp.rcpt, recipient)

    def rset(self) -> bool:
        """End an open transaction; False (and closed) when the connection is gone."""
        if self.broken:
            return False
        reply = self._command(self.smtp.rset)
        self.in_transaction = False
        if not reply.ok:
            self.close()
        return reply.ok

    def data(self, content: bytes) -> Reply:
        """``DATA``, the content and the final dot; waits ``data_done_timeout`` for the reply.

        Failures before the final dot was sent are plain temporary failures
        (nothing was delivered); no reply after it is ``unknown``.
        """
        reply = self._command(self.smtp.docmd, "DATA")
        if reply.code != 354:
            return reply  # the transaction is still open: release() sends RSET
        self.in_transaction = False
        # re.sub returns its input when nothing matches: no copy of a large message then.
        payload = _LEADING_DOT.sub(b"..", _BARE_LF.sub(b"\r\n", content))
        end = b".\r\n" if payload.endswith(b"\r\n") else b"\r\n.\r\n"
        try:
            if len(payload) < 1024 * 1024:
                self.smtp.send(payload + end)
            else:  # two writes; TCP_NODELAY (see Upstream._connect) keeps the dot from waiting
                self.smtp.send(payload)
                self.smtp.send(end)
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            return Reply(
                TEMPORARY,
                f"4.4.2 Connection to the upstream lost while sending the message: {_reason(exc)}",
            )
        sock = self.smtp.sock
        try:
            if sock is not None:
                sock.settimeout(self.data_done_timeout)
            code, text = self.smtp.getreply()
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            return Reply(
                TEMPORARY,
                f"4.4.2 No reply from the upstream to the end of the message within "
                f"{self.data_done_timeout:g} s ({_reason(exc)}); it may have been delivered",
                unknown=True,
            )
        if sock is not None and self.smtp.sock is sock:
            sock.settimeout(self.smtp.timeout)
        return Reply(code, _decode(text))

    def _command(self, method: object, *args: object) -> Reply:
        try:
            code, text = method(*args)  # type: ignore[operator]
        except UnicodeEncodeError as exc:
            # Never sent: smtplib encodes a command before writing it.
            return Reply(553, f"5.6.7 Address cannot be sent to the upstream: {exc.reason}")
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            return Reply(TEMPORARY, f"4.4.2 Connection to the upstream lost: {_reason(exc)}")
        return Reply(int(code), _decode(text))

    def close(self) -> None:
        self.broken = True
        self.in_transaction = False
        self.smtp.close()

    def quit(self) -> None:
        if self.broken:
            return
        self.broken = True
        try:
            self.smtp.quit()
        except (OSError, smtplib.SMTPException):
            self.smtp.close()


class Upstream:
    """How to reach the upstream SMTP server, from ``tracking.relay``, and the pool of connections."""

    def __init__(
        self,
        relay: RelayConfig,
        *,
        local_hostname: str,
        ca_file: Path | None = None,
        max_idle: int = 8,
    ) -> None:
        """:raises ValueError: a bad ``upstream`` or an unreadable ``ca_file``, named."""
        self.host, self.port = parse_hostport(relay.upstream, "tracking.relay.upstream", 25)
        self.tls = relay.upstream_tls
        self.username = relay.upstream_username
        self.password = relay.upstream_password or ""
        self.timeout = relay.upstream_timeout
        self.data_done_timeout = relay.upstream_data_done_timeout
        self.max_age = relay.upstream_connection_max_age
        self.local_hostname = local_hostname
        self.max_idle = max_idle
        #: The upstream's SIZE from its latest EHLO (None: not known yet, or unlimited).
        self.size_limit: int | None = None
        #: Whether its latest EHLO offered SMTPUTF8 (None: not known yet).
        self.smtputf8: bool | None = None
        self._idle: list[UpstreamConnection] = []
        self._lock = threading.Lock()
        self._verified: ssl.SSLContext | None = None
        if self.tls in ("starttls", "implicit"):
            try:
                self._verified = ssl.create_default_context(
                    cafile=str(ca_file) if ca_file else None
                )
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                raise ValueError(
                    f"tracking.relay.upstream_ca_file: cannot load {ca_file}: {reason}"
                ) from None
        # Opportunistic TLS verifies nothing (Postfix's "may"): it only defeats eavesdropping.
        self._unverified = ssl.create_default_context()
        self._unverified.check_hostname = False
        self._unverified.verify_mode = ssl.CERT_NONE

    def describe(self) -> str:
        tls = "" if self.tls == "none" else f" ({self.tls} TLS)"
        return f"{self.host}:{self.port}{tls}"

    def begin(self, sender: str, *, smtputf8: bool) -> tuple[UpstreamConnection, Reply]:
        """A connection with ``MAIL FROM`` sent; its reply (the caller releases the connection).

        A pooled connection the upstream dropped meanwhile is replaced once,
        which costs nothing: ``MAIL`` delivers nothing.

        :raises UpstreamError: no connection can be had.
        """
        while True:
            conn = self.acquire()
            reply = conn.mail(sender, smtputf8=smtputf8)
            if conn.broken and conn.reused:
                continue
            return conn, reply

    def acquire(self) -> UpstreamConnection:
        """An idle connection young enough, else a new one (:meth:`connect`)."""
        now = time.monotonic()
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self.connect()
            if now - conn.idle_since > IDLE_SECONDS or now - conn.born > self.max_age:
                conn.quit()
                continue
            conn.reused = True
            return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Keep ``conn`` for the next transaction (RSET first if one is open), or close it."""
        if conn.in_transaction:
            conn.rset()
        if conn.broken:
            return
        conn.idle_since = time.monotonic()
        if conn.idle_since - conn.born <= self.max_age:
            with self._lock:
                if len(self._idle) < self.max_idle:
                    self._idle.append(conn)
                    return
        conn.quit()

    def close_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.quit()

    def connect(self) -> UpstreamConnection:
        """An open, greeted, authenticated connection; :class:`UpstreamError` otherwise."""
        if self.tls != "opportunistic":
            return self._connect(self.tls)
        try:
            return self._connect("opportunistic")
        except _HandshakeFailed as exc:
            # As Postfix at "may": a failed handshake is retried in plain text.
            log.warning("smtp-relay: %s; continuing without TLS", exc)
            return self._connect("none")

    def _connect(self, tls: str) -> UpstreamConnection:
        where = f"upstream {self.host}:{self.port}"
        try:
            if tls == "implicit":
                assert self._verified is not None
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    self.host,
                    self.port,
                    local_hostname=self.local_hostname,
                    timeout=self.timeout,
                    context=self._verified,
                )
            else:
                smtp = smtplib.SMTP(
                    self.host, self.port, local_hostname=self.local_hostname, timeout=self.timeout
                )
        except smtplib.SMTPConnectError as exc:
            raise UpstreamError(
                TEMPORARY, f"{where} refused the connection: {_text(exc)}"
            ) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise UpstreamError(TEMPORARY, f"{where} is unreachable: {_reason(exc)}") from None
        encrypted = tls == "implicit"
        try:
            # Without it, a short write after a long one waits for the delayed ACK (40 ms
            # on Linux): splitting the final dot from the data halved the throughput.
            if smtp.sock is not None:
                smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            smtp.ehlo_or_helo_if_needed()
            if tls == "starttls" and not smtp.has_extn("starttls"):
                raise UpstreamError(
                    TEMPORARY, f"{where} does not offer STARTTLS (tracking.relay.upstream_tls)"
                )
            if tls in ("starttls", "opportunistic") and smtp.has_extn("starttls"):
                context = self._verified if tls == "starttls" else self._unverified
                try:
                    smtp.starttls(context=context)
                    smtp.ehlo()
                    encrypted = True
                except smtplib.SMTPResponseException as exc:
                    if tls != "opportunistic":
                        raise
                    # Refused (454): the session is still plain text and usable.
                    log.warning(
                        "smtp-relay: %s refused STARTTLS: %s; continuing without TLS",
                        where,
                        _text(exc),
                    )
                except ssl.SSLError as exc:
                    if tls == "opportunistic":
                        raise _HandshakeFailed(f"{where}: TLS handshake failed: {exc}") from None
                    raise
            if self.username:
                smtp.login(self.username, self.password)
        except (UpstreamError, _HandshakeFailed):
            smtp.close()
            raise
        except smtplib.SMTPAuthenticationError as exc:
            _quit(smtp)
            raise UpstreamError(
                TEMPORARY,
                f"{where} refused our login as {self.username!r}: {_text(exc)} "
                f"(tracking.relay.upstream_username / upstream_password)",
            ) from None
        except (OSError, smtplib.SMTPException) as exc:
            smtp.close()
            raise UpstreamError(
                TEMPORARY, f"{where} failed during set-up: {_reason(exc)}"
            ) from None
        conn = UpstreamConnection(smtp, tls=encrypted, data_done_timeout=self.data_done_timeout)
        self.size_limit = conn.size_limit()
        self.smtputf8 = conn.smtputf8
        return conn


class _HandshakeFailed(Exception):
    """Opportunistic STARTTLS was offered but the handshake failed."""


def one_line(text: str, limit: int = 400) -> str:
    """An SMTP reply line: no CR/LF from upstream text, not too long."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _quit(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (OSError, smtplib.SMTPException):
        smtp.close()


def _decode(text: bytes | str) -> str:
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


def _text(exc: smtplib.SMTPResponseException) -> str:
    return f"{exc.smtp_code} {_decode(exc.smtp_error)}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        return _text(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
