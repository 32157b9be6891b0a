"""``python -m postal_tracking_plugin.web``: the fast server's process entry point.

gevent's monkey-patching happens here, first thing, and nowhere else: it must
come before anything imports ``socket``, ``ssl`` or ``threading`` for PyMySQL
and the recorder to cooperate with the hub. ``postal-tracking fast-server``
replaces itself with this (exec), so the patched interpreter is a fresh one.

As the process's entry point, this module wires the rooms together: it hands
the installed plugins' tracking-event hook (``postal_tracking_plugin.hooks``)
to :func:`._supervisor.serve`, so that nothing else in ``web`` imports ``hooks``
(tests/test_meta.py holds entry modules to the CLI's floor).
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="postal-tracking fast-server")
    parser.add_argument("-c", "--config", metavar="PATH")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--debug", action="store_true")
    # Benchmarks only: measure full TLS handshakes (production keeps tickets on).
    parser.add_argument("--no-tls-resumption", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
    from functools import partial

    from postal_tracking_plugin.config import load_config
    from postal_tracking_plugin.errors import Error
    from postal_tracking_plugin.hooks import get_plugin_manager
    from postal_tracking_plugin.hooks import notify_tracking_event

    from ._supervisor import serve

    try:
        config = load_config(args.config, required=args.config is not None)
        logging.getLogger().setLevel(
            logging.DEBUG if args.debug else config.tracking.log.level.upper()
        )
        hook = partial(notify_tracking_event, get_plugin_manager())
        return serve(config, workers=args.workers, hook=hook, resumption=not args.no_tls_resumption)
    except Error as exc:
        print(f"postal-tracking: error: {exc}", file=sys.stderr)
        if args.debug:
            traceback.print_exc()
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
