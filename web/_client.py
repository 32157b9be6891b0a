"""Who is asking: the client address of a request.

The socket peer (or the address from the PROXY protocol line, which the server
puts in ``REMOTE_ADDR`` already) is the answer, unless that peer is one of
``tracking.trusted_proxies``; only then is ``X-Forwarded-For`` believed, read
from the right, skipping the trusted hops, so a client cannot forge its address
by sending the header itself. An address is taken only when it is a valid IP
address of at most 45 characters without an IPv6 zone (``%eth0``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientAddress:
    """Resolves a WSGI environ to the client's IP address (a string)."""

    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        self.networks: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in trusted_proxies
        )

    def _trusted(self, address: str) -> bool:
        ip = _parse(address)
        if ip is None:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    def __call__(self, environ: Mapping[str, Any]) -> str:
        peer = environ.get("REMOTE_ADDR") or ""
        if not self.networks:
            return peer
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        if not forwarded or not self._trusted(peer):
            return peer
        hops = [h.strip(" \t") for h in forwarded.split(",") if h.strip(" \t")]
        for hop in reversed(hops):
            if not self._trusted(hop):
                return _valid_or(hop, peer)
        return _valid_or(hops[0], peer) if hops else peer


#: The longest textual IP address (IPv6 with an embedded IPv4 address).
MAX_ADDRESS = 45


def _parse(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address in ``address`` (brackets allowed), or None: no zone, at most 45 characters.

    A zone (``fe80::1%eth0``) names an interface of the sender's machine, not a
    client, and Python would keep any text after the ``%``.
    """
    address = address.strip(" \t").strip("[]")
    if len(address) > MAX_ADDRESS or "%" in address:
        return None
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


def _valid_or(address: str, fallback: str) -> str:
    """``address`` if it is an IP address (a forged junk value is not), else ``fallback``."""
    ip = _parse(address)
    return fallback if ip is None else str(ip)
