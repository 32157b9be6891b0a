"""``postal-tracking smtp-relay``: the SMTP sidecar relay (see ``hooks/smtp_relay.py``)."""

from __future__ import annotations

import logging

from ..errors import ConfigError
from ._context import Context
from ._context import Subparsers


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "smtp-relay",
        help="accept mail over SMTP, track it, and relay it to an upstream SMTP server",
        description=(
            "Run the SMTP sidecar relay: applications send to it instead of to Postal's SMTP "
            "port (or any smarthost); every message goes through the send pipeline (all "
            "plugins under postal.plugins, tracking among them), once per recipient unless "
            "tracking.relay.batch is true, and is relayed to the upstream. If the upstream is "
            "down or refuses for now, the client gets a 4xx and retries. Settings: "
            "tracking.relay.* in postal.yml. Runs until SIGINT or SIGTERM."
        ),
    )
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="address to listen on (default tracking.relay.listen, 127.0.0.1:2525; port 0 "
        "picks a free one)",
    )
    p.add_argument(
        "--upstream",
        metavar="HOST:PORT",
        help="the SMTP server to relay to (default tracking.relay.upstream)",
    )
    p.add_argument(
        "--server",
        metavar="NAME",
        help="the Postal server the relayed mail is sent for (default tracking.relay.server)",
    )
    p.set_defaults(func=run)


def run(ctx: Context) -> int:
    from ..hooks import get_plugin_manager
    from ..hooks.smtp_relay import SmtpRelay

    a = ctx.args
    if not ctx.store.tracks_outgoing_mail:
        raise ConfigError(
            "smtp-relay does not run with tracking.store: postal: Postal tracks the mail it "
            "sends, so send to Postal's SMTP server directly"
        )
    if not a.debug:
        # aiosmtpd logs every SMTP command at INFO; our own line per message is enough.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
    relay = SmtpRelay(
        ctx.config,
        ctx.store,
        get_plugin_manager(),
        server=a.server,
        listen=a.listen,
        upstream=a.upstream,
    )
    relay.bind()
    warnings = []
    if not ctx.config.fast_server.enabled:
        warnings.append("fast_server.enabled is false, so messages are relayed without tracking")
    elif not any(td.dns_ok for td in ctx.store.list_track_domains(relay.server.id)):
        warnings.append(
            f"server {relay.server.name!r} has no tracking domain with DNS OK, so messages "
            f"are relayed without tracking (`postal-tracking track-domains`)"
        )

    def ready() -> None:
        ctx.note(f"smtp-relay: {relay.describe()}")
        for warning in warnings:
            ctx.note(f"smtp-relay: warning: {warning}")
        ctx.err.flush()

    relay.serve_forever(ready)
    ctx.note("smtp-relay: stopped")
    return 0
