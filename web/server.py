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

import errno
import gc
import itertools
import logging
import resource
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any
from typing import TextIO

import gevent
import gevent.event
import gevent.pool
from gevent.pywsgi import WSGIServer

from postal_tracking_plugin.config import Config
from postal_tracking_plugin.default_certificate import default_certificate_paths
from postal_tracking_plugin.errors import Error

from ._access_log import AccessLog
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

if TYPE_CHECKING:
    from flask import Flask

    from postal_tracking_plugin.events import EventRecorder
    from postal_tracking_plugin.events import TrackingHook
    from postal_tracking_plugin.store import Store

    from ._routes import Recorder

log = logging.getLogger("postal_tracking_plugin.web")

#: How often certificates are re-read from the store (a change is served within this).
CERTIFICATE_REFRESH = 5.0
#: How often new links and messages are read into the lookup cache.
PREFETCH_EVERY = 1.0
#: Scheduled renewal: first run soon after start, then hourly.
RENEWAL_FIRST = 60.0
RENEWAL_EVERY = 3600.0
#: File descriptors a worker needs besides its connections (listeners, store,
#: spool, logs, certificates), kept free when sizing ``max_connections``.
SPARE_FILES = 64
#: After ``EMFILE`` on accept, accepting pauses this long (the listening socket
#: stays readable: retrying at once would spin).
EMFILE_PAUSE = 0.1


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
    idle_closed: int = 0
    over_address_cap: int = 0
    out_of_files: int = 0
    last_tls_error: str = ""
    _reported: dict[str, int] = field(default_factory=dict)

    def report(self) -> None:
        new = {
            "failed TLS handshakes": self.tls_failures,
            "connections without a valid PROXY line": self.proxy_failures,
            "malformed requests": self.bad_requests,
            "idle keep-alive connections closed to make room": self.idle_closed,
            "connections refused over tracking.max_connections_per_address": self.over_address_cap,
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


def fit_open_files(wanted: int, *, say: bool) -> int:
    """``max_connections`` the open-file limit allows: raise the soft limit, or lower the cap.

    One connection is one file descriptor; :data:`SPARE_FILES` more are kept for
    the rest. Without this, at the limit new clients time out in the backlog and
    every ``accept`` logs an ``EMFILE`` traceback. ``say``: log a lowered cap (once,
    from one worker).
    """
    needed = wanted + SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted
    fitted = max(1, soft - SPARE_FILES)
    if say:
        log.warning(
            "tracking.max_connections is %d but the open-file limit is %d: serving at most %d "
            "connections per worker; raise the limit (ulimit -n, systemd LimitNOFILE=) or lower "
            "tracking.max_connections",
            wanted,
            soft,
            fitted,
        )
    return fitted


def _without_scope(address: Any) -> Any:
    """The peer address without an IPv6 zone (``fe80::1%eth0``): never a client's address."""
    if isinstance(address, tuple) and "%" in str(address[0]):
        return (str(address[0]).split("%", 1)[0], *address[1:])
    return address


#: gevent server names the :class:`Listener` relies on (see ``_handler.GEVENT_HANDLER_NAMES``):
#: attributes and methods it uses, and methods it overrides.
GEVENT_SERVER_NAMES = ("closed", "loop", "start_accepting", "stop_accepting")
GEVENT_SERVER_OVERRIDES = ("close", "do_read", "handle", "handler_class")


class Listener(WSGIServer):
    """One listening socket: tunes each connection, reads PROXY, does TLS, then HTTP."""

    handler_class = TrackingHandler

    def __init__(self, sock: socket.socket, app: Flask, worker: Worker, tls: bool) -> None:
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
        self.kept_alive = worker.kept_alive
        self.access_log = worker.access_log
        self._emfile_timer: Any = None
        self._emfile_logged = 0.0

    @property
    def draining(self) -> bool:
        return self.worker.draining

    def do_read(self) -> Any:
        """gevent's accept, with ``EMFILE``/``ENFILE`` handled: logged once a minute, not per try.

        Out of file descriptors, accepting pauses (:data:`EMFILE_PAUSE`) and the
        oldest idle keep-alive connections are closed to give some back.
        """
        try:
            return super().do_read()
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
        stats = self.stats
        stats.out_of_files += 1
        now = time.monotonic()
        if now - self._emfile_logged >= 60.0:
            self._emfile_logged = now
            log.error(
                "out of file descriptors accepting connections (%d times since start): raise the "
                "open-file limit or lower tracking.max_connections",
                stats.out_of_files,
            )
        self.worker.close_idle(max(1, self.worker.reserve))
        self.stop_accepting()
        if self._emfile_timer is None:
            self._emfile_timer = self.loop.timer(EMFILE_PAUSE)
        self._emfile_timer.start(self._resume_accepting)
        return None

    def _resume_accepting(self) -> None:
        if not self.closed:
            self.start_accepting()

    def close(self) -> None:
        if self._emfile_timer is not None:
            self._emfile_timer.close()
        super().close()

    def handle(self, sock: Any, address: Any) -> None:
        worker = self.worker
        self.access_log = worker.access_log
        tune_socket(sock)
        worker.make_room()
        if worker.proxy_protocol:
            header = read_header(sock, self.limits.handshake_timeout)
            if not header:
                self.stats.proxy_failures += 1
                log.debug("closing %s: %s", address, header.error)
                sock.close()
                return
            if header.address is not None:
                address = header.address
        address = _without_scope(address)
        cap = worker.per_address_cap
        if not cap:
            self._serve(sock, address)
            return
        ip = address[0] if isinstance(address, tuple) else address
        counts = worker.per_address
        if counts.get(ip, 0) >= cap:
            self.stats.over_address_cap += 1
            sock.close()
            return
        counts[ip] = counts.get(ip, 0) + 1
        try:
            self._serve(sock, address)
        finally:
            left = counts[ip] - 1
            if left:
                counts[ip] = left
            else:
                del counts[ip]

    def _serve(self, sock: Any, address: Any) -> None:
        """TLS if this listener does it, then HTTP."""
        worker = self.worker
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
    stream: TextIO
    if settings.access_log_path:
        stream = open(config.path(settings.access_log_path), "a", buffering=1, encoding="utf-8")
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
        store: Store,
        sockets: list[tuple[socket.socket, bool]],
        *,
        recorder: Recorder | None = None,
        hook: TrackingHook | None = None,
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
        #: Greenlets waiting for a request, and those of them kept alive after one
        #: (oldest first: :meth:`make_room` closes those).
        self.idle: dict[Any, None] = {}
        self.kept_alive: dict[Any, None] = {}
        self.proxy_protocol = config.fast_server.proxy_protocol
        self.access_log = _open_access_log(config)
        self.max_connections = fit_open_files(config.tracking.max_connections, say=index == 0)
        #: Free connection slots below which idle keep-alive connections are closed.
        self.reserve = max(1, self.max_connections // 100)
        self.pool = gevent.pool.Pool(self.max_connections)
        self.per_address_cap = config.tracking.max_connections_per_address
        self.per_address: dict[str, int] = {}
        self.owns_recorder = recorder is None
        #: The recorder made here (started and stopped with the worker), if none was given.
        self._own_recorder: EventRecorder | None = None
        if recorder is None:
            from postal_tracking_plugin.events import EventRecorder

            recorder = self._own_recorder = EventRecorder(config, store, hook=hook)
        self.recorder: Recorder = recorder
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

    def make_room(self) -> None:
        """Near ``max_connections``, close the longest-idle keep-alive connections.

        Called as each connection starts (it holds a slot already), so new
        clients never wait in the backlog behind connections that wait for nothing.
        """
        free = self.pool.free_count()
        if free < self.reserve:
            self.close_idle(self.reserve - free)

    def close_idle(self, count: int) -> None:
        """Close up to ``count`` keep-alive connections waiting for a request, oldest first."""
        for greenlet in list(itertools.islice(self.kept_alive, count)):
            del self.kept_alive[greenlet]
            greenlet.kill(block=False)
            self.stats.idle_closed += 1

    @property
    def addresses(self) -> list[tuple[Any, bool]]:
        return [(listener.address, listener.tls) for listener in self.listeners]

    def start(self) -> None:
        if self._own_recorder is not None:
            self._own_recorder.start()
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
            if self.draining:
                # SIGTERM while starting (the certificate refresh and each listener's
                # start may yield to its handler): stop() closed the listeners, and a
                # closed gevent server cannot start. The worker exits as stopped.
                break
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
        self.per_address_cap = config.tracking.max_connections_per_address
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
        if self._own_recorder is not None:
            try:
                flushed = self._own_recorder.stop(timeout=5.0)
            except Exception:  # report, and still exit
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
    except Exception:  # renewal failure must not touch serving
        log.exception("scheduled certificate renewal failed")


__all__ = ["Limits", "ListenSpec", "Listener", "ServerError", "Worker", "bind", "listen_specs"]
