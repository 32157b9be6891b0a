"""``postal-tracking users``: the dashboard's accounts.

There is no default account and no default password: the first account is
made here. Passwords are asked twice on the terminal (never as an argument,
where ``ps`` and the shell history would show them) or read from standard
input with ``--password-stdin``, and stored as Werkzeug scrypt hashes in our
own ``tracking_dashboard_users`` table. Changing a password or removing an
account ends that account's dashboard sessions.
"""

from __future__ import annotations

import getpass
import sys

from werkzeug.security import generate_password_hash

from ..errors import UsageError
from ._context import Context
from ._context import Subparsers
from ._context import table

MIN_PASSWORD = 8


def register(sub: Subparsers) -> None:
    p = sub.add_parser("users", help="dashboard accounts: add, list, remove, change a password")
    s = p.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    add = s.add_parser("add", help="add a dashboard account (the password is asked twice)")
    add.add_argument("email", metavar="EMAIL")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    add.set_defaults(func=run_add)
    ls = s.add_parser("list", help="the dashboard accounts")
    ls.set_defaults(func=run_list)
    rm = s.add_parser("remove", help="remove a dashboard account and end its sessions")
    rm.add_argument("email", metavar="EMAIL")
    rm.set_defaults(func=run_remove)
    pw = s.add_parser("passwd", help="change an account's password and end its sessions")
    pw.add_argument("email", metavar="EMAIL")
    pw.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    pw.set_defaults(func=run_passwd)


def _email(value: str) -> str:
    email = value.strip().lower()
    local, _, domain = email.partition("@")
    if not local or not domain or " " in email:
        raise UsageError(f"{value!r} is not an e-mail address: give one such as ops@example.com")
    return email


def _password(ctx: Context) -> str:
    if ctx.args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise UsageError("no terminal to ask the password on: pipe it in with --password-stdin")
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise UsageError("the two passwords differ: nothing changed, run it again")
    if len(password) < MIN_PASSWORD:
        raise UsageError(f"the password is too short: use at least {MIN_PASSWORD} characters")
    return password


def hash_password(password: str) -> str:
    return generate_password_hash(password, method="scrypt")


def _schema(ctx: Context) -> None:
    # The accounts table may be newer than the store: add what is missing.
    ctx.store.create_schema()


def run_add(ctx: Context) -> int:
    email = _email(ctx.args.email)
    _schema(ctx)
    if ctx.store.find_dashboard_user(email):
        raise UsageError(
            f"dashboard user {email} exists already: `postal-tracking users passwd {email}` "
            f"changes the password"
        )
    ctx.store.add_dashboard_user(email, hash_password(_password(ctx)))
    ctx.note(f"Added dashboard user {email}; `postal-tracking dashboard` serves the dashboard.")
    return 0


def run_list(ctx: Context) -> int:
    _schema(ctx)
    users = ctx.store.list_dashboard_users()
    if not users:
        ctx.note("No dashboard users yet: add one with `postal-tracking users add EMAIL`.")
        return 0
    rows = [
        [
            u["email"],
            f"{u['created_at']:%Y-%m-%d %H:%M}" if u["created_at"] else "-",
            f"{u['last_login_at']:%Y-%m-%d %H:%M}" if u["last_login_at"] else "never",
        ]
        for u in users
    ]
    ctx.say(table(rows, ["EMAIL", "ADDED (UTC)", "LAST LOGIN (UTC)"]))
    return 0


def run_remove(ctx: Context) -> int:
    email = _email(ctx.args.email)
    _schema(ctx)
    ctx.store.remove_dashboard_user(email)
    ctx.note(f"Removed dashboard user {email}; their sessions have ended.")
    return 0


def run_passwd(ctx: Context) -> int:
    email = _email(ctx.args.email)
    _schema(ctx)
    if not ctx.store.find_dashboard_user(email):
        raise UsageError(f"no dashboard user {email}: `postal-tracking users list` shows them")
    ctx.store.set_dashboard_password(email, hash_password(_password(ctx)))
    ctx.note(f"Changed the password of {email}; their sessions have ended.")
    return 0
