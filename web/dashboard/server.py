"""Serve the dashboard with gevent's WSGIServer on ``tracking.dashboard.listen``.

Run through ``postal-tracking dashboard``, which execs ``python -m
postal_tracking_plugin.web.dashboard`` so that gevent patches a fresh
interpreter first (PyMySQL's sockets then yield to other requests).
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from postal_tracking_plugin.config import Config

from .listen import dashboard_address

log = logging.getLogger("postal_tracking_plugin.dashboard")


def serve(config: Config, listen: str | None = None) -> int:
    import gevent
    from gevent.pywsgi import WSGIServer

    from postal_tracking_plugin.errors import ConfigError
    from postal_tracking_plugin.store import open_store

    from .app import create_app

    host, port = dashboard_address(config, listen)
    store = open_store(config)
    store.create_schema()
    app = create_app(config, store)
    server: Any = WSGIServer((host, port), app, log=None, error_log=log)
    try:
        server.init_socket()
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): stop the program using it "
            f"or pass another address with --listen HOST:PORT"
        ) from None
    gevent.signal_handler(signal.SIGTERM, server.stop)
    gevent.signal_handler(signal.SIGINT, server.stop)
    shown = f"[{host}]" if ":" in host else host
    print(f"postal-tracking dashboard: listening on http://{shown}:{port}/", flush=True)
    server.serve_forever()
    store.close()
    return 0
