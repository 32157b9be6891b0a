"""Who is asking: the client address of a request.

The socket peer (or the address from the PROXY protocol line, which the server
puts in ``REMOTE_ADDR`` already) is the answer, unless that peer is one of
``tracking.trusted_proxies``; only then is ``X-Forwarded-For`` believed, read
from the right, skipping the trusted hops, so a client cannot forge its address
by sending the header itself.
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
        try:
            ip = ipaddress.ip_address(address.strip().strip("[]"))
        except ValueError:
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
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._trusted(hop):
                return _valid_or(hop, peer)
        return _valid_or(hops[0], peer) if hops else peer


def _valid_or(address: str, fallback: str) -> str:
    """``address`` if it is an IP address (a forged junk value is not), else ``fallback``."""
    try:
        return str(ipaddress.ip_address(address.strip("[]")))
    except ValueError:
        return fallback
