"""Load Postal's ``postal.yml`` into a typed, read-only :class:`Config`.

The CLI loads the file once and passes the :class:`Config` to everything that
needs it; nothing else reads the file or the environment. Postal's own sections
(``fast_server``, ``main_db``, ``message_db``, ``dns``, ``web``,
``smtp_server``) keep Postal's key names, and keys this project does not use are
ignored so that a real Postal configuration loads unchanged. Our own section,
``tracking:``, is strict: an unknown key there is a typo and is an error.

Each section is a frozen dataclass whose type hints are the schema; one generic
loader (:func:`_build`) checks every value against them, so adding a key is
adding a field.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Literal
from typing import TypeVar

import yaml

from .errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    _D = TypeVar("_D", bound=DataclassInstance)

DEFAULT_PATH = "postal.yml"
ENV_VAR = "POSTAL_TRACKING_CONFIG"
LETS_ENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING_DIRECTORY = "https://acme-staging-v02.api.letsencrypt.org/directory"

_PORT = {"range": (1, 65535)}
_POSITIVE = {"range": (1, 2**31)}


def _port(default: int) -> int:
    return field(default=default, metadata=_PORT)


@dataclass(frozen=True)
class FastServerConfig:
    """Postal's ``fast_server`` section: the tracking web server."""

    enabled: bool = False
    bind_address: tuple[str, ...] = ()
    port: int = _port(5010)
    ssl_port: int = _port(5011)
    proxy_protocol: bool = False
    default_tls_certificate_path: str | None = None
    default_private_key_path: str | None = None


@dataclass(frozen=True)
class MainDbConfig:
    """Postal's ``main_db`` section (used when ``tracking.store`` is ``mysql`` or ``postal``)."""

    host: str = "127.0.0.1"
    port: int = _port(3306)
    username: str = "postal"
    password: str | None = None
    database: str = "postal"


@dataclass(frozen=True)
class MessageDbConfig:
    """Postal's ``message_db`` section; unset connection keys fall back to ``main_db``.

    Databases are named ``<prefix>-server-<id>``. Postal 3 calls the prefix
    ``database_name_prefix``; both spellings are read.
    """

    host: str | None = None
    port: int | None = field(default=None, metadata=_PORT)
    username: str | None = None
    password: str | None = None
    prefix: str = "postal"
    database_name_prefix: str | None = None


@dataclass(frozen=True)
class DnsConfig:
    """Postal's ``dns`` section: what tracking domains must be a CNAME of."""

    track_domain: str = "track.postal.example.com"


@dataclass(frozen=True)
class WebConfig:
    """Postal's ``web`` section: the management host."""

    host: str = "postal.example.com"
    protocol: str = "https"


@dataclass(frozen=True)
class SmtpServerConfig:
    """Postal's ``smtp_server`` section; only the message size limit is read."""

    max_message_size: int = field(default=14, metadata=_POSITIVE)  # megabytes, as Postal


@dataclass(frozen=True)
class AcmeConfig:
    """``tracking.acme``: the ACME (Let's Encrypt) account and directory."""

    directory: str = LETS_ENCRYPT_DIRECTORY
    email: str | None = None
    ca_bundle: str | None = None
    key_type: Literal["ecdsa", "rsa"] = "ecdsa"


@dataclass(frozen=True)
class RelayConfig:
    """``tracking.relay``: the SMTP sidecar relay (``postal-tracking smtp-relay``)."""

    listen: str = "127.0.0.1:2525"
    server: str | None = None  # the Postal server relayed mail is sent for (name or token)
    upstream: str = "127.0.0.1:25"
    # opportunistic: STARTTLS when offered, unverified, plain text if it fails (Postfix "may")
    upstream_tls: Literal["none", "opportunistic", "starttls", "implicit"] = "opportunistic"
    upstream_ca_file: str | None = None  # CA bundle for the upstream's certificate (private CA)
    upstream_username: str | None = None
    upstream_password: str | None = None
    upstream_timeout: float = 30.0  # each command but the final dot
    upstream_data_done_timeout: float = 600.0  # the reply to the final dot (RFC 5321 4.5.3.2.6)
    upstream_connection_max_age: float = 300.0  # then retired (Postfix's reuse time limit)
    helo_name: str | None = None  # our EHLO name upstream and greeting; default the host's FQDN
    max_buffered_messages: int = field(default=8, metadata=_POSITIVE)  # in memory at once
    allowed_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    auth_users: dict[str, str] = field(default_factory=dict)
    batch: bool = False


@dataclass(frozen=True)
class WebhooksConfig:
    """``tracking.webhooks``: standalone webhook delivery (outside Postal mode)."""

    urls: tuple[str, ...] = ()
    secret: str | None = None
    allow_private_addresses: bool = False


