"""The shape of a recorded click or open, as it flows from the spool to the webhooks.

A leaf module (it imports nothing of this package) shared by the events (which
build the dict: ``EventRecorder.click()``/``open()`` write it as one JSON line
of the spool, the writer reads it back) and the store (``record_events`` writes
it, sets its bot flags and counts it in the rollups): the store may not import
the events package, so the type lives on the ground floor both stand on.

Only a type, checked by mypy: nothing validates a spool line against it at run
time (a set-aside line replayed from ``rejected-*.jsonl`` also carries
``"error"``, which every reader ignores).

Beside it, :class:`HookEvent`: the tracking-event hook's dict, built from a
recorded event with exactly ``events.EVENT_KEYS``. It lives here, not in
``hooks``, because the recorder (in the core) builds it and the core never
imports ``hooks``; ``hooks.TrackingEvent`` is the same class.
"""

from __future__ import annotations

from typing import Literal
from typing import NotRequired
from typing import TypedDict


class RecordedEvent(TypedDict):
    """One click or open: a spool line, then the same dict through writer, store and webhooks.

    Every key but the last three is in the spool line (JSON ``null`` for None).
    """

    #: Unique: a random per-process prefix and a counter (the recorder's ``_next_id``).
    event_id: str
    kind: Literal["click", "open"]
    #: The request's method: ``HEAD`` is recorded (flagged ``head-request``) but not counted.
    method: str
    server_id: int
    server_token: str
    #: ``messages.id``; None when an open's token matched no message.
    message_id: int | None
    #: ``links.id`` and the redirect target (clicks); None for opens.
    link_id: int | None
    url: str | None
    #: The client's address, anonymized before spooling when ``privacy.anonymize_ip``.
    ip_address: str | None
    user_agent: str | None
    #: Unix seconds.
    timestamp: float
    #: ``messages.token``: spooled by ``open()`` (null for clicks), filled in from the
    #: message by the recorder before the hook; absent from the webhook catch-up's events.
    message_token: NotRequired[str | None]
    #: Set by ``Store.record_events`` (False/None) and the bot flagger, inside the
    #: transaction that writes the event; read by the webhooks and the hook.
    bot: NotRequired[bool]
    bot_reason: NotRequired[str | None]


class HookEvent(TypedDict):
    """One click or open, as the tracking-event hook gets it (plugins: ``postal_tracking_event``).

    A plain dict, so a plugin can hand it to ``json.dumps`` or a message queue
    as it is. Exactly the keys of ``events.EVENT_KEYS``, every one set; built by
    the event recorder from the :class:`RecordedEvent`. ``hooks.TrackingEvent``
    is this class.
    """

    #: ``"click"`` (a tracked link was followed) or ``"open"`` (the pixel loaded).
    kind: Literal["click", "open"]
    #: Unique id of this event (the spool's), for de-duplicating downstream.
    event_id: str
    #: ``servers.id`` and ``servers.token`` of the server the message was sent for.
    server_id: int
    server_token: str
    #: ``messages.id`` in that server's message database; None when an open's
    #: message token matched no message (Postal still answers the pixel).
    message_id: int | None
    #: ``messages.token`` (the 16 characters in the pixel URL); None if unknown.
    message_token: str | None
    #: ``links.id`` of the followed link (clicks); None for opens.
    link_id: int | None
    #: The URL the click was redirected to (clicks); None for opens.
    url: str | None
    #: The client's address (after PROXY protocol / trusted ``X-Forwarded-For``).
    ip_address: str | None
    user_agent: str | None
    #: When it happened, Unix seconds.
    timestamp: float
    #: True when the event looks automated (a link scanner, an image proxy
    #: prefetch, a click within seconds of sending); it is recorded either way.
    bot: bool
    #: Why it was flagged, as a short code (``scanner-user-agent``,
    #: ``apple-privacy-proxy``, ``head-request``, ...). Usually None when ``bot``
    #: is false, except for image proxies that fetch on a person's behalf
    #: (``google-image-proxy``): a real open, so ``bot`` is false, with the
    #: reason saying how it arrived.
    bot_reason: str | None


def known_id(value: int | None) -> int:
    """``int(value)`` for an id (``message_id``, ``link_id``) the caller filtered to not None.

    mypy does not carry a comprehension's ``is not None`` filter over to the list
    it builds; this says so in one place, and raises the ``TypeError`` that
    ``int(None)`` would if the filter was wrong.
    """
    if value is None:
        raise TypeError("an id filtered to not None is None: check the filter before this call")
    return int(value)
