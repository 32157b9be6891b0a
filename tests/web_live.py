"""Helpers for the fast server tests: a real worker on real sockets, in a thread.

The worker runs on its own gevent hub in a background thread of the (unpatched)
test process, on ephemeral ports of 127.0.0.1 or ::1, so tests can read its
recorder and stats; the tests of the command itself run it as a subprocess.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.client
import socket
import ssl
import threading
import time
import warnings
from typing import Any

import trustme
from cryptography import x509

from postal_tracking_plugin.config import Config
from postal_tracking_plugin.default_certificate import ensure_default_certificate
from postal_tracking_plugin.store import Link
from postal_tracking_plugin.store import Store
from postal_tracking_plugin.store import random_token


def with_settings(config: Config, *, tracking: dict | None = None, **fast_server: Any) -> Config:
    """``config`` with some ``fast_server`` / ``tracking`` values replaced."""
    fs = dataclasses.replace(config.fast_server, **fast_server)
    tr = dataclasses.replace(config.tracking, **(tracking or {}))
    return dataclasses.replace(config, fast_server=fs, tracking=tr)


class LiveServer:
    """A :class:`~postal_tracking_plugin.web.server.Worker` with an HTTP and an HTTPS listener."""

    def __init__(
        self,
        config: Config,
        store: Any,
        *,
        host: str = "127.0.0.1",
        limits: Any = None,
        prefetch: bool = True,
    ) -> None:
        self.prefetch = prefetch
        self.config = config
        self.store = store
        self.host = host
        self.limits = limits
        self.worker: Any = None
        self.error: BaseException | None = None
        self._hub: Any = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import gevent

        from postal_tracking_plugin.web.server import ListenSpec
        from postal_tracking_plugin.web.server import Worker
        from postal_tracking_plugin.web.server import bind

        try:
            self._hub = gevent.get_hub()
            sockets = [
                (bind(ListenSpec(self.host, 0, False), reuse_port=False), False),
                (bind(ListenSpec(self.host, 0, True), reuse_port=False), True),
            ]
            self.worker = Worker(
                self.config, self.store, sockets, limits=self.limits, prefetch=self.prefetch
            )
            self.worker.certificate_refresh = 1.0  # the production interval is 5 s
            self.worker.freeze_gc = False  # not in the test process
            self.worker.start()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        self.worker.wait()

    def start(self) -> LiveServer:
        ensure_default_certificate(self.config)
        self._thread.start()
        self._ready.wait(30)
        if self.error is not None:
            raise self.error
        return self

    @property
    def http_port(self) -> int:
        return self.worker.listeners[0].address[1]

    @property
    def https_port(self) -> int:
        return self.worker.listeners[1].address[1]

    def in_hub(self, func: Any) -> None:
        """Run ``func`` in the server's hub, from the test thread."""
        import gevent

        self._hub.loop.run_callback_threadsafe(lambda: gevent.spawn(func))

    def stop(self) -> None:
        if self.worker is not None and self._thread.is_alive():
            self.in_hub(self.worker.stop)
            self._thread.join(30)

    def flush(self) -> None:
        assert self.worker.recorder.flush(10.0)

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[http.client.HTTPResponse, bytes]:
        conn = http.client.HTTPConnection(self.host, self.http_port, timeout=10)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response, response.read()
        finally:
            conn.close()


def add_message(store: Any, server_id: int, urls: list[str]) -> tuple[str, list[str]]:
    """Store a message and its links; returns its token and the link tokens."""
    token = random_token()
    links = [Link(random_token(), url) for url in urls]
    store.save_tracked_message(
        server_id,
        {
            "token": token,
            "scope": "outgoing",
            "rcpt_to": "reader@example.net",
            "mail_from": "news@example.com",
            "subject": "Hello",
            "timestamp": time.time(),
            "tracked_links": len(links),
            "tracked_images": 1,
            "parsed": 1,
        },
        links,
    )
    return token, [link.token for link in links]


def rows(store: Any, server_id: int, sql: str, params: tuple = ()) -> list[dict]:
    with store.messages(server_id, readonly=True) as db:
        return db.query(sql, params)


def raw_exchange(host: str, port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes; returns what came back."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def store_certificate(store: Store, ca: trustme.CA, name: str, key_type: trustme.KeyType) -> None:
    """Save a certificate for ``name`` issued by ``ca`` in ``track_certificates``."""
    issued = ca.issue_cert(name, key_type=key_type)
    chain = [blob.bytes().decode() for blob in issued.cert_chain_pems]
    store.save_certificate(
        name,
        certificate=chain[0],
        intermediaries="".join(chain[1:]) or None,
        key=issued.private_key_pem.bytes().decode(),
        expires_at=dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
        + dt.timedelta(days=30),
    )


def names_of(cert: x509.Certificate) -> list[str]:
    """The DNS names a certificate is for (its subject when it has no SAN)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return [a.value for a in cert.subject]  # type: ignore[misc]
    return san.value.get_values_for_type(x509.DNSName)


def tls_client_context() -> ssl.SSLContext:
    """A TLS client that accepts any certificate: the tests check the names themselves."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def peer_certificate(port: int, server_name: str | None, **context: Any) -> x509.Certificate:
    """The certificate the server on 127.0.0.1:``port`` sends in a full handshake."""
    ctx = tls_client_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # setting TLS 1.1 on purpose
        for key, value in context.items():
            setattr(ctx, key, value)
    if context:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer the old protocol
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)