@dataclass(frozen=True)
class EventsConfig:
    """``tracking.events``: the click/open spool, its writer and the bot flags."""

    spool_max_bytes: int = field(default=1024**3, metadata={"range": (1024 * 1024, 2**62)})
    spool_segment_bytes: int = field(default=64 * 1024**2, metadata={"range": (4096, 2**62)})
    batch_size: int = field(default=500, metadata={"range": (1, 100000)})
    batch_interval: float = 0.1
    too_fast_seconds: float = 5.0
    all_links_window: float = 3.0
    all_links_count: int = field(default=3, metadata={"range": (2, 1000)})
    bot_user_agents_files: tuple[str, ...] = ()
    bot_networks_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class PrivacyConfig:
    """``tracking.privacy``: what is kept of a recipient's address (docs/privacy.md)."""

    anonymize_ip: bool = False


@dataclass(frozen=True)
class LogConfig:
    """``tracking.log``: the fast server's logs."""

    access_log: Literal["off", "common", "json"] = "off"
    access_log_path: str | None = None
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True)
class DashboardConfig:
    """``tracking.dashboard``: the management dashboard (``postal-tracking dashboard``)."""

    listen: str = "127.0.0.1:5020"
    session_hours: float = 12.0
    login_attempts: int = field(default=5, metadata={"range": (1, 1000)})  # per 15 minutes
    #: Reverse proxies (addresses or CIDRs) in front of the dashboard whose
    #: ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed: behind one that
    #: ends TLS the cookie is then Secure and the throttle sees the client.
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrackingConfig:
    """``tracking``: what Postal has no key for. Unknown keys here are errors."""

    data_dir: str = "./data"
    #: Who owns the data: ``sqlite`` and ``mysql`` are this project's own
    #: databases; ``postal`` is Postal's, read as Postal wrote it (docs/postal.md).
    store: Literal["sqlite", "mysql", "postal"] = "sqlite"
    acme: AcmeConfig = field(default_factory=AcmeConfig)
    trusted_proxies: tuple[str, ...] = ()
    pixel_position: Literal["bottom", "top"] = "bottom"
    workers: int | None = field(default=None, metadata=_POSITIVE)
    max_connections: int = field(default=10000, metadata=_POSITIVE)
    #: Connections one client address may hold open per worker; 0 for no cap.
    max_connections_per_address: int = field(default=0, metadata={"range": (0, 2**31)})
    relay: RelayConfig = field(default_factory=RelayConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    #: Days our event rows and spool leftovers are kept (docs/privacy.md);
    #: unset: Postal's per-server ``message_retention_days`` in postal mode, else 90.
    retention_days: int | None = field(default=None, metadata=_POSITIVE)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)


_STRICT = (
    TrackingConfig,
    AcmeConfig,
    RelayConfig,
    WebhooksConfig,
    EventsConfig,
    LogConfig,
    PrivacyConfig,
    DashboardConfig,
)


