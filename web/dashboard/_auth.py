"""Logging in and out, sessions, CSRF tokens and the failed-login throttle.

The session cookie (Flask's signed cookie, HttpOnly, SameSite=Lax, Secure when
the request came over HTTPS) carries two random values: the session id, whose
SHA-256 is looked up in ``tracking_dashboard_sessions`` on every request (so
logging out, removing the account or changing its password ends the session
even for a copied cookie), and the CSRF token every form must send back.

The throttle counts failed logins per client address and per account in the
store, so every worker and host serving the dashboard shares the count: after
``tracking.dashboard.login_attempts`` failures within 15 minutes, either key is
refused until the oldest failure ages out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from pathlib import Path

from flask import Flask
from flask import request
from flask import session
from flask.sessions import SecureCookieSessionInterface

from postal_tracking_plugin.store import Store

THROTTLE_WINDOW = 900.0
CSRF_FIELD = "csrf_token"


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure exactly when the request came over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(request.is_secure) or super().get_cookie_secure(app)


class LoginThrottle:
    """Failed logins per key (``addr:...``, ``user:...``) within a sliding window.

    Kept in the store (``tracking_dashboard_login_failures``, keys as SHA-256),
    so every process serving the dashboard counts the same failures. Times are
    wall-clock Unix seconds: the processes share no monotonic clock.
    """

    def __init__(self, store: Store, limit: int, window: float = THROTTLE_WINDOW) -> None:
        self.store = store
        self.limit = limit
        self.window = window

    @staticmethod
    def _hashes(keys: list[str]) -> list[str]:
        return [hashlib.sha256(k.encode("utf-8", "surrogatepass")).hexdigest() for k in keys]

    def wait(self, keys: list[str], now: float | None = None) -> float:
        """Seconds until a login may be tried for all ``keys`` (0: now)."""
        now = time.time() if now is None else now
        rows = self.store.login_failures(self._hashes(keys), now - self.window)
        waits = [
            float(r["oldest"]) + self.window - now for r in rows if int(r["failures"]) >= self.limit
        ]
        return max(waits, default=0.0)

    def failed(self, keys: list[str], now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.store.add_login_failure(self._hashes(keys), now, now - self.window)

    def succeeded(self, keys: list[str]) -> None:
        self.store.clear_login_failures(self._hashes(keys))


def secret_key(data_dir: Path) -> bytes:
    """The key signing session cookies, made once under the data directory (mode 0600)."""
    path = data_dir / "dashboard-secret.key"
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    try:
        with path.open("xb") as f:
            path.chmod(0o600)
            f.write(key)
    except FileExistsError:  # another worker made it first
        return path.read_bytes().strip()
    return key


def session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def csrf_token() -> str:
    """This session's CSRF token (made on first use), for the templates."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return str(token)


def csrf_ok() -> bool:
    """Whether the posted form carries this session's CSRF token."""
    expected = session.get("csrf")
    sent = request.form.get(CSRF_FIELD, "")
    return bool(expected) and hmac.compare_digest(str(expected), sent)


def new_session_id() -> str:
    """Start a fresh cookie session (a new id and a new CSRF token); returns the id."""
    session.clear()
    session_id = secrets.token_urlsafe(32)
    session["sid"] = session_id
    session["csrf"] = secrets.token_urlsafe(32)
    session.permanent = True
    return session_id
