"""The dashboard's application factory: ``create_app(config, store)``.

A Flask app of its own, apart from the tracking app: it is served on
``tracking.dashboard.listen`` by ``postal-tracking dashboard`` (or by gunicorn
through :mod:`.wsgi`), never on the fast server's sockets. Every page but the
login form needs a logged-in account (``postal-tracking users add``); every
POST must carry the session's CSRF token or is refused with 400 before any
view runs.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask
from flask import abort
from flask import g
from flask import redirect
from flask import request
from flask import session
from flask import url_for
from flask.typing import ResponseReturnValue
from jinja2 import DictLoader
from markupsafe import Markup
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Response

from postal_tracking_plugin.config import Config
from postal_tracking_plugin.store import Store

from . import _auth
from ._templates import TEMPLATES
from ._views import bp

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment

EXTENSION = "postal_tracking_dashboard"


@dataclass
class DashboardState:
    """What the views share, in ``app.extensions["postal_tracking_dashboard"]``."""

    config: Config
    store: Store
    throttle: _auth.LoginThrottle


def state() -> DashboardState:
    from flask import current_app

    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]


def create_app(config: Config, store: Store, *, secret_key: bytes | None = None) -> Flask:
    """Build the dashboard.

    :param config: the loaded ``postal.yml``.
    :param store: the :class:`~postal_tracking_plugin.store.Store` to read and change.
    :param secret_key: signs the session cookie; by default read from (or made
        in) ``<data_dir>/dashboard-secret.key``, so every worker shares it.
    """
    app = Flask(__name__)
    app.session_interface = _auth.SessionInterface()
    app.config.update(
        SECRET_KEY=secret_key or _auth.secret_key(config.data_dir),
        SESSION_COOKIE_NAME="postal_tracking_dashboard",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=_dt.timedelta(hours=config.tracking.dashboard.session_hours),
        MAX_CONTENT_LENGTH=1024 * 1024,
    )
    app.jinja_loader = DictLoader(TEMPLATES)
    app.extensions[EXTENSION] = DashboardState(
        config=config,
        store=store,
        throttle=_auth.LoginThrottle(store, config.tracking.dashboard.login_attempts),
    )
    app.register_blueprint(bp)
    if config.tracking.dashboard.trusted_proxies:
        app.wsgi_app = FromTrustedProxy(  # type: ignore[method-assign]
            app.wsgi_app, config.tracking.dashboard.trusted_proxies
        )
    app.before_request(_guard)
    app.context_processor(
        lambda: {
            "csrf_field": lambda: Markup(
                f'<input type="hidden" name="{_auth.CSRF_FIELD}" value="{_auth.csrf_token()}">'
            ),
            "user": g.get("user"),
        }
    )

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
            "form-action 'self'; frame-ancestors 'none'",
        )
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app


class FromTrustedProxy:
    """Werkzeug's ``ProxyFix`` (one proxy: ``X-Forwarded-For``, ``-Proto``, ``-Host``,
    ``-Port``, ``-Prefix``), applied only to requests whose peer is a trusted proxy.

    ``ProxyFix`` alone believes whoever sends the headers: a client reaching
    the dashboard directly could claim HTTPS or another address (and dodge the
    login throttle). Here the headers of anyone else are ignored.
    """

    def __init__(self, app: WSGIApplication, networks: Iterable[str]) -> None:
        self.app = app
        self.fixed = ProxyFix(app, x_for=1, x_proto=1, x_host=1, x_port=1, x_prefix=1)
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            peer = ipaddress.ip_address(environ.get("REMOTE_ADDR") or "")
        except ValueError:
            return self.app(environ, start_response)
        if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped
        if any(peer in n for n in self.networks):
            return self.fixed(environ, start_response)
        return self.app(environ, start_response)


_OPEN = {"dashboard.login"}


def _guard() -> ResponseReturnValue | None:
    """CSRF for every POST, then the login check for every page but the login form."""
    if request.method == "POST" and not _auth.csrf_ok():
        abort(400, "The form's CSRF token is missing or wrong: reload the page and try again.")
    g.user = None
    sid = session.get("sid")
    if sid:
        g.user = state().store.dashboard_session_user(_auth.session_hash(sid))
        if g.user is None:
            session.pop("sid", None)
    if g.user is None and request.endpoint not in _OPEN:
        return redirect(url_for("dashboard.login", next=request.full_path))
    return None
