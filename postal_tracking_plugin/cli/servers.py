"""``postal-tracking servers``: add and list mail servers (Postal's ``servers``)."""

from __future__ import annotations

from ._context import Context
from ._context import Subparsers
from ._context import table


def register(sub: Subparsers) -> None:
    p = sub.add_parser("servers", help="add and list mail servers")
    s = p.add_subparsers(dest="servers_command", metavar="ACTION", required=True)
    add = s.add_parser("add", help="add a server and create its message database")
    add.add_argument("name", help="the server's name")
    add.add_argument(
        "--token",
        help="the server token used in tracking URLs (6 lowercase letters; default random)",
    )
    add.set_defaults(func=run_add)
    ls = s.add_parser("list", help="list servers with their tokens")
    ls.set_defaults(func=run_list)


def run_add(ctx: Context) -> int:
    server = ctx.store.add_server(ctx.args.name, ctx.args.token)
    ctx.say(server.token)
    ctx.note(f"Added server {server.name!r} (id {server.id}, token {server.token}).")
    return 0


def run_list(ctx: Context) -> int:
    servers = ctx.store.list_servers()
    if not servers:
        ctx.note("No servers yet: add one with `postal-tracking servers add NAME`.")
        return 0
    ctx.say(table([[str(s.id), s.name, s.token] for s in servers], ["ID", "NAME", "TOKEN"]))
    return 0