@dataclass(frozen=True)
class Config:
    """The whole configuration. ``source`` is the file it came from, if any.

    Relative paths in it (``tracking.data_dir``, certificate paths) are relative
    to the directory of that file; :meth:`path` resolves them.
    """

    fast_server: FastServerConfig = field(default_factory=FastServerConfig)
    main_db: MainDbConfig = field(default_factory=MainDbConfig)
    message_db: MessageDbConfig = field(default_factory=MessageDbConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    web: WebConfig = field(default_factory=WebConfig)
    smtp_server: SmtpServerConfig = field(default_factory=SmtpServerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    source: str | None = None

    @property
    def base_dir(self) -> Path:
        return Path(self.source).resolve().parent if self.source else Path.cwd()

    def path(self, value: str | os.PathLike[str]) -> Path:
        """Resolve a path from the configuration against the file's directory."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    @property
    def data_dir(self) -> Path:
        return self.path(self.tracking.data_dir)

    @property
    def message_db_prefix(self) -> str:
        return self.message_db.database_name_prefix or self.message_db.prefix

    @property
    def max_message_bytes(self) -> int:
        return self.smtp_server.max_message_size * 1024 * 1024


def resolve_path(cli_value: str | None, environ: typing.Mapping[str, str]) -> tuple[str, bool]:
    """Pick the configuration path: ``-c``, else ``$POSTAL_TRACKING_CONFIG``, else ``./postal.yml``.

    Returns the path and whether it was asked for explicitly (an explicit path
    must exist; the default one may be absent, and then defaults apply).
    """
    if cli_value:
        return cli_value, True
    if environ.get(ENV_VAR):
        return environ[ENV_VAR], True
    return DEFAULT_PATH, False


def load_config(path: str | os.PathLike[str] | None = None, *, required: bool = True) -> Config:
    """Read and check a ``postal.yml``.

    :param path: the file; ``None`` gives the defaults.
    :param required: when false, a missing file gives the defaults instead of
        an error (the CLI's ``./postal.yml`` fallback).
    :raises ConfigError: one line naming the file, the key and the fix.
    """
    if path is None:
        return Config()
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        if not required:
            return Config()
        raise ConfigError(
            f"configuration file {name} does not exist: create it (postal-tracking quickstart "
            f"writes one) or pass another with -c PATH"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot read configuration file {name}: {reason}") from None
    return parse_config(text, source=name)


def parse_config(text: str, *, source: str | None = None) -> Config:
    """Check YAML text and build a :class:`Config` (see :func:`load_config`)."""
    where = source or "<config>"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"YAML syntax error in {where}{at}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a mapping of sections (fast_server:, tracking:, ...)")
    values = {k: v for k, v in data.items() if k in _SECTION_NAMES}
    config = _build(Config, {**values, "source": source}, "", where, strict=False)
    _check(config, where)
    return config


_SECTION_NAMES = {f.name for f in dataclasses.fields(Config) if f.name != "source"}


def listen_addresses(config: Config) -> list[tuple[str, int, bool]]:
    """Where the fast server listens: ``(address, port, tls)``, HTTP then HTTPS per address.

    A :class:`ConfigError` naming the key to set when the fast server is disabled
    or has no address. Nothing is bound here (a busy port is the server's error),
    so the CLI checks this before starting the server, without importing it.
    """
    fs = config.fast_server
    where = config.source or "postal.yml"
    if not fs.enabled:
        raise ConfigError(
            f"the fast server is disabled: set fast_server.enabled: true and "
            f"fast_server.bind_address in {where}"
        )
    if not fs.bind_address:
        raise ConfigError(
            f"fast_server.bind_address is not set in {where}: set it to the IP address(es) "
            f"the tracking domains point at"
        )
    both = ((fs.port, False), (fs.ssl_port, True))
    return [(address, port, tls) for address in fs.bind_address for port, tls in both]


def _build(cls: type[_D], data: object, prefix: str, where: str, *, strict: bool) -> _D:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.')} must be a mapping of keys ({where})")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if strict:
        unknown = sorted(set(data) - names)
        if unknown:
            known = ", ".join(sorted(names))
            raise ConfigError(
                f"unknown key {prefix}{unknown[0]} ({where}); the keys of "
                f"{prefix.rstrip('.')} are: {known}"
            )
    kwargs: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        key = f"{prefix}{f.name}"
        kwargs[f.name] = _coerce(hints[f.name], data[f.name], key, where, f.metadata)
    return cls(**kwargs)


def _coerce(
    hint: object, value: object, key: str, where: str, meta: Mapping[str, tuple[int, int]]
) -> object:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".", where, strict=hint in _STRICT)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key, where, meta)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{key} must be one of {choices}, not {value!r} ({where})")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a string or a list of strings ({where})")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ConfigError(f"{key} must be a mapping of strings to strings ({where})")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, not {value!r} ({where})")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be a whole number, not {value!r} ({where})")
        if "range" in meta:
            low, high = meta["range"]
            if not low <= value <= high:
                raise ConfigError(f"{key} must be between {low} and {high}, not {value} ({where})")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, not {value!r} ({where})")
        return float(value)
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(f"{key} must be a string, not {value!r} ({where})")
        return str(value)
    raise TypeError(f"no rule for {hint!r}")  # pragma: no cover - a schema bug


def _check(config: Config, where: str) -> None:
    """Rules that span keys."""
    fs = config.fast_server
    if fs.enabled and not fs.bind_address:
        raise ConfigError(
            f"fast_server.bind_address is required when fast_server.enabled is true ({where}); "
            f"set it to the IP address(es) the tracking domains point at"
        )
    for address in fs.bind_address:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError(
                f"fast_server.bind_address: {address!r} is not an IP address ({where})"
            ) from None
    if fs.port == fs.ssl_port:
        raise ConfigError(f"fast_server.port and fast_server.ssl_port are both {fs.port} ({where})")
    if bool(fs.default_tls_certificate_path) != bool(fs.default_private_key_path):
        raise ConfigError(
            "fast_server.default_tls_certificate_path and default_private_key_path "
            f"go together: set both or neither ({where})"
        )
    for i, network in enumerate(config.tracking.trusted_proxies):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(
                f"tracking.trusted_proxies[{i}]: {network!r} is not an address or CIDR ({where})"
            ) from None
    for i, network in enumerate(config.tracking.dashboard.trusted_proxies):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(
                f"tracking.dashboard.trusted_proxies[{i}]: {network!r} is not an address or "
                f"CIDR ({where})"
            ) from None
    for i, network in enumerate(config.tracking.relay.allowed_networks):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(
                f"tracking.relay.allowed_networks[{i}]: {network!r} is not an address or CIDR "
                f"({where})"
            ) from None
