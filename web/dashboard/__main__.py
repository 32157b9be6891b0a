"""``python -m postal_tracking_plugin.web.dashboard``: the dashboard's process entry point.

gevent's monkey-patching comes first, before anything imports ``socket``;
``postal-tracking dashboard`` replaces itself with this (exec).
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="postal-tracking dashboard")
    parser.add_argument("-c", "--config", metavar="PATH")
    parser.add_argument("--listen", metavar="HOST:PORT")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from postal_tracking_plugin.config import load_config
    from postal_tracking_plugin.errors import Error

    from .server import serve

    try:
        config = load_config(args.config, required=args.config is not None)
        return serve(config, args.listen)
    except Error as exc:
        print(f"postal-tracking: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
