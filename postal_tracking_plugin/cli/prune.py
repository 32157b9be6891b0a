"""``postal-tracking prune``: delete tracked data older than the retention (docs/privacy.md)."""

from __future__ import annotations

from ..events import prune
from ._context import Context
from ._context import Subparsers
from ._context import table


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "prune",
        help="delete event rows and spool leftovers older than the retention",
        description=(
            "Delete per-event rows older than tracking.retention_days (unset: Postal's "
            "per-server message_retention_days with tracking.store: postal, else 90 days), "
            "event rows whose message is gone, and set-aside spool files older than that. "
            "The fast server does the same once a day; safe to run at any time."
        ),
    )
    p.set_defaults(func=run)


def run(ctx: Context) -> int:
    report = prune(ctx.config, ctx.store)
    if not report:
        ctx.say("Nothing older than the retention.")
        return 0
    ctx.say(
        table([[where, what, str(n)] for where, what, n in report], ["where", "what", "removed"])
    )
    return 0
