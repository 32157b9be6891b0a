"""Certificate bookkeeping without an ACME server: back-off, renewal dates, the lock,
errors in words, the hooks' refusal of unregistered names, and the CLI's one-line errors."""

from __future__ import annotations

import datetime as _dt
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from _support import free_port
from postal_tracking_plugin.certificates import certificate_report
from postal_tracking_plugin.certificates import renew_after
from postal_tracking_plugin.certificates import run_scheduled_renewal
from postal_tracking_plugin.certificates._explain import explain_issue_failure
from postal_tracking_plugin.certificates._issue import Issuer
from postal_tracking_plugin.certificates._issue import is_due
from postal_tracking_plugin.certificates._state import acquire_lock
from postal_tracking_plugin.certificates._state import get_status
from postal_tracking_plugin.certificates._state import lock_owner
from postal_tracking_plugin.certificates._state import mark_active
from postal_tracking_plugin.certificates._state import mark_failed
from postal_tracking_plugin.certificates._state import release_lock
from postal_tracking_plugin.config import load_config
from postal_tracking_plugin.store import Store
from postal_tracking_plugin.store import utcnow

DAY = _dt.timedelta(days=1)

# certbot 5.8's output when Pebble's HTTP-01 request got a 404 (recorded on this machine).
CERTBOT_404 = """Saving debug log to /srv/data/letsencrypt/logs/letsencrypt.log
Requesting a certificate for click.example.com

Certbot failed to authenticate some domains (authenticator: manual). The Certificate Authority reported these problems:
  Identifier: click.example.com
  Type:   unauthorized
  Detail: Non-200 status code from HTTP: http://click.example.com/.well-known/acme-challenge/x3Kq-9_zAbC returned 404

Hint: The Certificate Authority failed to verify the challenge files created by the --manual-auth-hook. Ensure that this hook is functioning correctly and that it waits a sufficient duration of time for DNS propagation. Refer to "certbot --help manual" and the Certbot User Guide.

Some challenges have failed.
Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile /srv/data/letsencrypt/logs/letsencrypt.log or re-run Certbot with -v for more details.
"""


def test_renew_after_is_thirty_days_before_expiry_plus_up_to_ten() -> None:
    issued = _dt.datetime(2026, 1, 1)
    expires = issued + 90 * DAY
    rng = random.Random(7)
    dates = [renew_after(issued, expires, rng) for _ in range(200)]
    assert all(expires - 30 * DAY <= d <= expires - 20 * DAY for d in dates)
    assert max(dates) - min(dates) > 5 * DAY  # spread out, not one instant for a fleet
    # A short-lived certificate is still renewed well after issue and before expiry.
    short = renew_after(issued, issued + 6 * DAY, rng)
    assert issued + 3 * DAY < short < issued + 6 * DAY


def test_failures_back_off_one_six_then_24_hours(store: Store) -> None:
    before = utcnow()
    waits = []
    for _ in range(4):
        status = mark_failed(store, "click.example.com", "the HTTP-01 request ... got 404")
        waits.append(status.next_attempt_at - before)
    hours = [round(w / _dt.timedelta(hours=1)) for w in waits]
    assert hours == [1, 6, 24, 24]
    status = get_status(store, "click.example.com")
    assert status.status == "failed" and status.attempts == 4
    assert not is_due(None, status, utcnow())  # backing off: not retried yet
    assert is_due(None, status, status.next_attempt_at + _dt.timedelta(seconds=1))
    mark_active(store, "click.example.com")
    status = get_status(store, "click.example.com")
    assert (status.status, status.attempts, status.last_error) == ("active", 0, None)


def test_renewal_lock_one_holder_at_a_time(store: Store) -> None:
    assert acquire_lock(store, "node-a:1", ttl=60)
    assert not acquire_lock(store, "node-b:2", ttl=60)
    assert lock_owner(store)[0] == "node-a:1"
    assert acquire_lock(store, "node-a:1", ttl=60)  # the holder extends it
    release_lock(store, "node-b:2")  # not the holder: no effect
    assert lock_owner(store)[0] == "node-a:1"
    release_lock(store, "node-a:1")
    assert lock_owner(store) is None
    assert acquire_lock(store, "node-b:2", ttl=0.05)
    time.sleep(0.1)  # node-b died holding it; the lock expires
    assert acquire_lock(store, "node-c:3", ttl=60)


def test_status_in_words_and_only_registered_domains(store: Store, backend_config) -> None:
    server = store.add_server("Main")
    store.add_track_domain(server, "click.example.com", dns_status="OK")
    store.add_track_domain(server, "nodns.example.net", dns_status="Missing")
    store.add_track_domain(server, "plain.example.org", dns_status="OK", ssl_enabled=False)
    issuer = Issuer(backend_config, store)
    assert [td.full_name for td in issuer.due()] == ["click.example.com"]
    with pytest.raises(Exception, match="not a tracking domain"):
        issuer.named(["random-sni-name.example.org"])
    with pytest.raises(Exception, match="DNS check of nodns.example.net has not passed"):
        issuer.named(["nodns.example.net"])
    error = explain_issue_failure(CERTBOT_404, "click.example.com", "https://acme.test/dir")
    assert error == (
        "the HTTP-01 request for http://click.example.com/.well-known/acme-challenge/... got 404: "
        "is the CNAME pointing at this server?"
    )
    mark_failed(store, "click.example.com", error)
    report = {r.domain: r for r in certificate_report(store)}
    assert report["click.example.com"].status == "failed"
    assert report["click.example.com"].last_error == error
    assert report["nodns.example.net"].status == "none"
    assert "check-dns" in report["nodns.example.net"].note
    assert report["plain.example.org"].status == "none"
    assert "SSL is off" in report["plain.example.org"].note

    # A renewal that fails while the certificate is still valid: still served, error shown.
    store.save_certificate(
        "click.example.com", certificate="PEM", key="KEY", expires_at=utcnow() + 20 * DAY
    )
    report = {r.domain: r for r in certificate_report(store)}
    assert report["click.example.com"].status == "active"
    assert report["click.example.com"].last_error == error
    assert "renewal failed" in report["click.example.com"].note


