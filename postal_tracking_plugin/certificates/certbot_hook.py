"""certbot's hooks: ``python -m postal_tracking_plugin.certificates.certbot_hook [-c PATH] ACTION``.

certbot's manual authenticator runs ``auth`` before asking the CA to validate
and ``cleanup`` afterwards (whatever the outcome); ``deploy`` runs after a
certificate is issued or renewed. Each reads certbot's ``CERTBOT_*`` /
``RENEWED_*`` environment and writes to the store, so that whichever fast
server the CA reaches answers the challenge, and every fast server serves the
new certificate.

``auth`` refuses any name that is not a registered tracking domain with SSL on
and a passing DNS check: certificates are never requested for arbitrary names.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..config import load_config
from ..config import resolve_path
from ..errors import Error
from ..store import Store
from ..store import open_store
from ._deploy import clear_challenge
from ._deploy import store_lineage
from ._state import mark_active

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"


def _auth(store: Store, env: dict[str, str]) -> int:
    domain = env.get("CERTBOT_DOMAIN", "").lower()
    token = env.get("CERTBOT_TOKEN", "")
    validation = env.get("CERTBOT_VALIDATION", "")
    if not token:
        print(f"only HTTP-01 challenges are supported (none offered for {domain})", file=sys.stderr)
        return 1
    td = store.find_track_domain(domain)
    if td is None or not td.ssl_enabled or not td.dns_ok:
        print(
            f"{domain} is not a tracking domain with SSL on and DNS OK: refusing to answer a "
            f"challenge for it",
            file=sys.stderr,
        )
        return 1
    store.save_certificate(
        domain, verification_path=CHALLENGE_PREFIX + token, verification_string=validation
    )
    return 0


def _cleanup(store: Store, env: dict[str, str]) -> int:
    domain = env.get("CERTBOT_DOMAIN", "").lower()
    token = env.get("CERTBOT_TOKEN", "")
    clear_challenge(store, domain, CHALLENGE_PREFIX + token if token else None)
    return 0


def _deploy(store: Store, env: dict[str, str]) -> int:
    lineage = Path(env["RENEWED_LINEAGE"])
    for domain in env.get("RENEWED_DOMAINS", "").split():
        store_lineage(store, domain.lower(), lineage)
        mark_active(store, domain)
    return 0


_ACTIONS = {"auth": _auth, "cleanup": _cleanup, "deploy": _deploy}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="postal-tracking-certbot-hook")
    parser.add_argument("-c", "--config", metavar="PATH")
    parser.add_argument("action", choices=sorted(_ACTIONS))
    args = parser.parse_args(argv)
    env = dict(os.environ)
    try:
        path, required = resolve_path(args.config, env)
        store = open_store(load_config(path, required=required))
        try:
            return _ACTIONS[args.action](store, env)
        finally:
            store.close()
    except (Error, OSError, KeyError, ValueError) as exc:
        print(f"postal-tracking {args.action} hook: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
