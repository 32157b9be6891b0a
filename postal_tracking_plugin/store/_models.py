"""Rows of Postal's tables as small read-only objects."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from ._db import Row


def _bool(value: str | int | None, default: bool) -> bool:
    return default if value is None else bool(int(value))


@dataclass(frozen=True)
class Server:
    id: int
    uuid: str | None
    name: str
    token: str
    permalink: str | None
    mode: str | None
    privacy_mode: bool
    organization_id: int | None = None
    #: Postal's retention of the server's messages, in days (None: Postal's default).
    message_retention_days: int | None = None

    @classmethod
    def from_row(cls, row: Row) -> Server:
        organization = row.get("organization_id")
        retention = row.get("message_retention_days")
        return cls(
            id=int(row["id"]),
            uuid=row.get("uuid"),
            name=row["name"],
            token=row["token"],
            permalink=row.get("permalink"),
            mode=row.get("mode"),
            privacy_mode=_bool(row.get("privacy_mode"), False),
            organization_id=int(organization) if organization is not None else None,
            message_retention_days=int(retention) if retention is not None else None,
        )


@dataclass(frozen=True)
class TrackDomain:
    """A ``track_domains`` row joined with its domain and server."""

    id: int
    uuid: str | None
    server_id: int
    server_token: str
    server_name: str
    domain_id: int
    name: str  # the label, "click"
    domain_name: str  # the sending domain, "example.com"
    dns_status: str | None
    dns_error: str | None
    dns_checked_at: _dt.datetime | None
    ssl_enabled: bool
    track_clicks: bool
    track_loads: bool
    excluded_click_domains: tuple[str, ...]

    @property
    def full_name(self) -> str:
        return f"{self.name}.{self.domain_name}"

    @property
    def dns_ok(self) -> bool:
        return self.dns_status == "OK"

    @classmethod
    def from_row(cls, row: Row) -> TrackDomain:
        excluded = row.get("excluded_click_domains") or ""
        return cls(
            id=int(row["id"]),
            uuid=row.get("uuid"),
            server_id=int(row["server_id"]),
            server_token=row["server_token"],
            server_name=row["server_name"],
            domain_id=int(row["domain_id"]),
            name=row["name"],
            domain_name=row["domain_name"],
            dns_status=row.get("dns_status"),
            dns_error=row.get("dns_error"),
            dns_checked_at=row.get("dns_checked_at"),
            ssl_enabled=_bool(row.get("ssl_enabled"), True),
            track_clicks=_bool(row.get("track_clicks"), True),
            track_loads=_bool(row.get("track_loads"), True),
            excluded_click_domains=tuple(h.strip() for h in excluded.splitlines() if h.strip()),
        )


@dataclass(frozen=True)
class Certificate:
    """A ``track_certificates`` row (Postal 2.x), keyed by the full domain name."""

    id: int
    domain: str
    certificate: str | None
    intermediaries: str | None
    key: str | None
    expires_at: _dt.datetime | None
    renew_after: _dt.datetime | None
    verification_path: str | None
    verification_string: str | None
    created_at: _dt.datetime | None
    updated_at: _dt.datetime | None

    @property
    def active(self) -> bool:
        """Has a certificate and key that have not expired."""
        return bool(
            self.certificate
            and self.key
            and self.expires_at is not None
            and self.expires_at > _dt.datetime.now(_dt.UTC).replace(tzinfo=None)
        )

    @classmethod
    def from_row(cls, row: Row) -> Certificate:
        return cls(
            id=row["id"],
            domain=row["domain"],
            certificate=row.get("certificate"),
            intermediaries=row.get("intermediaries"),
            key=row.get("key"),
            expires_at=row.get("expires_at"),
            renew_after=row.get("renew_after"),
            verification_path=row.get("verification_path"),
            verification_string=row.get("verification_string"),
            created_at=row.get("created_at"),
            updated_at=row.get("updated_at"),
        )


@dataclass(frozen=True)
class Link:
    """A link to store: its token and the URL the click redirects to."""

    token: str
    url: str
