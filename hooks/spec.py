"""The hook specifications: the contract between a host mailer and ``postal`` plugins.

pluggy project name ``postal``; every hook is ``postal_``-prefixed. Plugins are
found through the entry-point group ``postal.plugins`` (this package registers
its own tracking plugin there as ``tracking``) and loaded by
:func:`postal_tracking_plugin.hooks.get_plugin_manager`.

Hooks are grouped by when they run:

- **Send pipeline**: the host mailer, once per outgoing message, before it
  signs (DKIM) and sends it.
- **Tracking events**: the fast server's event recorder, once per click or
  open, after the event is durably recorded; never on the click path itself.

An implementation may take any subset of a hook's arguments, by name (pluggy's
rule); arguments are added over time, never renamed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from postal_tracking_plugin._recorded_event import HookEvent

if TYPE_CHECKING:
    from postal_tracking_plugin.config import Config
    from postal_tracking_plugin.store import Server
    from postal_tracking_plugin.store import Store

#: The pluggy project name: what plugins pass to :class:`pluggy.HookimplMarker`.
PROJECT_NAME = "postal"

#: Marks the hook specifications below.
hookspec = pluggy.HookspecMarker(PROJECT_NAME)

#: Marks a plugin's implementation of a hook: ``@hookimpl def postal_...``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


#: One click or open, as :func:`postal_tracking_event` receives it: a plain dict
#: (``json.dumps`` takes it as it is), every key documented in
#: :class:`postal_tracking_plugin.events.HookEvent`, the one definition (the
#: event recorder, in the core, builds it; the core never imports ``hooks``).
TrackingEvent = HookEvent


# -------------------------------------------------------------------------
# Send pipeline
# -------------------------------------------------------------------------


@hookspec
def postal_rewrite_message(
    message: bytes,
    mail_from: str,
    rcpt_to: list[str],
    server: Server | str,
    config: Config,
    store: Store,
) -> bytes | None:
    """Transform an outgoing message before it is signed and sent.

    Called once per outgoing message by the host mailer, through
    :func:`~postal_tracking_plugin.hooks.run_send_pipeline`, before DKIM
    signing (a plugin that changes a signed message breaks its signature).
    The SMTP relay calls it once per recipient, so each copy gets its own
    tracking tokens, unless ``tracking.relay.batch`` is true.

    Not ``firstresult``, and chained: ``run_send_pipeline`` calls the
    implementations one after the other in pluggy's order (last registered
    first; ``tryfirst`` / ``trylast`` move one), and each receives as
    ``message`` what the previous one returned. Calling
    ``pm.hook.postal_rewrite_message(...)`` directly instead gives every
    plugin the original message and returns the list of their results,
    without chaining. Wrapper implementations are not supported for this hook
    and are skipped.

    :param message: the whole message, headers and body, as bytes (RFC 5322,
        CRLF or LF line ends). Bytes are immutable: return a new value.
    :param mail_from: the envelope sender (``MAIL FROM``); may be empty for a
        bounce.
    :param rcpt_to: the envelope recipients (``RCPT TO``), always a list: one
        address when the host sends one copy per recipient, as Postal does.
        Do not mutate it.
    :param server: the Postal server the message is sent for: its name, token
        or permalink, or a :class:`~postal_tracking_plugin.store.Server`.
    :param config: the loaded configuration; read-only.
    :param store: the store (Postal's tables); a plugin may write its own rows.

    :returns: the new message bytes, or None to leave it as it was.

    An implementation must never raise: a message must not be lost because a
    plugin failed. ``run_send_pipeline`` still catches and logs anything that
    escapes and carries on with the message as it was before that plugin.
    This package's implementation (``tracking``) rewrites links and adds the
    open pixel, and returns the message unchanged on any error.
    """


# -------------------------------------------------------------------------
# Tracking events
# -------------------------------------------------------------------------


@hookspec
def postal_tracking_event(event: TrackingEvent) -> None:
    """A click or open was recorded.

    Called once per event by the fast server's event recorder, after the
    event is durably written (``clicks`` / ``loads`` rows and
    ``messages.clicked`` / ``loaded``). It runs off the click path: the
    recipient's redirect or pixel was already answered, and a slow or failing
    plugin cannot delay it. It must still not block for long (hand work to a
    queue or a thread), since events are delivered to plugins one at a time.
    Every implementation is called; return values are ignored.

    :param event: the event (see :class:`TrackingEvent`); the same dict is
        passed to every plugin, so do not mutate it.

    The recorder calls it through
    :func:`~postal_tracking_plugin.hooks.notify_tracking_event`, which calls
    every implementation and logs an exception without keeping the event from
    the plugins after it (a direct ``pm.hook.postal_tracking_event(event=...)``
    stops at the first exception). Events flagged ``bot`` are passed on too:
    filter on ``event["bot"]`` if only people count.
    """
