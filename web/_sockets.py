"""The fast server's listening sockets: what to bind, and binding with one clear error."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from postal_tracking_plugin.config import Config
from postal_tracking_plugin.config import listen_addresses
from postal_tracking_plugin.errors import ServerError as ServerError


@dataclass(frozen=True)
class ListenSpec:
    address: str
    port: int
    tls: bool


def listen_specs(config: Config) -> list[ListenSpec]:
    """What to bind, or the :class:`ConfigError` of :func:`listen_addresses`."""
    return [ListenSpec(*where) for where in listen_addresses(config)]


def bind(spec: ListenSpec, *, reuse_port: bool, backlog: int = 1024) -> socket.socket:
    """A listening socket for ``spec``, or one clear :class:`ServerError`."""
    family = socket.AF_INET6 if ":" in spec.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((spec.address, spec.port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        shown = f"[{spec.address}]" if family == socket.AF_INET6 else spec.address
        key = "fast_server.ssl_port" if spec.tls else "fast_server.port"
        if exc.errno == errno.EADDRINUSE:
            raise ServerError(
                f"port {spec.port} on {shown} is in use by another program: stop that program "
                f"or set another {key}"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ServerError(
                f"{spec.address} is not an address of this machine: fix fast_server.bind_address"
            ) from None
        if exc.errno == errno.EACCES:
            raise ServerError(
                f"no permission to listen on port {spec.port} of {shown}: use a port above 1023 "
                f"({key}) or run with the capability to bind low ports"
            ) from None
        raise ServerError(f"cannot listen on {shown}:{spec.port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock
