"""The ACME account: registering it through certbot, and finding it again.

certbot keeps the account key under ``<data_dir>/letsencrypt/config/accounts``,
one folder per ACME server. Which server this installation registered with
(and the e-mail given) is recorded in ``<data_dir>/letsencrypt/account.json``,
so issuance and renewal use that server even if it was chosen with
``--staging`` or ``--server`` rather than ``tracking.acme.directory``.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path

import requests

from ..config import Config
from ..store import utcnow
from ._certbot import certbot_dirs
from ._certbot import run_certbot
from ._errors import AcmeError
from ._errors import NoAccount
from ._explain import certbot_failure

#: Deliberately loose: one @, something before it, a dotted domain after it.
#: The ACME server has the last word (Let's Encrypt also checks the domain).
_EMAIL_RE = re.compile(r"^[^@\s]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$")


@dataclass(frozen=True)
class Account:
    server: str
    email: str | None
    uri: str | None
    registered_at: str | None = None


def _record_path(config: Config) -> Path:
    return certbot_dirs(config).root / "account.json"


def local_account_uri(config: Config, server: str) -> str | None:
    """The URL of certbot's account for ``server`` in our directories, if there is one."""
    folder = certbot_dirs(config).accounts(server)
    for regr in sorted(folder.glob("*/regr.json")):
        try:
            return str(json.loads(regr.read_text()).get("uri") or "") or None
        except (OSError, ValueError):
            continue
    return None


def current_account(config: Config) -> Account | None:
    """The registered account, or None when ``register-lets-encrypt`` has not been run here."""
    try:
        data = json.loads(_record_path(config).read_text())
        account = Account(**{k: data.get(k) for k in ("server", "email", "uri", "registered_at")})
    except (OSError, ValueError, TypeError):
        return None
    if not account.server or local_account_uri(config, account.server) is None:
        return None
    return account


def require_account(config: Config) -> Account:
    account = current_account(config)
    if account is None:
        raise NoAccount(
            f"no ACME account is registered in {certbot_dirs(config).root}: run "
            f"`postal-tracking register-lets-encrypt EMAIL` first"
        )
    return account


def _save(config: Config, account: Account) -> None:
    path = _record_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(account), indent=2) + "\n")


def account_gone(output: str) -> bool:
    """certbot's output says the server has no such account (it was reset or deactivated)."""
    low = output.lower()
    return "account" in low and any(
        phrase in low
        for phrase in (
            "accountdoesnotexist",
            "unable to find existing account",
            "no account exists",
            "does not exist",
            "not found",
        )
    )


def _set_aside(config: Config, server: str) -> None:
    """Move a forgotten account out of certbot's way (kept, in case it is wanted)."""
    dirs = certbot_dirs(config)
    stale = dirs.root / "stale-accounts"
    stale.mkdir(parents=True, exist_ok=True)
    for folder in dirs.accounts(server).iterdir():
        if folder.is_dir():
            shutil.move(str(folder), str(stale / f"{folder.name}-{int(time.time())}"))


def check_email(email: str) -> None:
    if not _EMAIL_RE.match(email):
        raise AcmeError(
            f"{email!r} is not an e-mail address: give the address Let's Encrypt should write "
            f"to about expiring certificates, such as ops@example.com"
        )


def terms_of_service(config: Config, server: str) -> str | None:
    """Fetch the ACME directory, proving it is reachable; return its terms-of-service URL."""
    verify: str | bool = True
    if config.tracking.acme.ca_bundle:
        verify = str(config.path(config.tracking.acme.ca_bundle))
    try:
        response = requests.get(server, timeout=15, verify=verify)
        response.raise_for_status()
        directory = response.json()
    except requests.exceptions.SSLError as exc:
        raise AcmeError(
            f"the ACME directory {server} has a TLS certificate this machine does not trust "
            f"({_short(exc)}): for a private ACME CA set tracking.acme.ca_bundle"
        ) from None
    except requests.exceptions.HTTPError as exc:
        raise AcmeError(
            f"the ACME directory {server} answered {exc.response.status_code}: check "
            f"tracking.acme.directory (or --server)"
        ) from None
    except requests.exceptions.RequestException as exc:
        raise AcmeError(
            f"cannot reach the ACME directory {server} ({_short(exc)}): check "
            f"tracking.acme.directory (or --server) and this machine's network"
        ) from None
    except ValueError:
        raise AcmeError(
            f"{server} is not an ACME directory (its answer is not JSON): check "
            f"tracking.acme.directory (or --server)"
        ) from None
    if not isinstance(directory, dict) or "newAccount" not in directory:
        raise AcmeError(
            f"{server} is not an ACME directory (no newAccount): check tracking.acme.directory"
        )
    meta = directory.get("meta") or {}
    return meta.get("termsOfService") if isinstance(meta, dict) else None


def _short(exc: BaseException) -> str:
    text = str(exc)
    match = re.search(r"\] ([^\]'\"]+)", text) or re.search(r"Caused by \w+\('([^']+)", text)
    return (match.group(1) if match else text)[:200]


def register(
    config: Config, email: str, server: str, say: Callable[[str], None]
) -> tuple[Account, bool]:
    """Register ``email`` with ``server``; return the account and whether it is new.

    An account that exists already for that server is reported, not an error
    (registering twice must be harmless).
    """
    check_email(email)
    existing = local_account_uri(config, server)
    if existing:
        check = run_certbot(config, server, ["show_account"])
        if check.ok:
            match = re.search(r"Email contact:\s*(\S+)", check.output)
            recorded = current_account(config)
            account = Account(
                server,
                match.group(1) if match else None,
                existing,
                recorded.registered_at if recorded else None,
            )
            _save(config, account)
            return account, False
        if not account_gone(check.output):
            raise AcmeError(certbot_failure(check.output, server=server, what="the account check"))
        _set_aside(config, server)
        say(
            f"The ACME server no longer knows the account registered here ({existing}): "
            f"registering a new one."
        )
    tos = terms_of_service(config, server)
    say(
        "Registering with the ACME server means agreeing to its terms of service"
        + (f": {tos}" if tos else " (the server publishes none)")
    )
    result = run_certbot(
        config, server, ["register", "--email", email, "--agree-tos", "--no-eff-email"]
    )
    if not result.ok:
        raise AcmeError(certbot_failure(result.output, server=server, what="registration"))
    account = Account(server, email, local_account_uri(config, server), utcnow().isoformat(sep=" "))
    _save(config, account)
    return account, True
