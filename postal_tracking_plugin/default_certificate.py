"""The certificate the HTTPS listener serves when no tracking domain's matches.

Configured with ``fast_server.default_tls_certificate_path`` and
``default_private_key_path``; without them ``postal-tracking init`` makes a
self-signed ECDSA P-256 one under the data directory (Postal did the same).
Clients that send no SNI, or a name that is not a tracking domain, get it.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

from .config import Config


def default_certificate_paths(config: Config) -> tuple[Path, Path]:
    """(certificate, key) paths: configured, else the generated pair's."""
    fs = config.fast_server
    if fs.default_tls_certificate_path and fs.default_private_key_path:
        return config.path(fs.default_tls_certificate_path), config.path(
            fs.default_private_key_path
        )
    return config.data_dir / "default-cert.pem", config.data_dir / "default-key.pem"


def ensure_default_certificate(config: Config) -> tuple[Path, Path, bool]:
    """Make the self-signed default pair if it is not configured and missing.

    Returns the paths and whether they were created now.
    """
    cert_path, key_path = default_certificate_paths(config)
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path, False
    if config.fast_server.default_tls_certificate_path:
        return cert_path, key_path, False  # configured but absent: the server says so
    cert_pem, key_pem = self_signed_certificate("postal-tracking default certificate")
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    cert_path.write_bytes(cert_pem)
    return cert_path, key_path, True


def self_signed_certificate(common_name: str, *, days: int = 3650) -> tuple[bytes, bytes]:
    """A self-signed ECDSA P-256 certificate and its key, as PEM.

    ``cryptography`` is imported here, not at module level: the fast server's
    workers read :func:`default_certificate_paths` and should not carry its
    ~10 MB for a certificate only ``init`` makes.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _dt.datetime.now(_dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
