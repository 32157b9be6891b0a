"""The pure rewriter: message bytes and a plan in, new bytes and the links to store out.

No I/O and no store: :func:`rewrite` can run anywhere (a hook, the CLI, a
benchmark, a test) and the caller decides what to store. It never raises for a
bad message: anything it cannot read safely comes back unchanged, with the
reason (Postal's MessageParser fails open the same way).
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from dataclasses import dataclass
from email import policy
from email.header import decode_header
from email.header import make_header
from email.message import Message

from ..store import Link
from ..store import random_token
from . import _mime
from ._plan import DEFAULT_MAX_LINKS
from ._plan import Tracker
from ._plan import TrackingPlan


@dataclass(frozen=True)
class MessageHeaders:
    """What the rewriter and its caller need from the top-level header."""

    from_address: str | None
    to_address: str | None
    subject: str | None
    message_id: str | None
    tag: str | None
    x_amp_skip: bool
    dkim_signed: bool

    @property
    def from_domain(self) -> str | None:
        if not self.from_address or "@" not in self.from_address:
            return None
        return self.from_address.rpartition("@")[2].strip().lower().rstrip(".") or None


@dataclass(frozen=True)
class PureRewrite:
    """What :func:`rewrite` computed: the new bytes and the links to store, nothing stored.

    (:class:`~postal_tracking_plugin.rewrite.StoredRewrite` is what
    ``rewrite_message`` did with one, rows stored.) ``data`` is ``raw`` itself
    when nothing changed. ``untouched`` names why the
    message had to pass unchanged (a DKIM signature, a signed part, malformed
    MIME), else it is None. ``links`` are in document order, one per occurrence.
    """

    data: bytes
    links: tuple[Link, ...]
    tracked_images: int
    message_token: str | None
    untouched: str | None
    warnings: tuple[str, ...]
    headers: MessageHeaders


def _text(value: object) -> str | None:
    """A header field's text: RFC 2047 encoded words decoded, and 8-bit UTF-8 (RFC 6532)
    read as UTF-8 (octets that are not UTF-8 become U+FFFD)."""
    if value is None:
        return None
    text = str(value)
    try:
        text = str(policy.default.header_factory("subject", text))
    except (ValueError, LookupError, UnicodeError, TypeError, IndexError):
        try:
            text = str(make_header(decode_header(text)))
        except (ValueError, LookupError, UnicodeError, TypeError):
            pass
    return " ".join(text.split()) or None


def _address(value: object) -> str | None:
    if value is None:
        return None
    addresses = email.utils.getaddresses([str(value)])
    for _name, addr in addresses:
        if addr:
            return addr
    return None


def _raw(msg: Message, name: str) -> str | None:
    """The first ``name`` field as written (``msg.get`` turns 8-bit octets into U+FFFD)."""
    name = name.lower()
    for key, value in msg.raw_items():
        if key.lower() == name:
            return value
    return None


def headers_of(msg: Message, *, x_amp_skip: bool, dkim_signed: bool) -> MessageHeaders:
    message_id = _text(_raw(msg, "Message-ID"))
    if message_id:
        message_id = message_id.strip().strip("<>").strip() or None
    return MessageHeaders(
        from_address=_address(msg.get("From")),
        to_address=_address(msg.get("To")),
        subject=_text(_raw(msg, "Subject")),
        message_id=message_id,
        tag=_text(_raw(msg, "X-Postal-Tag")),
        x_amp_skip=x_amp_skip,
        dkim_signed=dkim_signed,
    )


def read_headers(raw: bytes) -> MessageHeaders:
    """The top-level header fields the caller needs to build a plan."""
    header_end, _ = _mime.split_headers(raw, 0, len(raw))
    _, x_amp, dkim = _mime.top_level_edits(raw, header_end)
    return headers_of(_mime.parse_headers(raw, 0, header_end), x_amp_skip=x_amp, dkim_signed=dkim)


def rewrite(
    raw: bytes,
    plan: TrackingPlan | None,
    *,
    new_token: Callable[[], str] = random_token,
    max_links: int = DEFAULT_MAX_LINKS,
) -> PureRewrite:
    """Rewrite one message.

    :param plan: where links point and what to track; ``None`` tracks nothing
        but still turns ``http(s)+notrack://`` back into ``http(s)://`` and
        removes ``X-AMP: skip``, so neither ever reaches a recipient.
    :param new_token: makes message and link tokens (tests pass a counter).
    :param max_links: links beyond this many stay untracked, with a warning.

    A message with ``X-AMP: skip`` is rewritten as with ``plan=None``. A message
    with a ``DKIM-Signature``, a ``multipart/signed`` or ``multipart/encrypted``
    part, or MIME that cannot be read safely is returned unchanged, with
    ``untouched`` saying why.
    """
    header_end, _ = _mime.split_headers(raw, 0, len(raw))
    top_edits, x_amp, dkim = _mime.top_level_edits(raw, header_end)
    msg = _mime.parse_headers(raw, 0, header_end)
    headers = headers_of(msg, x_amp_skip=x_amp, dkim_signed=dkim)

    def untouched(reason: str, warnings: tuple[str, ...] = ()) -> PureRewrite:
        return PureRewrite(raw, (), 0, None, reason, warnings, headers)

    if dkim:
        return untouched(
            "DKIM-Signature present", ("rewriting would break the DKIM signature: sign after",)
        )
    if x_amp:
        plan = None
    tracker = Tracker(plan, new_token=new_token, max_links=max_links)
    walk = _mime.MimeWalk(
        raw,
        tracker,
        pixel_position=plan.pixel_position if plan else "bottom",
        eol=_mime.line_ending(raw),
        edits=list(top_edits),
    )
    try:
        walk.entity(0, len(raw), msg=msg)
    except _mime.Untouchable as exc:
        return untouched(str(exc))
    except _mime.Malformed as exc:
        return untouched(f"malformed: {exc}")
    except (ValueError, LookupError, UnicodeError, IndexError, TypeError) as exc:
        return untouched(f"malformed: {type(exc).__name__}: {exc}")
    edits = walk.edits
    data = _mime.apply_edits(raw, edits) if edits else raw
    return PureRewrite(
        data=data,
        links=tuple(tracker.links),
        tracked_images=tracker.images,
        message_token=tracker.message_token,
        untouched=None,
        warnings=tuple(tracker.warnings),
        headers=headers,
    )
