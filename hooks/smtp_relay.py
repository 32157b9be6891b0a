"""The SMTP sidecar relay: a host adapter that puts the send pipeline in front of any SMTP server.

``postal-tracking smtp-relay`` runs it. Applications send to the relay (by
default ``127.0.0.1:2525``) instead of to Postal's SMTP port or a smarthost;
for each message the relay runs every plugin under ``postal.plugins`` (this
package's tracking among them) once per recipient, so each copy carries its
own tokens as Postal stores one message per recipient, and relays the result
to the upstream with ``smtplib``. An upstream that is down or refuses
temporarily gives the client a 4xx, so the client keeps the message and
retries: the relay never holds mail of its own. The client's transaction is
carried to the upstream as it happens (each RCPT checked there), and no
recipient ever gets a copy twice; docs/relay.md tells how.

.. important::
   It is not an open relay: clients outside ``tracking.relay.allowed_networks``
   (loopback by default) are refused with 5xx. Client AUTH
   (``tracking.relay.auth_users``) is offered without TLS, so it guards a
   trusted network, not the Internet.

asyncio (aiosmtpd) on one thread; the pipeline and ``smtplib`` in a thread
pool, so a slow upstream never stalls other clients. Never run it in a gevent
process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import logging
import signal
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from postal_tracking_plugin.errors import ConfigError
from postal_tracking_plugin.errors import RelayError as RelayError

from ._relay_handler import DEFAULT_SIZE
from ._relay_handler import RelayHandler
from ._relay_smtp import RelaySMTP
from ._relay_upstream import Upstream
from ._relay_upstream import UpstreamError
from ._relay_upstream import parse_hostport

if TYPE_CHECKING:
    import pluggy

    from postal_tracking_plugin.config import Config
    from postal_tracking_plugin.store import Server
    from postal_tracking_plugin.store import Store

log = logging.getLogger("postal_tracking_plugin.hooks.smtp_relay")

#: Threads for the blocking work: the pipeline and every upstream command. A
#: client's open transaction holds no thread between its commands; a message
#: waiting up to upstream_data_done_timeout for its reply holds one.
WORKERS = 32


class SmtpRelay:
    """The relay server. :meth:`serve_forever` for the CLI; :meth:`start` / :meth:`stop` to embed.

    :param config: the loaded configuration; ``tracking.relay`` is used.
    :param store: the store the tracking plugin writes to.
    :param pm: the plugin manager (:func:`~postal_tracking_plugin.hooks.get_plugin_manager`).
    :param server: the Postal server relayed mail is sent for (overrides
        ``tracking.relay.server``); resolved in the store now, so a typo fails
        at start-up.
    :param listen: ``host:port`` to listen on (overrides ``tracking.relay.listen``);
        port 0 picks a free one (see :attr:`address`).
    :param upstream: ``host:port`` of the upstream (overrides ``tracking.relay.upstream``).
    :raises ConfigError: no server named, or a bad address.
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        pm: pluggy.PluginManager,
        *,
        server: str | None = None,
        listen: str | None = None,
        upstream: str | None = None,
    ) -> None:
        relay = config.tracking.relay
        where = config.source or "the configuration"
        name = server or relay.server
        if not name:
            raise ConfigError(
                f"tracking.relay.server is not set ({where}): set it, or pass --server, to the "
                f"Postal server the relay sends for (`postal-tracking servers list` shows them)"
            )
        self.server: Server = store.get_server(name)
        self.listen_text = listen or relay.listen
        key = "--listen" if listen else "tracking.relay.listen"
        try:
            self.listen_host, self.listen_port = parse_hostport(self.listen_text, key, 2525)
            if upstream:
                relay = dataclasses.replace(relay, upstream=upstream)
            hostname = relay.helo_name or socket.getfqdn()
            ca_file = config.path(relay.upstream_ca_file) if relay.upstream_ca_file else None
            self.upstream = Upstream(
                relay, local_hostname=hostname, ca_file=ca_file, max_idle=WORKERS
            )
        except ValueError as exc:
            raise ConfigError(f"{exc} ({where})") from None
        if _same_endpoint(
            (self.listen_host, self.listen_port), (self.upstream.host, self.upstream.port)
        ):
            raise ConfigError(
                f"tracking.relay.upstream ({self.upstream.host}:{self.upstream.port}) is the "
                f"relay's own listening address ({self.listen_text}), so mail would loop ({where}); "
                f"point upstream at Postal's SMTP port or your smarthost"
            )
        self.hostname = hostname
        self.config = config
        self.pm = pm
        self.max_buffered = relay.max_buffered_messages
        self._executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="smtp-relay")
        self.handler = RelayHandler(
            pm=pm,
            config=config,
            store=store,
            server=self.server,
            upstream=self.upstream,
            executor=self._executor,
            networks=[ipaddress.ip_network(n, strict=False) for n in relay.allowed_networks],
            auth_users=relay.auth_users,
            batch=relay.batch,
        )
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._on_ready: Callable[[], None] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The address listened on (with the real port when 0 was asked for)."""
        if self._sock is None:
            return self.listen_host, self.listen_port
        host, port = self._sock.getsockname()[:2]
        return host, port

    def describe(self) -> str:
        host, port = self.address
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        plugins = ", ".join(sorted(n for n, _ in self.pm.list_name_plugin() if n)) or "none"
        mode = "one copy for all recipients" if self.handler.batch else "one copy per recipient"
        helo = (
            ""
            if "." in self.hostname
            else (
                f"; the EHLO name {self.hostname!r} is not fully qualified, which many upstreams "
                f"refuse: set tracking.relay.helo_name"
            )
        )
        return (
            f"listening on {shown}, relaying to {self.upstream.describe()} for server "
            f"{self.server.name!r} ({mode}; plugins: {plugins}){helo}"
        )

    # -- running -----------------------------------------------------------------

    def bind(self) -> None:
        """Open the listening socket; :class:`RelayError` with the reason and the fix."""
        if self._sock is not None:
            return
        try:
            infos = socket.getaddrinfo(
                self.listen_host,
                self.listen_port,
                type=socket.SOCK_STREAM,
                flags=socket.AI_PASSIVE,
            )
        except socket.gaierror as exc:
            raise RelayError(
                f"cannot listen on {self.listen_text}: {exc.strerror} (tracking.relay.listen)"
            ) from None
        family, type_, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise RelayError(_bind_error(self.listen_text, exc)) from None
        sock.setblocking(False)
        self._sock = sock

    def serve_forever(self, ready: Callable[[], None] | None = None) -> None:
        """Serve until SIGINT or SIGTERM, then finish the messages in progress.

        :param ready: called once the relay accepts connections and SIGINT /
            SIGTERM stop it gracefully (the CLI says "listening" then).
        """
        self.bind()
        self._on_ready = ready
        asyncio.run(self._serve(install_signals=True))

    def start(self) -> None:
        """Serve in a background thread (tests, embedding); returns once listening."""
        self.bind()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._serve(install_signals=False)),
            name="smtp-relay",
            daemon=True,
        )
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        """Stop a relay started with :meth:`start`; waits for messages in progress."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._loop = None

    async def _serve(self, *, install_signals: bool) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopping = asyncio.Event()
        assert self._sock is not None
        authenticator = self.handler.authenticate if self.handler.client_users else None
        buffers = asyncio.Semaphore(self.max_buffered)

        def factory() -> RelaySMTP:
            return RelaySMTP(
                self.handler,
                buffers=buffers,
                hostname=self.hostname,
                ident="postal-tracking smtp-relay",
                data_size_limit=self.upstream.size_limit or DEFAULT_SIZE,
                enable_SMTPUTF8=True,
                authenticator=authenticator,
                # AUTH is offered without TLS only when auth_users are configured.
                auth_require_tls=authenticator is None,
                loop=loop,
            )

        try:
            server = await loop.create_server(factory, sock=self._sock)
        except BaseException as exc:  # reported to start()
            self._failure = exc
            self._ready.set()
            raise
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._stopping.set)
        self._ready.set()
        if self._on_ready is not None:
            self._on_ready()
        # Learn the upstream's SIZE and SMTPUTF8 before the first client (a pooled
        # connection); an upstream that is down now is not an error yet.
        loop.run_in_executor(self._executor, self._probe_upstream)
        try:
            await self._stopping.wait()
        finally:
            server.close()
            # Finish what was accepted: a message whose reply the client never
            # saw would be sent again by the client.
            self.handler.closing = True
            while self.handler.busy:
                await asyncio.sleep(0.05)
            await server.wait_closed()
            await loop.run_in_executor(None, self._executor.shutdown)
            self.upstream.close_idle()
            for task in asyncio.all_tasks(loop) - {asyncio.current_task()}:
                task.cancel()
            self._sock = None

    def _probe_upstream(self) -> None:
        try:
            self.upstream.release(self.upstream.acquire())
        except UpstreamError as exc:
            log.warning("smtp-relay: %s (clients get 4xx until it answers)", exc.text)


def _bind_error(where: str, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the port is in use by another program; stop that "
            f"program, or set tracking.relay.listen (or --listen) to another port"
        )
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {where}: permission denied (ports below 1024 need root or "
            f"CAP_NET_BIND_SERVICE); use a port above 1023"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"cannot listen on {where}: that address is not on this machine; set "
            f"tracking.relay.listen to one of its addresses"
        )
    return f"cannot listen on {where}: {exc.strerror or exc}"


def _same_endpoint(listen: tuple[str, int], upstream: tuple[str, int]) -> bool:
    """Would relaying to ``upstream`` reach this relay itself?"""
    if listen[1] != upstream[1] or listen[1] == 0:
        return False
    try:
        ours = {ipaddress.ip_address(a[4][0]) for a in socket.getaddrinfo(*listen)}
        theirs = {ipaddress.ip_address(a[4][0]) for a in socket.getaddrinfo(*upstream)}
    except (OSError, ValueError):
        return False  # an upstream that does not resolve now is not a loop to refuse
    if ours & theirs:
        return True
    return any(a.is_unspecified for a in ours) and any(a.is_loopback for a in theirs)
