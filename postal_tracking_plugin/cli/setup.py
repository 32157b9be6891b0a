"""``postal-tracking init``: data directory, schema and default certificate."""

from __future__ import annotations

import argparse

from ..default_certificate import ensure_default_certificate
from ._context import Context
from ._context import Subparsers


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "init",
        help="create the data directory, the database schema and a default certificate",
        description=(
            "Create what the configuration needs: the data directory, Postal's tables\n"
            "(SQLite files, or the MySQL main database and every server's message\n"
            "database) and a self-signed default certificate for the HTTPS listener when\n"
            "none is configured. With tracking.store: postal, only this project's own\n"
            "tables are added to Postal's existing databases: no database is created and\n"
            "nothing of Postal's is changed. Safe to run again: it only creates what is\n"
            "missing."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=run_init)


def run_init(ctx: Context) -> int:
    config = ctx.config
    config.data_dir.mkdir(parents=True, exist_ok=True)
    for note in ctx.store.create_schema():
        ctx.note(note)
    cert, _key, made = ensure_default_certificate(config)
    ctx.note(f"Data directory: {config.data_dir}")
    ctx.note(f"Store: {ctx.store.describe()} (schema up to date)")
    ctx.note(f"Default certificate: {cert}" + (" (created, self-signed)" if made else ""))
    if not config.fast_server.enabled:
        where = config.source or "postal.yml"
        ctx.note(
            f"Tracking is off: set fast_server.enabled: true and fast_server.bind_address in "
            f"{where} to turn it on."
        )
    return 0
