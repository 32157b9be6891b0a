"""``postal-tracking quickstart DIR``: from a fresh clone to a recorded click.

On the embedded SQLite store, in a directory of the user's choice: writes a
``postal.yml`` with the fast server on 127.0.0.1, initialises the store, adds a
demo server and tracking domain, rewrites the bundled sample newsletter
(printing its tracked links and pixel), and runs the fast server in the
foreground, so ``curl -i`` on a printed link shows the ``307`` and
``postal-tracking stats`` shows the click. Safe to run again on the same
directory: what exists is reused.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

import yaml

from ..config import Config
from ..config import load_config
from ..default_certificate import ensure_default_certificate
from ..errors import NotFound
from ..errors import UsageError
from ..store import Server
from ..store import Store
from ..store import open_store
from ._context import Context
from ._context import Subparsers

DEMO_SERVER = "Demo"
DEMO_TRACK_DOMAIN = "click.example.com"  # the sample newsletter is from news@example.com


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "quickstart",
        help="set up a demo in DIR (SQLite), track the sample newsletter, run the fast server",
        description=(
            "Write DIR/postal.yml (fast server on 127.0.0.1), initialise the store, add a\n"
            "demo server and the tracking domain click.example.com, rewrite the bundled\n"
            "sample newsletter into DIR/sample-newsletter.tracked.eml, print its tracked\n"
            "links, and run the fast server in the foreground (Ctrl-C stops it). Then\n"
            "`curl -i` a printed link and run `postal-tracking -c DIR/postal.yml stats`."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("directory", metavar="DIR", help="where postal.yml and the data go")
    p.add_argument("--port", type=int, default=5010, help="HTTP port (HTTPS is PORT+1); 5010")
    p.add_argument(
        "--no-serve", action="store_true", help="set up and print the links, but do not serve"
    )
    p.set_defaults(func=run)


def run(ctx: Context) -> int:
    directory = Path(ctx.args.directory).expanduser().resolve()
    port = ctx.args.port
    if not 1 <= port <= 65534:
        raise UsageError(f"--port must be between 1 and 65534, not {port}")
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "postal.yml"
    if config_path.exists():
        ctx.note(f"Using the existing {config_path}")
    else:
        config_path.write_text(
            "# Written by `postal-tracking quickstart`: a local demo on the embedded SQLite store.\n"
            + yaml.safe_dump(
                {
                    "fast_server": {
                        "enabled": True,
                        "bind_address": "127.0.0.1",
                        "port": port,
                        "ssl_port": port + 1,
                    },
                    "tracking": {"data_dir": "data", "store": "sqlite"},
                },
                sort_keys=False,
            )
        )
        ctx.note(f"Wrote {config_path}")
    config = load_config(config_path)
    store = open_store(config)
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        store.create_schema()
        ensure_default_certificate(config)
        try:
            server = store.get_server(DEMO_SERVER)
        except NotFound:
            server = store.add_server(DEMO_SERVER)
        if store.find_track_domain(DEMO_TRACK_DOMAIN) is None:
            store.add_track_domain(server, DEMO_TRACK_DOMAIN, dns_status="OK")
        ctx.note(
            f"Store: {store.describe()}; server {server.name!r} (token {server.token}); "
            f"tracking domain {DEMO_TRACK_DOMAIN}"
        )
        links, pixel = _track_sample(ctx, config, store, server, directory)
    finally:
        store.close()

    base = f"http://127.0.0.1:{config.fast_server.port}"
    ctx.say("")
    ctx.say(f"Tracked links (in the message they point at http://{DEMO_TRACK_DOMAIN}/...):")
    for path, url in links:
        ctx.say(f"  {base}{path}  ->  {url}")
    if pixel:
        ctx.say(f"Open pixel:  {base}{pixel}")
    ctx.say("")
    if links:
        ctx.say(f"Try it:  curl -i {base}{links[0][0]}")
    ctx.say(f"Then:    postal-tracking -c {config_path} stats")
    if ctx.args.no_serve:
        ctx.say(f"Serve:   postal-tracking -c {config_path} fast-server")
        return 0
    ctx.say("Starting the fast server (Ctrl-C stops it) ...")
    from .fast_server import exec_fast_server

    exec_fast_server(str(config_path), workers=1, debug=bool(ctx.args.debug))
    return 0  # pragma: no cover - exec does not return


def _track_sample(
    ctx: Context, config: Config, store: Store, server: Server, directory: Path
) -> tuple[list[tuple[str, str]], str | None]:
    from ..rewrite import rewrite_message

    raw = (
        resources.files("postal_tracking_plugin")
        .joinpath("data/sample-newsletter.eml")
        .read_bytes()
    )
    result = rewrite_message(raw, config=config, store=store, server=server)
    if not result.tracked:
        raise UsageError(f"the sample newsletter was not tracked: {result.reason}")
    out = directory / "sample-newsletter.tracked.eml"
    out.write_bytes(result.data)
    ctx.note(
        f"Rewrote the sample newsletter into {out}: {result.tracked_links} links, "
        f"{result.tracked_images} pixel"
    )
    with store.messages(server.id, readonly=True) as db:
        rows = db.query(
            "SELECT token, url FROM links WHERE message_id = %s ORDER BY id",
            (result.message_db_id,),
        )
    links = [(f"/{server.token}/{r['token']}", str(r["url"])) for r in rows]
    pixel = f"/img/{server.token}/{result.message_token}" if result.tracked_images else None
    return links, pixel
