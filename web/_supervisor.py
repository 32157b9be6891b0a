"""The fast server's process tree: bind, fork the workers, supervise them.

:func:`serve` binds every socket once per worker (``SO_REUSEPORT``), forks the
workers (or serves in this process when there is one), forwards SIGTERM and
SIGHUP to them and replaces a worker that dies. Must run in a gevent-patched
process: ``python -m postal_tracking_plugin.web`` patches first thing.

The plugins' tracking-event hook is handed in by the process's entry point
(``web/__main__.py``): this module, like the rest of ``web``'s library, does not
know ``postal_tracking_plugin.hooks``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent
import gevent.event

from postal_tracking_plugin.config import Config
from postal_tracking_plugin.default_certificate import default_certificate_paths
from postal_tracking_plugin.errors import Error

from ._sockets import bind
from ._sockets import listen_specs
from .server import Worker

if TYPE_CHECKING:
    from postal_tracking_plugin.events import TrackingHook
    from postal_tracking_plugin.store import Store

#: Seconds between a worker's checks that its supervisor is still there.
SUPERVISOR_CHECK = 1.0

log = logging.getLogger("postal_tracking_plugin.web")


def default_workers(config: Config) -> int:
    return config.tracking.workers or os.cpu_count() or 1


def serve(
    config: Config,
    *,
    workers: int | None = None,
    hook: TrackingHook | None = None,
    resumption: bool = True,
) -> int:
    """Bind, fork ``workers`` processes (one: serve in this one), run until SIGTERM.

    Must run in a gevent-patched process (``python -m postal_tracking_plugin.web``).

    :param hook: the tracking-event hook each worker's event recorder calls (the
        entry point passes the installed plugins'); None: no hook.
    """
    from postal_tracking_plugin.config import load_config
    from postal_tracking_plugin.store import open_store

    from .tls import context_from_files

    # SIGHUP ends a process by default: until a process has its handler (the
    # workers install theirs once they serve), a reload request is ignored.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    count = workers or default_workers(config)
    specs = listen_specs(config)
    # Made once, here, so that every worker (and a replacement of one) seals
    # session tickets with the same keys; and a bad certificate fails now, in one line.
    tls_context = context_from_files(*default_certificate_paths(config), resumption=resumption)
    sets = [[(bind(s, reuse_port=count > 1), s.tls) for s in specs] for _ in range(count)]
    shown = ", ".join(
        f"{'https' if s.tls else 'http'}://{_host(s.address)}:{s.port}" for s in specs
    )
    log.info("fast server listening on %s with %d worker(s)", shown, count)

    def reload_config() -> Config | None:
        if not config.source:
            return config
        try:
            return load_config(config.source)
        except Error as exc:
            log.error("configuration not reloaded: %s", exc)
            return None

    if count == 1:
        return _run_worker(
            config, sets[0], 0, hook, reload_config, open_store, resumption, tls_context
        )

    children: dict[int, int] = {}
    stopping = gevent.event.Event()
    handlers: list[gevent.signal_handler[[]]] = []

    supervisor = os.getpid()  # read here: a child asking getppid() could already see init

    def spawn_child(index: int) -> None:
        pid = gevent.fork()
        if pid == 0:
            for handler in handlers:  # the parent's, inherited by a replacement worker
                handler.cancel()
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            for i, other in enumerate(sets):
                if i != index:
                    for sock, _ in other:
                        sock.close()
            code = 1
            try:
                code = _run_worker(
                    config,
                    sets[index],
                    index,
                    hook,
                    reload_config,
                    open_store,
                    resumption,
                    tls_context,
                    supervisor=supervisor,
                )
            except BaseException:  # a child must never return into the parent's code
                log.exception("worker %d failed", index)
            finally:
                os._exit(code)
        children[pid] = index

    for i in range(count):
        spawn_child(i)

    def forward(signum: int) -> None:
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def on_term() -> None:
        stopping.set()
        forward(signal.SIGTERM)

    handlers.append(gevent.signal_handler(signal.SIGTERM, on_term))
    handlers.append(gevent.signal_handler(signal.SIGINT, on_term))

    def on_hup() -> None:
        # The workers reload and report; here only what a replacement worker
        # starts from is brought up to date (a certificate that does not load
        # is left to the workers to report).
        nonlocal config
        new = reload_config()
        if new is not None:
            config = new
            with contextlib.suppress(OSError, ssl.SSLError):
                tls_context.load_cert_chain(*map(str, default_certificate_paths(config)))
        forward(signal.SIGHUP)

    handlers.append(gevent.signal_handler(signal.SIGHUP, on_hup))
    for listening in sets:
        for sock, _ in listening:
            sock.close()  # the children hold their own
    status = 0
    while children:
        try:
            pid, code = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        index = children.pop(pid, None)
        if index is None:
            continue
        if not stopping.is_set():
            log.error(
                "worker %d (pid %d) exited with status %d; starting another", index, pid, code
            )
            # The listening sockets were closed here: a replacement binds its own.
            sets[index] = [(bind(s, reuse_port=True), s.tls) for s in specs]
            gevent.sleep(0.5)
            spawn_child(index)
            for sock, _ in sets[index]:
                sock.close()
        elif code:
            status = 1
    return status


def _run_worker(
    config: Config,
    sockets: list[tuple[socket.socket, bool]],
    index: int,
    hook: TrackingHook | None,
    reload_config: Callable[[], Config | None],
    open_store: Callable[[Config], Store],
    resumption: bool = True,
    tls_context: ssl.SSLContext | None = None,
    supervisor: int | None = None,
) -> int:
    """Serve until stopped; a forked worker also stops when its ``supervisor`` is gone.

    Without that, a supervisor killed with SIGKILL (the OOM killer, ``kill -9``)
    left its workers serving for ever beside the next supervisor's.
    """
    store = open_store(config)
    worker = Worker(
        config,
        store,
        sockets,
        hook=hook,
        index=index,
        resumption=resumption,
        tls_context=tls_context,
    )

    def watch_supervisor() -> None:
        while os.getppid() == supervisor:
            gevent.sleep(SUPERVISOR_CHECK)
        log.warning("the supervisor (pid %s) is gone: worker %d stops", supervisor, index)
        worker.stop()

    def on_hup() -> None:
        new = reload_config()
        if new is not None:
            worker.reload(new)

    gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(worker.stop))
    gevent.signal_handler(signal.SIGINT, lambda: gevent.spawn(worker.stop))
    gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(on_hup))
    worker.start()
    log.info("worker %d serving (pid %d)", index, os.getpid())
    if supervisor is not None:
        gevent.spawn(watch_supervisor)
    worker.wait()
    store.close()
    return 0


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address
