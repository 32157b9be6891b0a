"""The ``postal-tracking`` command.

One module of this package per group of subcommands, each with a
``register(subparsers)`` function that adds its parsers and sets ``func`` to a
callable taking a :class:`Context`. Errors a user can cause
(:class:`~postal_tracking_plugin.errors.Error`) print one line and exit 1;
anything else is a bug and prints "An unexpected error occurred", with the
traceback only under ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from .. import __version__
from ..errors import Error
from ._context import Context

#: Modules of this package that add subcommands, in ``--help`` order.
COMMAND_MODULES = (
    "setup",
    "servers",
    "track_domains",
    "rewrite",
    "fast_server",
    "letsencrypt",
    "smtp_relay",
    "stats",
    "prune",
    "forget",
    "users",
    "dashboard",
    "quickstart",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postal-tracking",
        description="Click & open tracking for outgoing e-mail, compatible with Postal.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help="postal.yml to read (default: $POSTAL_TRACKING_CONFIG, else ./postal.yml)",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and debug logging on errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx = Context(args, os.environ)
    try:
        result = args.func(ctx)
    except Error as exc:
        print(f"postal-tracking: error: {exc}", file=sys.stderr)
        if args.debug:
            traceback.print_exc()
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception:  # noqa: BLE001 - the last line of defence, with advice
        if args.debug:
            traceback.print_exc()
        else:
            print(
                "postal-tracking: An unexpected error occurred; re-run with --debug for the "
                "traceback and report it.",
                file=sys.stderr,
            )
        return 1
    finally:
        ctx.close()
    return int(result or 0)
