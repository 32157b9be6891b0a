"""The relay's upstream side: blocking ``smtplib`` delivery, run in worker threads.

Never called on the asyncio loop (``smtplib`` blocks); the relay's handler
hands it to a thread pool. Connections are kept open between messages (a small
pool, checked with ``RSET`` before reuse), since connecting, greeting, TLS and
AUTH cost more than sending a message; within a transaction, one connection
carries every per-recipient copy. Failures are returned as data (a reply code
and text per recipient), not raised, so the handler can choose the one reply
the client gets.
"""

from __future__ import annotations

import re
import smtplib
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from postal_tracking_plugin.config import RelayConfig

#: Reply for a recipient that could not be tried because the upstream was unusable.
TEMPORARY = 451

#: An idle upstream connection older than this is closed rather than reused
#: (servers drop idle clients; Postfix after 300 s, many sooner).
IDLE_SECONDS = 20.0

_BARE_LF = re.compile(rb"(?<!\r)\n")


@dataclass(frozen=True)
class Copy:
    """One message to send upstream and the recipients it goes to."""

    data: bytes
    rcpt_to: tuple[str, ...]


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


class Upstream:
    """How to reach the upstream SMTP server, from ``tracking.relay``."""

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
        self.local_hostname = local_hostname
        self.max_idle = max_idle
        self._idle: list[tuple[smtplib.SMTP, float]] = []
        self._lock = threading.Lock()
        self._ssl_context: ssl.SSLContext | None = None
        if self.tls != "none":
            try:
                self._ssl_context = ssl.create_default_context(
                    cafile=str(ca_file) if ca_file else None
                )
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                raise ValueError(
                    f"tracking.relay.upstream_ca_file: cannot load {ca_file}: {reason}"
                ) from None

    def describe(self) -> str:
        tls = "" if self.tls == "none" else f" ({self.tls} TLS)"
        return f"{self.host}:{self.port}{tls}"

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the upstream's certificate and host name (system CAs or ``ca_file``)."""
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def acquire(self) -> smtplib.SMTP:
        """An idle connection that still answers ``RSET``, else a new one (:meth:`connect`)."""
        while True:
            with self._lock:
                conn, since = self._idle.pop() if self._idle else (None, 0.0)
            if conn is None:
                return self.connect()
            if time.monotonic() - since > IDLE_SECONDS:
                _quit(conn)
                continue
            try:
                code, _ = conn.rset()
            except (OSError, smtplib.SMTPException):
                code = 0
            if code == 250:
                return conn
            conn.close()

    def release(self, conn: smtplib.SMTP, *, reusable: bool) -> None:
        """Keep ``conn`` for the next message, or close it."""
        if reusable:
            with self._lock:
                if len(self._idle) < self.max_idle:
                    self._idle.append((conn, time.monotonic()))
                    return
        _quit(conn)

    def close_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            _quit(conn)

    def connect(self) -> smtplib.SMTP:
        """An open, greeted, authenticated connection; :class:`UpstreamError` otherwise."""
        where = f"upstream {self.host}:{self.port}"
        try:
            if self.tls == "implicit":
                conn: smtplib.SMTP = smtplib.SMTP_SSL(
                    self.host,
                    self.port,
                    local_hostname=self.local_hostname,
                    timeout=self.timeout,
                    context=self.ssl_context(),
                )
            else:
                conn = smtplib.SMTP(
                    self.host, self.port, local_hostname=self.local_hostname, timeout=self.timeout
                )
        except smtplib.SMTPConnectError as exc:
            raise UpstreamError(TEMPORARY, f"{where} refused the connection: {_text(exc)}") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise UpstreamError(TEMPORARY, f"{where} is unreachable: {_reason(exc)}") from None
        try:
            conn.ehlo_or_helo_if_needed()
            if self.tls == "starttls":
                if not conn.has_extn("starttls"):
                    raise UpstreamError(
                        TEMPORARY,
                        f"{where} does not offer STARTTLS (tracking.relay.upstream_tls)",
                    )
                conn.starttls(context=self.ssl_context())
                conn.ehlo()
            if self.username:
                conn.login(self.username, self.password)
        except UpstreamError:
            _quit(conn)
            raise
        except smtplib.SMTPAuthenticationError as exc:
            _quit(conn)
            raise UpstreamError(
                TEMPORARY,
                f"{where} refused our login as {self.username!r}: {_text(exc)} "
                f"(tracking.relay.upstream_username / upstream_password)",
            ) from None
        except (OSError, smtplib.SMTPException) as exc:
            _quit(conn)
            raise UpstreamError(TEMPORARY, f"{where} failed during set-up: {_reason(exc)}") from None
        return conn


def send_copies(
    conn: smtplib.SMTP,
    mail_from: str,
    copies: Iterable[Copy],
    *,
    smtputf8: bool = False,
) -> tuple[dict[str, tuple[int, str]], bool]:
    """Send each copy on ``conn``: the recipients that failed, and whether ``conn`` still works.

    A recipient missing from the failures was accepted by the upstream (with
    their code and text otherwise). Once the connection is lost, the remaining
    copies fail with a temporary code (they were not tried). ``copies`` may be
    a generator: each copy is built only when the previous one is sent.
    """
    failed: dict[str, tuple[int, str]] = {}
    lost: tuple[int, str] | None = None
    refused: dict[str, tuple[int, bytes | str]]
    for copy in copies:
        if lost is not None:
            failed.update(dict.fromkeys(copy.rcpt_to, lost))
            continue
        options = []
        if conn.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        if smtputf8 and conn.has_extn("smtputf8"):
            options.append("SMTPUTF8")
        data = _BARE_LF.sub(b"\r\n", copy.data)
        try:
            refused = conn.sendmail(mail_from, list(copy.rcpt_to), data, mail_options=options)
        except smtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients
        except smtplib.SMTPSenderRefused as exc:
            refused = dict.fromkeys(copy.rcpt_to, (exc.smtp_code, exc.smtp_error))
        except smtplib.SMTPDataError as exc:
            refused = dict.fromkeys(copy.rcpt_to, (exc.smtp_code, exc.smtp_error))
        except (OSError, smtplib.SMTPException) as exc:
            lost = (TEMPORARY, f"connection to the upstream lost: {_reason(exc)}")
            refused = dict.fromkeys(copy.rcpt_to, lost)
        for rcpt, (code, text) in refused.items():
            failed[rcpt] = (int(code), _decode(text))
    return failed, lost is None


def _quit(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (OSError, smtplib.SMTPException):
        conn.close()


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
