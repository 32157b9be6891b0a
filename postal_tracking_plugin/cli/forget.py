"""``postal-tracking forget ADDRESS``: erase what was tracked for one recipient (docs/privacy.md)."""

from __future__ import annotations

from ..errors import UsageError
from ..events import forget
from ._context import Context
from ._context import Subparsers
from ._context import table


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "forget",
        help="erase the clicks, opens and event rows of one recipient address",
        description=(
            "Erase everything tracked for mail to ADDRESS on every server: its clicks, opens "
            "and our event rows, queued click and open webhooks naming it, and (in the "
            "plugin's own stores) its messages and links. With tracking.store: postal only what "
            "the sidecar wrote or Postal's fast server would have. Prints what it removed; "
            "running it again removes nothing."
        ),
    )
    p.add_argument("address", metavar="ADDRESS", help="the recipient's e-mail address")
    p.set_defaults(func=run)


def run(ctx: Context) -> int:
    address = ctx.args.address.strip()
    if "@" not in address:
        raise UsageError(
            f"{address!r} is not an e-mail address: give the recipient's, a@example.com"
        )
    report = forget(ctx.config, ctx.store, address)
    total = sum(n for _where, _what, n in report)
    rows = [[where, what, str(n)] for where, what, n in report if n]
    if rows:
        ctx.say(table(rows, ["where", "what", "removed"]))
    ctx.say(f"{total} rows removed for {address}.")
    return 0
