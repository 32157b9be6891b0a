"""The shape of a recorded click or open, as it flows from the spool to the webhooks.

A leaf module (it imports nothing of this package) shared by the events (which
build the dict: ``EventRecorder.click()``/``open()`` write it as one JSON line
of the spool, the writer reads it back) and the store (``record_events`` writes
it, sets its bot flags and counts it in the rollups): the store may not import
the events package, so the type lives on the ground floor both stand on.

Only a type, checked by mypy: nothing validates a spool line against it at run
time (a set-aside line replayed from ``rejected-*.jsonl`` also carries
``"error"``, which every reader ignores). Not the tracking-event hook's dict:
that one is ``events.HookEvent`` (``hooks.TrackingEvent`` for plugins), built
from this one with exactly ``events.EVENT_KEYS``.
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


def known_id(value: int | None) -> int:
    """``int(value)`` for an id (``message_id``, ``link_id``) the caller filtered to not None.

    mypy does not carry a comprehension's ``is not None`` filter over to the list
    it builds; this says so in one place, and raises the ``TypeError`` that
    ``int(None)`` would if the filter was wrong.
    """
    if value is None:
        raise TypeError("an id filtered to not None is None: check the filter before this call")
    return int(value)
