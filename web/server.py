"""The fast server: gevent WSGI servers for every bind address, HTTP and HTTPS.

One *worker* (:class:`Worker`) is one process: a gevent hub running a
:class:`Listener` per listening socket, all sharing one bounded connection pool
(``tracking.max_connections``), one link cache and one event recorder. With
``--workers N`` the parent binds every socket N times with ``SO_REUSEPORT`` (so
the kernel spreads connections evenly), forks N workers and supervises them
(:func:`~._supervisor.serve`): SIGTERM stops accepting, lets requests in
flight finish (bounded), flushes the recorder and exits 0; SIGHUP re-reads
``postal.yml`` and the certificates; a worker that dies is replaced. Binding is
in :mod:`._sockets`.

This module does not monkey-patch: ``python -m postal_tracking_plugin.web``
(what ``postal-tracking fast-server`` runs) does that first thing, and tests
run a :class:`Worker` in a thread of an unpatched process.
"""

from __future__ import annotations

import gc
import logging
import socket
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import gevent
import gevent.event
import gevent.pool
from gevent.pywsgi import WSGIServer

from postal_tracking_plugin.config import Config
from postal_tracking_plugin.default_certificate import default_certificate_paths
from postal_tracking_plugin.errors import Error

from ._handler import AccessLog
from ._handler import TrackingHandler
from ._handler import tune_socket
from ._lookup import Lookup
from ._prefetch import Prefetcher
from ._sockets import ListenSpec
from ._sockets import ServerError
from ._sockets import bind
from ._sockets import listen_specs
from .app import create_app
from .app import tracking_state
from .proxy_protocol import read_header
from .tls import CertificateContexts
from .tls import run_every

log = logging.getLogger("postal_tracking_plugin.web")

#: How often certificates are re-read from the store (a change is served within this).
CERTIFICATE_REFRESH = 5.0
#: How often new links and messages are read into the lookup cache.
PREFETCH_EVERY = 1.0
#: Scheduled renewal: first run soon after start, then hourly.
RENEWAL_FIRST = 60.0
RENEWAL_EVERY = 3600.0


@dataclass
class Limits:
    """Protection against slow and abusive clients (seconds)."""

    idle_timeout: float = 15.0  # between keep-alive requests
    header_timeout: float = 10.0  # for the whole request line and headers
    handshake_timeout: float = 10.0  # TLS handshake, PROXY line
    io_timeout: float = 30.0  # request body, application and response, per request
    drain_timeout: float = 10.0  # requests in flight at SIGTERM


@dataclass
class Stats:
    """Counters, summarised in the error log at most once a minute."""

    tls_failures: int = 0
    proxy_failures: int = 0
    bad_requests: int = 0
    last_tls_error: str = ""
    _reported: dict[str, int] = field(default_factory=dict)

    def report(self) -> None:
        new = {
            "failed TLS handshakes": self.tls_failures,
            "connections without a valid PROXY line": self.proxy_failures,
            "malformed requests": self.bad_requests,
        }
        parts = []
        for name, total in new.items():
            delta = total - self._reported.get(name, 0)
            if delta:
                parts.append(f"{delta} {name}")
            self._reported[name] = total
        if parts:
            tail = f" (last TLS error: {self.last_tls_error})" if self.last_tls_error else ""
            log.info("in the last minute: %s%s", ", ".join(parts), tail)


# -- one worker --------------------------------------------------------------------


class _HandshakeTimeout(OSError):
    pass


