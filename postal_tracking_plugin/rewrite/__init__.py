"""Message rewriting: tracked links and the open pixel, the way Postal's MessageParser does it.

Two layers. :func:`rewrite` is pure (bytes and a :class:`TrackingPlan` in, a
:class:`PureRewrite` out: new bytes and the links; no I/O). :func:`rewrite_message`
(a :class:`StoredRewrite` out) is what the send hook,
the SMTP relay and ``postal-tracking rewrite`` call: it decides from the
configuration and the store whether and how to track, runs :func:`rewrite`,
stores the ``messages`` and ``links`` rows, and never raises: whatever goes
wrong, the original bytes are sent and the reason is logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ..config import Config
from ..errors import NotFound
from ..store import Server
from ..store import SqlValue
from ..store import Store
from ..store import TrackDomain
from ..store import random_token
from ._core import MessageHeaders as MessageHeaders
from ._core import PureRewrite as PureRewrite
from ._core import read_headers as read_headers
from ._core import rewrite as rewrite
from ._plan import TrackingPlan as TrackingPlan

log = logging.getLogger("postal_tracking_plugin.rewrite")

_COLUMN = 255  # varchar(255) columns of Postal's messages table


@dataclass(frozen=True)
class StoredRewrite:
    """What :func:`rewrite_message` did to one message, its rows stored when tracked.

    (:class:`PureRewrite` is what the pure :func:`rewrite` computed.)

    ``data`` is what to send: the original bytes whenever the message was not
    changed. ``reason`` says why it was not tracked (``"tracked"`` when it was).
    """

    data: bytes
    tracked: bool
    reason: str
    message_token: str | None = None
    message_db_id: int | None = None
    tracked_links: int = 0
    tracked_images: int = 0


#: The old names, kept for callers written against 0.1.0 (README.md still says RewriteResult).
RewriteResult = StoredRewrite
Rewritten = PureRewrite


def plan_for(config: Config, store: Store, track_domain: TrackDomain) -> TrackingPlan:
    """The plan for mail through ``track_domain``: https only with an active certificate."""
    scheme: Literal["http", "https"] = "http"
    if track_domain.ssl_enabled:
        certificate = store.get_certificate(track_domain.full_name)
        if certificate is not None and certificate.active:
            scheme = "https"
    return TrackingPlan(
        host=track_domain.full_name,
        scheme=scheme,
        server_token=track_domain.server_token,
        track_clicks=track_domain.track_clicks,
        track_loads=track_domain.track_loads,
        excluded_hosts=track_domain.excluded_click_domains,
        pixel_position=config.tracking.pixel_position,
    )


def rewrite_message(
    raw: bytes,
    *,
    config: Config,
    store: Store,
    server: Server | str,
    rcpt_to: str | None = None,
    mail_from: str | None = None,
    new_token: Callable[[], str] = random_token,
) -> StoredRewrite:
    """Track the links and opens of one outgoing message and store its rows.

    :param raw: the message as it will be sent (before DKIM signing).
    :param server: the :class:`Server`, or its name, token or permalink.
    :param rcpt_to: the envelope recipient (default: the first ``To`` address);
        Postal stores one message per recipient, so call once per recipient.
    :param mail_from: the envelope sender (default: the ``From`` address).

    Tracking applies when ``fast_server.enabled`` is on and the server has a
    tracking domain with DNS OK for the ``From`` address's domain, and never on
    Postal's own databases (``tracking.store: postal``: Postal tracks the mail
    it sends). Never raises.
    """
    try:
        return _rewrite_message(raw, config, store, server, rcpt_to, mail_from, new_token)
    except Exception as exc:  # fail open: the message must go out
        message_id = _message_id(raw)
        log.exception("message %s sent unchanged: %s", message_id, exc)
        return StoredRewrite(raw, False, f"error: {type(exc).__name__}: {exc}")


def _message_id(raw: bytes) -> str:
    try:
        return read_headers(raw).message_id or "(no Message-ID)"
    except Exception:  # noqa: BLE001 - only for the log line
        return "(unreadable Message-ID)"


def _rewrite_message(
    raw: bytes,
    config: Config,
    store: Store,
    server: Server | str,
    rcpt_to: str | None,
    mail_from: str | None,
    new_token: Callable[[], str],
) -> StoredRewrite:
    if not store.tracks_outgoing_mail:
        return StoredRewrite(raw, False, "Postal tracks the mail it sends")
    if len(raw) > config.max_message_bytes:
        return StoredRewrite(
            raw, False, f"larger than smtp_server.max_message_size ({len(raw)} bytes)"
        )
    headers = read_headers(raw)
    plan: TrackingPlan | None = None
    track_domain: TrackDomain | None = None
    if not config.fast_server.enabled:
        reason = "fast_server disabled"
    elif headers.dkim_signed:
        reason = "DKIM-Signature present"
    else:
        if isinstance(server, str):
            try:
                server = store.get_server(server)
            except NotFound:
                return StoredRewrite(raw, False, f"no server named {server!r}")
        domain = headers.from_domain or _domain(mail_from)
        if domain is None:
            reason = "no From address"
        else:
            track_domain = store.track_domain_for_sender(server.id, domain)
            if track_domain is None:
                reason = f"no tracking domain for {domain}"
            elif headers.x_amp_skip:
                reason = "X-AMP: skip"
            elif not (track_domain.track_clicks or track_domain.track_loads):
                reason = f"{track_domain.full_name} tracks neither clicks nor loads"
            else:
                reason = "tracked"
                plan = plan_for(config, store, track_domain)

    result = rewrite(raw, plan, new_token=new_token)
    message_id = headers.message_id or "(no Message-ID)"
    for warning in result.warnings:
        log.warning("message %s: %s", message_id, warning)
    if result.untouched is not None:
        if headers.dkim_signed:
            log.warning(
                "message %s has a DKIM-Signature: sent untracked, because rewriting would "
                "break the signature (call the hook before signing)",
                message_id,
            )
        elif result.untouched.startswith("malformed"):
            log.warning("message %s sent unchanged: %s", message_id, result.untouched)
        return StoredRewrite(raw, False, result.untouched)
    if plan is None or track_domain is None:
        return StoredRewrite(result.data, False, reason)
    if not result.links and not result.tracked_images:
        return StoredRewrite(result.data, False, "nothing to track")
    assert isinstance(server, Server) and result.message_token is not None
    row: dict[str, SqlValue] = {
        "token": result.message_token,
        "scope": "outgoing",
        "rcpt_to": _cut(rcpt_to or headers.to_address),
        "mail_from": _cut(mail_from or headers.from_address),
        "subject": _cut(headers.subject),
        "message_id": _cut(headers.message_id),
        "timestamp": time.time(),
        "domain_id": track_domain.domain_id,
        "tag": _cut(headers.tag),
        "tracked_links": len(result.links),
        "tracked_images": result.tracked_images,
        "parsed": 1,
    }
    try:
        db_id = store.save_tracked_message(server.id, row, result.links)
    except Exception as exc:  # noqa: BLE001 - links not stored must not be sent
        log.error("message %s sent untracked: storing its links failed: %s", message_id, exc)
        return StoredRewrite(raw, False, f"store failed: {exc}")
    return StoredRewrite(
        data=result.data,
        tracked=True,
        reason="tracked",
        message_token=result.message_token,
        message_db_id=db_id,
        tracked_links=len(result.links),
        tracked_images=result.tracked_images,
    )


def _domain(address: str | None) -> str | None:
    if not address or "@" not in address:
        return None
    return address.rpartition("@")[2].strip().strip(">").lower() or None


def _cut(value: str | None) -> str | None:
    return value[:_COLUMN] if value else value


__all__ = [
    "MessageHeaders",
    "PureRewrite",
    "RewriteResult",
    "Rewritten",
    "StoredRewrite",
    "TrackingPlan",
    "plan_for",
    "read_headers",
    "rewrite",
    "rewrite_message",
]
