"""Calling a webhook URL: only public addresses (unless allowed), checked once resolved."""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from urllib.parse import urlsplit

_TIMEOUT = 5.0


class Refused(Exception):
    """A webhook URL that must not be called (bad scheme, non-global address)."""


def check_address(address: str, allow_private: bool) -> None:
    """Raise :class:`Refused` for a non-global address unless ``allow_private``."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not allow_private and not ip.is_global:
        raise Refused(
            f"{address} is a loopback, link-local or private address; webhooks go there only "
            f"with tracking.webhooks.allow_private_addresses: true"
        )
    if ip.is_multicast or ip.is_unspecified:
        raise Refused(f"{address} is not a unicast address")


def post(url: str, body: bytes, headers: dict[str, str], *, allow_private: bool) -> int:
    """POST ``body`` to ``url``; return the status code.

    The host is resolved once, every address is checked, and the connection
    goes to a checked address (so a DNS answer cannot change in between).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused(f"{url!r} is not an http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {parts.hostname}: {exc}") from None
    addresses = [str(info[4][0]) for info in infos]
    for address in addresses:
        check_address(address, allow_private)
    sock = socket.create_connection((addresses[0], port), timeout=_TIMEOUT)
    try:
        if parts.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
        conn = http.client.HTTPConnection(parts.hostname, port, timeout=_TIMEOUT)
        conn.sock = sock
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read(65536)
        return int(response.status)
    finally:
        sock.close()
