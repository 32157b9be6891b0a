"""TLS for the HTTPS listeners: one SSL context per tracking domain, chosen by SNI.

Every tracking domain's certificate and key live in the store
(``track_certificates``), so all fast servers of a cluster serve the same ones.
:class:`CertificateContexts` builds a context per domain name at start, and a
refresher (:meth:`CertificateContexts.refresh`, called every few seconds by the
server) compares each row's ``updated_at`` with what it loaded, so a certificate
issued or renewed while the server runs is served within seconds, with no
restart (Postal's contexts lived for a day). The SNI callback only reads a dict:
it never waits on the store in the middle of a handshake.

No SNI, or a name without a certificate, gets the default certificate (the
configured pair, else the self-signed one ``init`` made). TLS 1.2 and 1.3 only,
forward-secret AEAD ciphers; ECDSA and RSA keys both work.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Protocol

from postal_tracking_plugin.errors import StoreError
from postal_tracking_plugin.errors import TlsError as TlsError

if TYPE_CHECKING:
    from postal_tracking_plugin.store import Certificate

log = logging.getLogger(__name__)

#: TLS 1.2 suites: ECDHE key exchange with AES-GCM or ChaCha20 (TLS 1.3 has its own, all modern).
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!MD5:!DSS"


def _context_class() -> type[ssl.SSLContext]:
    # gevent's SSLContext makes cooperative sockets even when ssl is not
    # monkey-patched (tests run the server in a thread without patching).
    try:
        from gevent import ssl as gevent_ssl
    except ImportError:  # pragma: no cover - gevent is a dependency
        return ssl.SSLContext
    return gevent_ssl.SSLContext


def new_context(*, resumption: bool = True) -> ssl.SSLContext:
    """A server context with our protocol and cipher settings, no certificate yet.

    :param resumption: session tickets on (production); off only to measure full handshakes.
    """
    ctx = _context_class()(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_SINGLE_ECDH_USE
    if not resumption:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    return ctx


def context_from_files(cert: Path, key: Path, *, resumption: bool = True) -> ssl.SSLContext:
    ctx = new_context(resumption=resumption)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except FileNotFoundError as exc:
        raise TlsError(
            f"certificate file {exc.filename} does not exist: run `postal-tracking init` to make "
            f"the self-signed default, or fix fast_server.default_tls_certificate_path"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"cannot load certificate {cert} with key {key}: {exc}") from None
    return ctx


def context_from_pem(
    certificate: str, intermediaries: str | None, key: str, *, resumption: bool = True
) -> ssl.SSLContext:
    """A context from PEM text as the store holds it (chain = certificate + intermediaries)."""
    chain = certificate.strip() + "\n"
    if intermediaries and intermediaries.strip():
        chain += intermediaries.strip() + "\n"
    ctx = new_context(resumption=resumption)
    # ssl can only load a chain from files: write both to a private temporary
    # directory and remove them at once.
    with tempfile.TemporaryDirectory(prefix="ptp-tls-") as tmp:
        os.chmod(tmp, 0o700)
        cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_path.write_text(chain)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key.strip() + "\n")
        try:
            ctx.load_cert_chain(str(cert_path), str(key_path))
        except ssl.SSLError as exc:
            raise TlsError(f"certificate or key does not load: {exc.reason or exc}") from None
    return ctx


#: What :class:`CertificateContexts` remembers of a loaded certificate to notice a change:
#: the row's ``(updated_at, expires_at)``, compared only for equality.
Version = tuple[object, object]


class CertificateSource(Protocol):
    """Where :class:`CertificateContexts` reads certificates: the two store calls it makes.

    Defined here, beside its one consumer, rather than as the whole
    :class:`~postal_tracking_plugin.store.Store`: the SNI side needs no more than
    this, and a test can hand in a few PEM strings without a database. Every
    :class:`~postal_tracking_plugin.store.Store` is one.
    """

    def certificate_versions(self) -> dict[str, Version]:
        """Each domain with a certificate and key, and the version of its row."""
        ...

    def get_certificate(self, domain: str) -> Certificate | None:
        """The row of ``domain`` (PEM text, expiry), or None."""
        ...


class CertificateContexts:
    """The default context (with the SNI callback) and one context per domain name.

    :param store: where certificates are read (the store, as a :class:`CertificateSource`).
    :param default_paths: (certificate, key) of the default certificate.
    :param resumption: TLS session tickets (see :func:`new_context`).
    :param default: the default context, made by :func:`context_from_files`
        before the workers were forked (made here if not given). Every
        handshake starts on it, and OpenSSL seals session tickets with the
        keys of the context a handshake started on, which it draws at random
        when the context is made: one context made before the fork gives all
        workers the same keys, so a ticket from one resumes on any other.
    """

    def __init__(
        self,
        store: CertificateSource,
        default_paths: tuple[Path, Path],
        *,
        resumption: bool = True,
        default: ssl.SSLContext | None = None,
    ) -> None:
        self.store = store
        self.default_paths = default_paths
        self.resumption = resumption
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._versions: dict[str, Version] = {}
        self._failed: dict[str, Version] = {}
        self._lock = threading.Lock()
        if default is None:
            default = context_from_files(*default_paths, resumption=resumption)
        default.sni_callback = self._choose
        self.default = default

    def _choose(
        self, sslsock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        if server_name:
            ctx = self._contexts.get(server_name.lower().rstrip("."))
            if ctx is not None:
                sslsock.context = ctx
        return None

    def names(self) -> list[str]:
        return sorted(self._contexts)

    def reload_default(self) -> None:
        """Re-read the default certificate files (SIGHUP)."""
        self.default.load_cert_chain(*(str(p) for p in self.default_paths))

    def refresh(self) -> int:
        """Load certificates that are new or changed in the store, drop removed ones.

        Returns how many contexts changed. A store failure keeps what is loaded.
        """
        try:
            current = self.store.certificate_versions()
        except StoreError as exc:
            log.warning("cannot refresh certificates from the store: %s", exc)
            return 0
        changed = 0
        for name, version in current.items():
            if self._versions.get(name) == version or self._failed.get(name) == version:
                continue
            changed += self._load(name, version)
        for name in set(self._contexts) - set(current):
            with self._lock:
                self._contexts.pop(name, None)
                self._versions.pop(name, None)
            log.info("certificate for %s removed from the store; serving the default", name)
            changed += 1
        return changed

    def _load(self, name: str, version: Version) -> int:
        try:
            row = self.store.get_certificate(name)
        except StoreError as exc:
            log.warning("cannot read the certificate of %s: %s", name, exc)
            return 0
        if row is None or not row.active:
            self._failed[name] = version
            if name in self._contexts:
                with self._lock:
                    self._contexts.pop(name, None)
                    self._versions.pop(name, None)
                return 1
            return 0
        try:
            ctx = context_from_pem(
                row.certificate or "", row.intermediaries, row.key or "", resumption=self.resumption
            )
        except TlsError as exc:
            self._failed[name] = version
            log.warning("certificate for %s not used: %s", name, exc)
            return 0
        with self._lock:
            self._contexts[name] = ctx
            self._versions[name] = version
        self._failed.pop(name, None)
        log.info("serving the stored certificate for %s", name)
        return 1


def run_every(seconds: float, func: Callable[[], object], sleep: Callable[[float], object]) -> None:
    """Call ``func`` every ``seconds`` until the greenlet or thread is killed; log failures."""
    while True:
        sleep(seconds)
        try:
            func()
        except Exception:  # a background task must keep going
            log.exception("background task %s failed", getattr(func, "__name__", func))
