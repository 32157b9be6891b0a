"""``postal-tracking rewrite``: run one message through the rewriter, as the send hook would.

The rewritten message goes to stdout as bytes and a one-line summary to stderr,
so ``postal-tracking rewrite --server Main msg.eml > out.eml`` shows exactly
what a recipient would get. The links and the message row are stored, as for a
real send, so the tracked links work against the fast server.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UsageError
from ..rewrite import rewrite_message
from ._context import Context
from ._context import Subparsers


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "rewrite",
        help="rewrite one message's links and add the open pixel (stdout), summary on stderr",
        description="Rewrite a message as the send hook does: tracked links, the open pixel, "
        "rows stored. The message goes to stdout, a one-line summary to stderr.",
    )
    p.add_argument(
        "file",
        nargs="?",
        default="-",
        metavar="FILE",
        help="the message (RFC 5322, .eml); '-' or nothing reads stdin",
    )
    p.add_argument("--server", required=True, help="server name, token or permalink")
    p.add_argument("--rcpt", metavar="ADDR", help="envelope recipient (default: the To address)")
    p.add_argument(
        "--mail-from", metavar="ADDR", help="envelope sender (default: the From address)"
    )
    p.set_defaults(func=run)


def run(ctx: Context) -> int:
    args = ctx.args
    if args.file == "-":
        raw = sys.stdin.buffer.read()
    else:
        try:
            raw = Path(args.file).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    server = ctx.store.get_server(args.server)  # an unknown server is the user's error here
    result = rewrite_message(
        raw,
        config=ctx.config,
        store=ctx.store,
        server=server,
        rcpt_to=args.rcpt,
        mail_from=args.mail_from,
    )
    out = getattr(ctx.out, "buffer", None)
    if out is None:
        ctx.out.write(result.data.decode("utf-8", "surrogateescape"))
    else:
        out.write(result.data)
        out.flush()
    if result.tracked:
        links = result.tracked_links
        images = result.tracked_images
        ctx.note(
            f"tracked {links} link{'s' if links != 1 else ''}, {images} "
            f"image{'s' if images != 1 else ''}, message token {result.message_token}"
        )
    else:
        ctx.note(f"not tracked: {result.reason}")
    return 0