def cli(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postal_tracking_plugin.cli", "-c", str(tmp_path / "postal.yml"), *args],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    (tmp_path / "postal.yml").write_text(
        yaml.safe_dump(
            {
                "tracking": {
                    "data_dir": "data",
                    "acme": {"directory": f"https://127.0.0.1:{port}/dir"},
                }
            }
        )
    )
    assert cli(tmp_path, "init").returncode == 0
    missing = cli(tmp_path, "register-lets-encrypt")
    assert missing.returncode == 1 and "tracking.acme.email" in missing.stderr
    bad = cli(tmp_path, "register-lets-encrypt", "not-an-address")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "'not-an-address' is not an e-mail address" in bad.stderr
    down = cli(tmp_path, "register-lets-encrypt", "ops@example.com")
    assert down.returncode == 1 and down.stderr.count("\n") == 1
    assert f"cannot reach the ACME directory https://127.0.0.1:{port}/dir" in down.stderr
    unknown = cli(tmp_path, "certs", "issue", "random.example.org")
    assert unknown.returncode == 1 and "is not a tracking domain" in unknown.stderr
    listed = cli(tmp_path, "certs", "list")
    assert listed.returncode == 0 and "register-lets-encrypt EMAIL" in listed.stderr
    # Without an account a scheduled renewal does nothing, and does not raise.
    assert run_scheduled_renewal(load_config(tmp_path / "postal.yml")) is None


def test_auth_hook_refuses_names_that_are_not_tracking_domains(
    store: Store, backend_config
) -> None:
    server = store.add_server("Main")
    store.add_track_domain(server, "click.example.com", dns_status="OK")
    base = {**os.environ, "POSTAL_TRACKING_CONFIG": backend_config.source, "CERTBOT_TOKEN": "tok"}
    hook = [sys.executable, "-m", "postal_tracking_plugin.certificates.certbot_hook", "auth"]

    refused = subprocess.run(
        hook, env={**base, "CERTBOT_DOMAIN": "evil.example.org", "CERTBOT_VALIDATION": "v"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode == 1 and "refusing" in refused.stderr, refused.stderr
    assert store.get_certificate("evil.example.org") is None

    ok = subprocess.run(
        hook, env={**base, "CERTBOT_DOMAIN": "click.example.com", "CERTBOT_VALIDATION": "tok.key"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    cert = store.get_certificate("click.example.com")
    assert cert.verification_path == "/.well-known/acme-challenge/tok"
    assert cert.verification_string == "tok.key"
    cleanup = [*hook[:-1], "cleanup"]
    env = {**base, "CERTBOT_DOMAIN": "click.example.com"}
    cleaned = subprocess.run(cleanup, env=env, capture_output=True, text=True)
    assert cleaned.returncode == 0, cleaned.stderr
    cert = store.get_certificate("click.example.com")
    assert cert.verification_path is None and cert.verification_string is None


def certbot_problem(domain: str, typ: str, detail: str) -> str:
    return (
        "Certbot failed to authenticate some domains (authenticator: manual). The Certificate "
        f"Authority reported these problems:\n  Identifier: {domain}\n  Type:   {typ}\n"
        f"  Detail: {detail}\n\nSome challenges have failed.\n"
    )


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (
            certbot_problem(
                "click.example.com", "dns",
                "DNS problem: NXDOMAIN looking up A for click.example.com - check that a DNS "
                "record exists for this domain",
            ),
            "the CA could not look up click.example.com (DNS problem: NXDOMAIN looking up A for "
            "click.example.com - check that a DNS record exists for this domain): add the CNAME "
            "record and run `postal-tracking track-domains check-dns click.example.com`",
        ),
        (
            certbot_problem(
                "click.example.com", "unauthorized",
                'The key authorization file from the server did not match this challenge "a.b" != "garbage"',
            ),
            "the HTTP-01 request for http://click.example.com/.well-known/acme-challenge/... got an "
            "answer, but not this challenge's: is the CNAME pointing at this server, and is every "
            "server behind it using this store?",
        ),
        (
            certbot_problem(
                "click.example.com", "connection",
                "203.0.113.7: Fetching http://click.example.com/.well-known/acme-challenge/Tok3n: "
                "Timeout during connect (likely firewall problem)",
            ),
            "the HTTP-01 request for http://click.example.com/.well-known/acme-challenge/... timed "
            "out: is a firewall blocking the HTTP port of the address click.example.com points at?",
        ),
        (
            "An unexpected error occurred:\nunable to find existing account for only-return-existing "
            "request\nAsk for help or search for solutions at https://community.letsencrypt.org.\n",
            "the ACME server https://acme.test/dir no longer knows the account registered here (was "
            "it reset?): run `postal-tracking register-lets-encrypt EMAIL` again, which replaces it",
        ),
        (
            "An unexpected error occurred:\nrequests.exceptions.ConnectionError: HTTPSConnectionPool("
            "host='acme.test', port=443): Max retries exceeded with url: /dir (Caused by "
            "NewConnectionError('Failed to establish a new connection: [Errno 111] Connection refused'))\n",
            "cannot reach the ACME server https://acme.test/dir: check tracking.acme.directory and "
            "this machine's network",
        ),
    ],
)  # fmt: skip
def test_certbot_failures_in_words(output: str, expected: str) -> None:
    assert explain_issue_failure(output, "click.example.com", "https://acme.test/dir") == expected
