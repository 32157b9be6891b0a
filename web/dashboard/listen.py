"""Where the dashboard listens: ``tracking.dashboard.listen`` or ``--listen``, checked.

The dashboard never shares the fast server's sockets or its tracking IP: the
tracking IP faces the whole Internet and answers for every tracking domain,
the dashboard is for the operator. A wildcard address (``0.0.0.0``, ``::``)
would include the tracking IP, so it is refused while the fast server has one.
"""

from __future__ import annotations

import ipaddress

from postal_tracking_plugin.config import Config
from postal_tracking_plugin.errors import ConfigError


def parse_listen(value: str, where: str = "tracking.dashboard.listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a ``(host, port)`` pair."""
    host, sep, port_text = value.strip().rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        port = 0
    if not sep or not host or not 1 <= port <= 65535:
        raise ConfigError(f"{where} {value!r} is not HOST:PORT: use e.g. 127.0.0.1:5020")
    return host, port


def dashboard_address(config: Config, override: str | None = None) -> tuple[str, int]:
    """The checked ``(host, port)`` to listen on.

    :raises ConfigError: the address is the tracking IP, one of the fast
        server's sockets, or a wildcard that includes them.
    """
    where = "--listen" if override else f"tracking.dashboard.listen ({config.source or 'defaults'})"
    host, port = parse_listen(override or config.tracking.dashboard.listen, where)
    tracking = set(config.fast_server.bind_address)
    fix = "listen on 127.0.0.1 or the management network's address instead"
    try:
        wildcard = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        wildcard = False
    if host in tracking:
        raise ConfigError(f"{where}: {host} is the fast server's tracking IP; {fix}")
    if wildcard and tracking:
        raise ConfigError(
            f"{where}: {host} means every address, the tracking IP "
            f"({', '.join(sorted(tracking))}) too; {fix}"
        )
    if port in (config.fast_server.port, config.fast_server.ssl_port) and (
        wildcard or not tracking
    ):
        raise ConfigError(
            f"{where}: port {port} is the fast server's (fast_server.port/ssl_port); "
            f"pick another port such as 5020"
        )
    return host, port
