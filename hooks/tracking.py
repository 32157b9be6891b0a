"""This package's own plugin: click and open tracking in the send pipeline.

Registered under the entry-point group ``postal.plugins`` as ``tracking``, so a
host that loads that group gets tracking by installing the package. All the
work is :func:`postal_tracking_plugin.rewrite.rewrite_message`, the same code
path as ``postal-tracking rewrite``; this module only adapts it to the hook.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from postal_tracking_plugin.rewrite import rewrite_message

from .spec import hookimpl

if TYPE_CHECKING:
    from postal_tracking_plugin.config import Config
    from postal_tracking_plugin.store import Server
    from postal_tracking_plugin.store import Store

log = logging.getLogger("postal_tracking_plugin.hooks.tracking")

#: ``messages.rcpt_to`` is a varchar(255) in Postal.
_RCPT_TO_MAX = 255


@hookimpl
def postal_rewrite_message(
    message: bytes,
    mail_from: str,
    rcpt_to: list[str],
    server: Server | str,
    config: Config,
    store: Store,
) -> bytes | None:
    """Rewrite links into tracked links and add the open pixel; stores the rows.

    The rewriter decides whether to track (tracking on, a tracking domain with
    DNS OK for the ``From`` domain, no ``X-AMP: skip``, not already signed,
    ...) and returns the message unchanged when it does not or when anything
    goes wrong. Returns None when nothing changed.
    """
    try:
        result = rewrite_message(
            message,
            config=config,
            store=store,
            server=server,
            rcpt_to=_rcpt_to_column(rcpt_to),
            mail_from=mail_from or None,
        )
    except Exception:  # rewrite_message never raises; belt and braces
        log.exception("tracking: the rewriter failed; the message is sent unchanged")
        return None
    if result.tracked:
        log.debug(
            "tracking: message %s: %d links, %d images",
            result.message_token,
            result.tracked_links,
            result.tracked_images,
        )
    return None if result.data == message else result.data


def _rcpt_to_column(rcpt_to: list[str]) -> str | None:
    """What goes in ``messages.rcpt_to``: the recipient, or all of them, cut to fit."""
    if not rcpt_to:
        return None
    return ", ".join(rcpt_to)[:_RCPT_TO_MAX]
