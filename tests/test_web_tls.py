"""HTTPS: each tracking domain's certificate by SNI, from the store, refreshed live."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import rsa
from web_live import LiveServer
from web_live import add_message
from web_live import names_of
from web_live import peer_certificate
from web_live import store_certificate

from postal_tracking_plugin.store import Store


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_site(store: Store, backend_config: Any, ca: trustme.CA) -> Iterator[dict[str, Any]]:
    store_certificate(store, ca, "click.one.example", trustme.KeyType.ECDSA)
    store_certificate(store, ca, "click.two.example", trustme.KeyType.RSA)
    live = LiveServer(backend_config, store).start()
    yield {"live": live, "store": store}
    live.stop()


def test_each_tracking_domain_gets_its_own_certificate(tls_site: dict[str, Any]) -> None:
    port = tls_site["live"].https_port
    one = peer_certificate(port, "click.one.example")
    two = peer_certificate(port, "CLICK.TWO.EXAMPLE")
    assert names_of(one) == ["click.one.example"]
    assert isinstance(one.public_key(), ec.EllipticCurvePublicKey)
    assert names_of(two) == ["click.two.example"]
    assert isinstance(two.public_key(), rsa.RSAPublicKey)


@pytest.mark.parametrize("name", ["unknown.example", None])
def test_unknown_name_or_no_sni_gets_the_default_certificate(
    tls_site: dict[str, Any], name: str | None
) -> None:
    cert = peer_certificate(tls_site["live"].https_port, name)
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    assert cn == "postal-tracking default certificate"


def test_https_click(tls_site: dict[str, Any], ca: trustme.CA) -> None:
    store, live = tls_site["store"], tls_site["live"]
    server = store.add_server("Main")
    _, links = add_message(store, server.id, ["https://example.com/secure"])
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with socket.create_connection(("127.0.0.1", live.https_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="click.one.example") as tls:
            tls.sendall(
                f"GET /{server.token}/{links[0]} HTTP/1.1\r\nHost: click.one.example\r\n"
                f"Connection: close\r\n\r\n".encode()
            )
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
    assert data.startswith(b"HTTP/1.1 307")
    assert b"\r\nLocation: https://example.com/secure\r\n" in data


@pytest.mark.slow
def test_a_certificate_stored_while_running_is_served_without_restart(
    tls_site: dict[str, Any], ca: trustme.CA
) -> None:
    live, store = tls_site["live"], tls_site["store"]
    name = "click.three.example"
    assert "default" in str(peer_certificate(live.https_port, name).subject)
    store_certificate(store, ca, name, trustme.KeyType.ECDSA)
    deadline = time.monotonic() + 60  # the promise: within 60 seconds
    while True:
        if names_of(peer_certificate(live.https_port, name)) == [name]:
            break
        assert time.monotonic() < deadline, "the new certificate was not served within 60 s"
        time.sleep(0.5)
    # and a renewal (a new certificate for the same name) replaces it
    before = peer_certificate(live.https_port, name).serial_number
    time.sleep(1.1)  # updated_at has second precision
    store_certificate(store, ca, name, trustme.KeyType.RSA)
    deadline = time.monotonic() + 60
    while peer_certificate(live.https_port, name).serial_number == before:
        assert time.monotonic() < deadline, "the renewed certificate was not served within 60 s"
        time.sleep(0.5)


def test_old_tls_is_refused_and_counted_in_one_line(
    tls_site: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    live = tls_site["live"]
    for _ in range(3):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            peer_certificate(
                live.https_port,
                "click.one.example",
                minimum_version=ssl.TLSVersion.MINIMUM_SUPPORTED,
                maximum_version=ssl.TLSVersion.TLSv1_1,
            )
    for _ in range(2):  # garbage instead of a ClientHello
        with socket.create_connection(("127.0.0.1", live.https_port), timeout=10) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\n\r\n")
            try:
                assert not raw.recv(100).startswith(b"HTTP/")
            except ConnectionResetError:
                pass  # closed: what a TLS port does with plain HTTP
    assert names_of(peer_certificate(live.https_port, "click.one.example")) == ["click.one.example"]
    assert live.worker.stats.tls_failures >= 5
    lines = [r for r in caplog.records if "TLS" in r.getMessage()]
    assert len(lines) <= 1
    assert not [r for r in caplog.records if r.exc_info]


def test_fast_server_workers_do_not_import_cryptography() -> None:
    """The default certificate's paths come from the core without its ~10 MB import."""
    code = (
        "import sys, postal_tracking_plugin.web.server, postal_tracking_plugin.web._supervisor;"
        "assert 'cryptography' not in sys.modules, 'cryptography imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
