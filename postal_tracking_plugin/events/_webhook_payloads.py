"""Webhook payloads as Postal builds them, Rails' YAML for its queue, and our signature."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import NotRequired
from typing import TypedDict

from .._recorded_event import RecordedEvent
from ..store import Row

SIGNATURE_HEADER = "X-Postal-Tracking-Signature"
#: Postal's ``webhook_requests.payload`` is a MySQL ``TEXT``: 65,535 bytes.
POSTAL_PAYLOAD_BYTES = 65535
#: What an oversized payload's URL and User-Agent are cut to (characters).
CUT_TO = 2000


class PayloadTooLarge(ValueError):
    """A payload that does not fit Postal's column even once cut."""


#: Postal's ``Message#webhook_hash`` (``from`` is a Python keyword: the functional form).
MessageHash = TypedDict(
    "MessageHash",
    {
        "id": int,
        "token": "str | None",
        "direction": "str | None",
        "message_id": "str | None",
        "to": "str | None",
        "from": "str | None",
        "subject": "str | None",
        "timestamp": "float | None",
        "spam_status": str,
        "tag": "str | None",
    },
)


class WebhookPayload(TypedDict):
    """One event's webhook payload, as Postal's ``MessageLinkClicked``/``MessageLoaded``.

    Keys in this order (the YAML Postal's queue stores lists them so); ``url``
    and ``token`` only for clicks. ``bot`` and ``bot_reason`` are ours.
    """

    message: MessageHash
    url: NotRequired[str | None]
    token: NotRequired[str | None]
    ip_address: str | None
    user_agent: str | None
    bot: bool
    bot_reason: str | None


def postal_payload(payload: WebhookPayload, limit: int = POSTAL_PAYLOAD_BYTES) -> str:
    """``payload`` as Rails' YAML for ``webhook_requests.payload``, cut to fit ``limit`` bytes.

    A payload too large for Postal's ``TEXT`` column (a link URL of 65,400
    characters, say) has its ``url`` and ``user_agent`` cut to their first
    :data:`CUT_TO` characters and gains ``truncated: true``, so receivers can
    tell; the message and the rest are kept whole. If even that does not fit,
    :class:`PayloadTooLarge` is raised and that one webhook is skipped.
    """
    text = rails_yaml(payload)
    if len(text.encode("utf-8")) <= limit:
        return text
    cut: dict[str, object] = dict(payload)
    for key in ("url", "user_agent"):
        value = cut.get(key)
        if isinstance(value, str):
            cut[key] = value[:CUT_TO]
    cut["truncated"] = True
    text = rails_yaml(cut)
    size = len(text.encode("utf-8"))
    if size > limit:
        raise PayloadTooLarge(f"payload of {size} bytes even with url and user_agent cut")
    return text


def spam_status(message: Row) -> str:
    """Postal's ``spam_status`` of a message row."""
    if not message.get("inspected"):
        return "NotChecked"
    return "Spam" if message.get("spam") else "NotSpam"


def message_hash(message: Row) -> MessageHash:
    """Postal's ``Message#webhook_hash``."""
    ts = message.get("timestamp")
    return {
        "id": int(message["id"]),
        "token": message.get("token"),
        "direction": message.get("scope"),
        "message_id": message.get("message_id"),
        "to": message.get("rcpt_to"),
        "from": message.get("mail_from"),
        "subject": message.get("subject"),
        "timestamp": float(ts) if ts is not None else None,
        "spam_status": spam_status(message),
        "tag": message.get("tag"),
    }


def payload_for(event: RecordedEvent, message: Row, link_token: str | None) -> WebhookPayload:
    """The webhook payload of one event (a recorded event dict) and its message's row."""
    if event["kind"] == "click":
        return {
            "message": message_hash(message),
            "url": event.get("url"),
            "token": link_token,
            "ip_address": event.get("ip_address"),
            "user_agent": event.get("user_agent"),
            "bot": bool(event.get("bot")),
            "bot_reason": event.get("bot_reason"),
        }
    return {
        "message": message_hash(message),
        "ip_address": event.get("ip_address"),
        "user_agent": event.get("user_agent"),
        "bot": bool(event.get("bot")),
        "bot_reason": event.get("bot_reason"),
    }


def rails_yaml(payload: Mapping[str, object]) -> str:
    """``payload`` as Rails' YAML column coder writes a Ruby Hash with Symbol keys.

    Postal declares ``serialize :payload, Hash`` on ``webhook_requests`` (YAML,
    Rails 6 defaults), so its workers load this back into the same Hash its own
    tracking code would have queued.
    """
    lines = ["---"]
    _yaml_lines(payload, 0, lines)
    return "\n".join(lines) + "\n"


def _yaml_lines(mapping: Mapping[str, object], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            lines.append(f"{pad}:{key}:")
            _yaml_lines(value, indent + 2, lines)
        else:
            lines.append(f"{pad}:{key}: {_yaml_scalar(value)}")


def _yaml_scalar(value: object) -> str:
    if value is None:
        return "~"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6f}"
    if isinstance(value, dict):
        return "{}"
    text = json.dumps(str(value), ensure_ascii=False)
    # Escape what YAML does not allow unescaped in a stream (DEL, C1 controls,
    # U+FFFE/FFFF, a BOM) and what YAML 1.1 folds as a line break inside a
    # double-quoted scalar (NEL, U+2028, U+2029), which would change the text.
    return "".join(f"\\u{ord(c):04x}" if c in _YAML_ESCAPE else c for c in text)


_YAML_ESCAPE = frozenset(
    [chr(c) for c in range(0x7F, 0xA0)] + ["\u2028", "\u2029", "\ufeff", "\ufffe", "\uffff"]
)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """HMAC-SHA256 hex of ``<timestamp>.<body>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return mac.hexdigest()


def verify(secret: str, header: str, body: bytes, *, tolerance: float = 300.0) -> bool:
    """Check a signature header as a receiver would (also a reference for receivers)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        ts = int(fields["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), fields.get("v1", ""))
