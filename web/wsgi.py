"""The tracking app for any WSGI server, e.g. gunicorn with gevent workers::

    POSTAL_TRACKING_CONFIG=/etc/postal/postal.yml \\
        gunicorn -k gevent -w 2 -b 127.0.0.1:5010 'postal_tracking_plugin.web.wsgi:app'

The app is built on first access of ``app`` (gunicorn's ``getattr`` after its
worker has patched with gevent), from ``$POSTAL_TRACKING_CONFIG`` or
``./postal.yml``, so importing this module does nothing. Under gunicorn the
fast server's own listener features (per-SNI certificates from the store, the
PROXY protocol, its connection limits) are gunicorn's or the front proxy's job;
set ``tracking.trusted_proxies`` to the proxy's address so client addresses
come from ``X-Forwarded-For``.
"""

from __future__ import annotations

import os
import threading
from typing import Any

_lock = threading.Lock()
_app: Any = None


def build_app() -> Any:
    """Load the configuration, open the store, make the app (with its event recorder)."""
    from postal_tracking_plugin.config import load_config
    from postal_tracking_plugin.config import resolve_path
    from postal_tracking_plugin.store import open_store

    from ._supervisor import plugin_hook
    from .app import create_app

    path, required = resolve_path(None, os.environ)
    config = load_config(path, required=required)
    store = open_store(config)
    from postal_tracking_plugin.events import EventRecorder

    recorder = EventRecorder(config, store, hook=plugin_hook())
    recorder.start()
    return create_app(config, store, recorder)


def __getattr__(name: str) -> Any:
    global _app
    if name not in ("app", "application"):
        raise AttributeError(name)
    with _lock:
        if _app is None:
            _app = build_app()
    return _app