class Listener(WSGIServer):
    """One listening socket: tunes each connection, reads PROXY, does TLS, then HTTP."""

    handler_class = TrackingHandler

    def __init__(self, sock: socket.socket, app: Any, worker: Worker, tls: bool) -> None:
        environ = {
            "wsgi.url_scheme": "https" if tls else "http",
            "SERVER_SOFTWARE": "postal-tracking",
        }
        super().__init__(sock, app, spawn=worker.pool, log=None, error_log=None, environ=environ)
        self.worker = worker
        self.tls = tls
        self.limits = worker.limits
        self.stats = worker.stats
        self.idle = worker.idle
        self.access_log = worker.access_log

    @property
    def draining(self) -> bool:
        return self.worker.draining

    def handle(self, sock: Any, address: Any) -> None:
        worker = self.worker
        self.access_log = worker.access_log
        tune_socket(sock)
        if worker.proxy_protocol:
            header = read_header(sock, self.limits.handshake_timeout)
            if not header:
                self.stats.proxy_failures += 1
                log.debug("closing %s: %s", address, header.error)
                return
            if header.address is not None:
                address = header.address
        if not self.tls:
            super().handle(sock, address)
            return
        assert worker.certificates is not None
        try:
            tls_sock = worker.certificates.default.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        except OSError as exc:
            self._tls_failed(exc, address)
            return
        try:
            with gevent.Timeout(self.limits.handshake_timeout, _HandshakeTimeout("timed out")):
                tls_sock.do_handshake()
        except OSError as exc:
            self._tls_failed(exc, address)
            tls_sock.close()
            return
        try:
            super().handle(tls_sock, address)
        finally:
            tls_sock.close()

    def _tls_failed(self, exc: BaseException, address: Any) -> None:
        stats = self.stats
        stats.tls_failures += 1
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        peer = address[0] if isinstance(address, tuple) else address
        stats.last_tls_error = f"{reason} from {peer}"
        if stats.tls_failures == 1:
            log.info(
                "TLS handshake failed: %s (further failures are counted once a minute)",
                stats.last_tls_error,
            )


