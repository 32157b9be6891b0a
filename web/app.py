"""The tracking app: an application factory, usable under any WSGI server.

``create_app(config, store)`` builds the Flask app that answers Postal's
tracking URLs. The two hot routes (clicks and opens) are answered by a lean
WSGI layer installed as ``app.wsgi_app`` (see :mod:`._routes`); the rest are
ordinary Flask views: the HTTP-01 challenge answer, a health check for load
balancers, and Postal's ``200 Hello.`` for anything else.

Nothing here starts a server or patches anything: :mod:`.server` serves the app
with gevent, ``web/wsgi.py`` hands it to gunicorn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import cast

from flask import Flask
from flask import Response
from flask import current_app
from flask import request

from postal_tracking_plugin.config import Config
from postal_tracking_plugin.errors import StoreError

from ._client import ClientAddress
from ._lookup import Lookup
from ._routes import CLIENT_KEY
from ._routes import HotRoutes
from ._routes import Recorder

if TYPE_CHECKING:
    from postal_tracking_plugin.events import EventRecorder
    from postal_tracking_plugin.store import Store

EXTENSION = "postal_tracking"

log = logging.getLogger(__name__)


@dataclass
class TrackingState:
    """What the views share, kept in ``app.extensions["postal_tracking"]``."""

    config: Config
    store: Store
    lookup: Lookup
    recorder: Recorder | None
    client: ClientAddress
    owns_recorder: bool = False


def create_app(
    config: Config,
    store: Store,
    recorder: Recorder | None = None,
    *,
    lookup: Lookup | None = None,
) -> Flask:
    """Build the tracking app.

    :param config: the loaded ``postal.yml``.
    :param store: the :class:`~postal_tracking_plugin.store.Store` links are read from.
    :param recorder: where clicks and opens go (any :class:`~._routes.Recorder`); by default an
        :class:`~postal_tracking_plugin.events.EventRecorder` is made and started
        here (stop it with :func:`close_app`).
    :param lookup: the link cache; by default a new one in front of ``store``.
    """
    owns = False
    if recorder is None:
        from postal_tracking_plugin.events import EventRecorder

        recorder = EventRecorder(config, store)
        recorder.start()
        owns = True
    app = Flask(__name__)
    state = TrackingState(
        config=config,
        store=store,
        lookup=lookup if lookup is not None else Lookup(store),
        recorder=recorder,
        client=ClientAddress(config.tracking.trusted_proxies),
        owns_recorder=owns,
    )
    app.extensions[EXTENSION] = state
    app.add_url_rule(
        "/.well-known/acme-challenge/<path:token>",
        "acme_challenge",
        acme_challenge,
        methods=["GET", "HEAD"],
    )
    app.add_url_rule("/health", "health", health, methods=["GET", "HEAD"])
    app.add_url_rule("/", "hello", hello, defaults={"path": ""}, methods=_ANY)
    app.add_url_rule("/<path:path>", "hello", hello, methods=_ANY)
    app.after_request(_no_store_on_errors)
    app.wsgi_app = HotRoutes(app.wsgi_app, state.lookup, recorder, state.client)  # type: ignore[method-assign]
    return app


def close_app(app: Flask, timeout: float = 5.0) -> None:
    """Flush and stop the recorder if :func:`create_app` made it."""
    state = tracking_state(app)
    if state.owns_recorder:  # then create_app made it: an EventRecorder
        cast("EventRecorder", state.recorder).stop(timeout=timeout)


def tracking_state(app: Flask) -> TrackingState:
    state: TrackingState = app.extensions[EXTENSION]
    return state


_ANY = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


def _state() -> TrackingState:
    state: TrackingState = current_app.extensions[EXTENSION]
    return state


def _text(body: str, status: int = 200) -> Response:
    response = Response(body, status=status, content_type="text/plain; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    return response


def request_host() -> str:
    """The Host header without its port, lower case (IPv6 literals keep their brackets)."""
    host = (request.host or "").strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


def acme_challenge(token: str) -> Response:
    """The HTTP-01 answer stored for this host, so whichever node the CA reaches can answer."""
    request.environ[CLIENT_KEY] = _state().client(request.environ)
    try:
        certificate = _state().store.get_certificate(request_host())
    except StoreError:
        return _text("The store is unavailable.\n", 503)
    path = request.path
    if (
        certificate is not None
        and certificate.verification_path
        and certificate.verification_string
        and certificate.verification_path in (path, path.lstrip("/"))
    ):
        return _text(certificate.verification_string)
    return _text("Not found.\n", 404)


def health() -> Response:
    """For load balancers: ``ok`` (200) when the store answers, ``unavailable`` (503) when not.

    The reason goes to the log only: it names the database user, host and port.
    """
    try:
        _state().store.ping()
    except StoreError as exc:
        log.warning("health check: the store is unavailable: %s", exc)
        return _text("unavailable\n", 503)
    return _text("ok\n")


def _no_store_on_errors(response: Response) -> Response:
    """Every error page, Flask's own 404 and 405 included, is not to be cached."""
    if response.status_code >= 400 and "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-store"
    return response


def hello(path: str) -> Response:
    """Anything that is not a tracking URL, as Postal answers it."""
    request.environ[CLIENT_KEY] = _state().client(request.environ)
    return _text("Hello.")
