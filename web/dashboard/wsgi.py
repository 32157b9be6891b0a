"""The dashboard for any WSGI server, e.g. gunicorn::

    POSTAL_TRACKING_CONFIG=/etc/postal/postal.yml \\
        gunicorn -k gevent -w 2 -b 127.0.0.1:5020 'postal_tracking_plugin.web.dashboard.wsgi:app'

Built on first access of ``app`` from ``$POSTAL_TRACKING_CONFIG`` or
``./postal.yml``; importing this module does nothing. Bind it to a management
address, never to the tracking IP. The session cookie is marked Secure when
the request arrives over HTTPS (gunicorn's ``--certfile``).
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
    from postal_tracking_plugin.config import load_config
    from postal_tracking_plugin.config import resolve_path
    from postal_tracking_plugin.store import open_store

    from .app import create_app

    path, required = resolve_path(None, os.environ)
    config = load_config(path, required=required)
    store = open_store(config)
    store.create_schema()
    return create_app(config, store)


def __getattr__(name: str) -> Flask:
    global _app
    if name not in ("app", "application"):
        raise AttributeError(name)
    with _lock:
        if _app is None:
            _app = build_app()
    return _app