def _open_access_log(config: Config) -> AccessLog | None:
    settings = config.tracking.log
    if settings.access_log == "off":
        return None
    if settings.access_log_path:
        stream = open(config.path(settings.access_log_path), "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    else:
        stream = sys.stderr
    return AccessLog(settings.access_log, stream)


class Worker:
    """Everything one process serves. Run it with :meth:`start` and :meth:`stop`.

    :param config: the configuration.
    :param store: the store (opened in this process: connections never cross a fork).
    :param sockets: listening sockets with whether each is TLS.
    :param recorder: the event recorder; by default an
        :class:`~postal_tracking_plugin.events.EventRecorder` made here.
    :param hook: the tracking-event hook handed to the recorder it makes.
    :param index: the worker's number; worker 0 runs the scheduled renewal.
    :param resumption: TLS session tickets (off only for the handshake benchmark).
    :param tls_context: the default TLS context, shared by the workers of one
        supervisor (see :class:`~.tls.CertificateContexts`); made here if not given.
    :param prefetch: follow the links and messages tables into the cache (:mod:`._prefetch`).
    """

    def __init__(
        self,
        config: Config,
        store: Any,
        sockets: list[tuple[socket.socket, bool]],
        *,
        recorder: Any = None,
        hook: Callable[[dict[str, Any]], None] | None = None,
        index: int = 0,
        limits: Limits | None = None,
        resumption: bool = True,
        tls_context: ssl.SSLContext | None = None,
        lookup: Lookup | None = None,
        prefetch: bool = True,
    ) -> None:
        self.config = config
        self.store = store
        self.index = index
        self.limits = limits or Limits()
        self.stats = Stats()
        self.draining = False
        self.idle: set[Any] = set()
        self.proxy_protocol = config.fast_server.proxy_protocol
        self.access_log = _open_access_log(config)
        self.pool = gevent.pool.Pool(config.tracking.max_connections)
        self.owns_recorder = recorder is None
        if recorder is None:
            from postal_tracking_plugin.events import EventRecorder

            recorder = EventRecorder(config, store, hook=hook)
        self.recorder = recorder
        self.certificates: CertificateContexts | None = None
        if any(tls for _, tls in sockets):
            self.certificates = CertificateContexts(
                store, default_certificate_paths(config), resumption=resumption, default=tls_context
            )
        self.lookup = lookup if lookup is not None else Lookup(store)
        self.prefetcher = (
            Prefetcher(self.lookup, pause=lambda: gevent.sleep(0)) if prefetch else None
        )
        self.app = create_app(config, store, recorder, lookup=self.lookup)
        self.listeners = [Listener(sock, self.app, self, tls) for sock, tls in sockets]
        self.certificate_refresh = CERTIFICATE_REFRESH
        self.freeze_gc = True  # a server process; tests in a shared process turn it off
        self._background: list[Any] = []
        self._stopped = gevent.event.Event()

    @property
    def addresses(self) -> list[tuple[Any, bool]]:
        return [(listener.address, listener.tls) for listener in self.listeners]

    def start(self) -> None:
        if self.owns_recorder:
            self.recorder.start()
        if self.certificates is not None:
            self.certificates.refresh()
            self._background.append(
                gevent.spawn(
                    run_every, self.certificate_refresh, self.certificates.refresh, gevent.sleep
                )
            )
        self._background.append(gevent.spawn(run_every, 60.0, self.stats.report, gevent.sleep))
        if self.prefetcher is not None:
            self._background.append(gevent.spawn(self._prefetch_loop))
        if self.index == 0:
            self._background.append(gevent.spawn(self._renewal_schedule))
        for listener in self.listeners:
            listener.start()

    def _prefetch_loop(self) -> None:
        assert self.prefetcher is not None
        first = self.prefetcher()
        # What start-up loaded lives as long as the process: keep it out of the
        # collector's full scans (100,000 entries cost ~10 ms pauses otherwise).
        if self.freeze_gc:
            gc.collect()
            gc.freeze()
        log.info("read %d recent links and messages into the lookup cache", first)
        while True:
            gevent.sleep(PREFETCH_EVERY)
            self.prefetcher()

    def _renewal_schedule(self) -> None:
        gevent.sleep(RENEWAL_FIRST)
        while True:
            run_scheduled_renewal(self.config)
            gevent.sleep(RENEWAL_EVERY)

    def reload(self, config: Config) -> None:
        """SIGHUP: new settings that need no new sockets, fresh caches and certificates."""
        self.config = config
        state = tracking_state(self.app)
        state.config = config
        from ._client import ClientAddress

        state.client.networks = ClientAddress(config.tracking.trusted_proxies).networks
        state.lookup.clear()
        self.proxy_protocol = config.fast_server.proxy_protocol
        old, self.access_log = self.access_log, _open_access_log(config)
        if old is not None:
            old.close()
        if self.certificates is not None:
            self.certificates.default_paths = default_certificate_paths(config)
            try:
                self.certificates.reload_default()
            except (OSError, Error) as exc:
                log.error("default certificate not reloaded: %s", exc)
            self.certificates.refresh()
        log.info("configuration and certificates reloaded")

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, finish requests in flight (bounded), flush events."""
        if self.draining:
            self._stopped.wait()
            return
        self.draining = True
        timeout = self.limits.drain_timeout if timeout is None else timeout
        for listener in self.listeners:
            listener.close()
        for greenlet in list(self.idle):  # kept-alive connections waiting for nothing
            greenlet.kill(block=False)
        self.pool.join(timeout=timeout)
        self.pool.kill(block=True, timeout=1)
        for greenlet in self._background:
            greenlet.kill(block=False)
        flushed = True
        if self.owns_recorder:
            try:
                flushed = bool(self.recorder.stop(timeout=5.0))
            except Exception:  # noqa: BLE001 - report, and still exit
                log.exception("events could not all be flushed")
                flushed = False
        log.info(
            "stopped; %s",
            "events flushed"
            if flushed
            else "some events stay in the spool and are written at the next start",
        )
        self.stats.report()
        if self.access_log is not None:
            self.access_log.close()
            self.access_log = None
        self._stopped.set()

    def wait(self) -> None:
        self._stopped.wait()


def run_scheduled_renewal(config: Config) -> None:
    """Call ``postal_tracking_plugin.certificates.run_scheduled_renewal(config)`` if it exists.

    It runs certbot as a child process and takes a store lock itself; it runs in
    a thread of gevent's pool so nothing it blocks on stalls the clicks.
    """
    try:
        from postal_tracking_plugin import certificates
    except ImportError:
        return
    renew = getattr(certificates, "run_scheduled_renewal", None)
    if renew is None:
        return
    try:
        gevent.get_hub().threadpool.spawn(renew, config).get()
    except Exception:  # noqa: BLE001 - renewal failure must not touch serving
        log.exception("scheduled certificate renewal failed")


__all__ = ["Limits", "ListenSpec", "Listener", "ServerError", "Worker", "bind", "listen_specs"]
