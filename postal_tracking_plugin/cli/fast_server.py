"""``postal-tracking fast-server``: run the tracking web server in the foreground.

The checks that need no network (enabled, bind address, worker count) run here
so a mistake is one line; then this process replaces itself with
``python -m postal_tracking_plugin.web``, a fresh interpreter where gevent's
monkey-patching is the first thing that happens (this process has imported
``ssl`` and friends already, too late to patch).
"""

from __future__ import annotations

import argparse
import os
import sys

from ..config import listen_addresses
from ..errors import UsageError
from ._context import Context
from ._context import Subparsers


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "fast-server",
        help="run the tracking web server (clicks, opens, HTTP-01 answers) in the foreground",
        description=(
            "Serve Postal's tracking URLs on fast_server.bind_address: HTTP on\n"
            "fast_server.port and HTTPS on fast_server.ssl_port, each tracking domain's\n"
            "certificate chosen by SNI. SIGTERM stops it gracefully (requests in flight\n"
            "finish, events are flushed); SIGHUP reloads the configuration and\n"
            "certificates."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes sharing the listeners (default: tracking.workers, else one per core)",
    )
    p.set_defaults(func=run_fast_server)


def run_fast_server(ctx: Context) -> int:
    config = ctx.config
    listen_addresses(config)  # disabled / no address: one line, before anything starts
    workers = ctx.args.workers
    if workers is not None and workers < 1:
        raise UsageError("--workers must be 1 or more")
    exec_fast_server(config.source, workers=workers, debug=bool(getattr(ctx.args, "debug", False)))
    return 0  # pragma: no cover - exec does not return


def exec_fast_server(
    config_path: str | None, *, workers: int | None = None, debug: bool = False
) -> None:
    """Replace this process with the fast server (same pid, so signals reach it)."""
    argv = [sys.executable, "-m", "postal_tracking_plugin.web"]
    if config_path:
        argv += ["--config", os.path.abspath(config_path)]
    if workers:
        argv += ["--workers", str(workers)]
    if debug:
        argv.append("--debug")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
