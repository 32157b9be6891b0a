"""``postal-tracking dashboard``: serve the management dashboard in the foreground.

The listen address is checked here (never the fast server's sockets or its
tracking IP), so a mistake is one line; then this process replaces itself
with ``python -m postal_tracking_plugin.web.dashboard``, where gevent patches
a fresh interpreter first.
"""

from __future__ import annotations

import os
import sys

from ._context import Context
from ._context import Subparsers


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "dashboard",
        help="serve the dashboard (opens and clicks, people vs machines, domain settings)",
        description=(
            "Serve the management dashboard on tracking.dashboard.listen (default "
            "127.0.0.1:5020), never on the fast server's sockets. Log in with an account made "
            "by `postal-tracking users add EMAIL`."
        ),
    )
    p.add_argument("--listen", metavar="HOST:PORT", help="where to listen (overrides the config)")
    p.set_defaults(func=run)


def run(ctx: Context) -> int:
    from postal_tracking_plugin.web.dashboard.listen import dashboard_address

    dashboard_address(ctx.config, ctx.args.listen)  # a bad address: one line, now
    ctx.store.create_schema()
    if not ctx.store.list_dashboard_users():
        ctx.note(
            "No dashboard users yet: nobody can log in until one is added with "
            "`postal-tracking users add EMAIL`."
        )
    ctx.close()
    argv = [sys.executable, "-m", "postal_tracking_plugin.web.dashboard"]
    if ctx.config.source:
        argv += ["--config", os.path.abspath(ctx.config.source)]
    if ctx.args.listen:
        argv += ["--listen", ctx.args.listen]
    if getattr(ctx.args, "debug", False):
        argv.append("--debug")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
    return 0  # pragma: no cover - exec does not return
