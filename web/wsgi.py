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

An entry point, like ``__main__.py``: it hands the installed plugins'
tracking-event hook (``postal_tracking_plugin.hooks``) to the event recorder,
which the rest of ``web`` never imports (tests/test_meta.py).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

_lock = threading.Lock()
_app: Flask | None = None


def build_app() -> Flask:
    """Load the configuration, open the store, make the app (with its event recorder)."""
    from functools import partial

    from postal_tracking_plugin.config import load_config
    from postal_tracking_plugin.config import resolve_path
    from postal_tracking_plugin.hooks import get_plugin_manager
    from postal_tracking_plugin.hooks import notify_tracking_event
    from postal_tracking_plugin.store import open_store

    from .app import create_app

    path, required = resolve_path(None, os.environ)
    config = load_config(path, required=required)
    store = open_store(config)
    from postal_tracking_plugin.events import EventRecorder

    recorder = EventRecorder(
        config, store, hook=partial(notify_tracking_event, get_plugin_manager())
    )
    recorder.start()
    return create_app(config, store, recorder)


def __getattr__(name: str) -> Flask:
    global _app
    if name not in ("app", "application"):
        raise AttributeError(name)
    with _lock:
        if _app is None:
            _app = build_app()
    return _app
