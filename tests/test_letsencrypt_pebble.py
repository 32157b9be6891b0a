"""register-lets-encrypt and certs issue/renew/list against a real ACME server (Pebble).

HTTP-01 is answered here by a small responder reading the store the way the
fast server does (tests/pebble_acme.py); the end-to-end test with the real fast
server, on SQLite and on MariaDB, is in test_letsencrypt_e2e.py.
"""

from __future__ import annotations

import os
import pty
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import rsa
from pebble_acme import Pebble
from pebble_acme import StoreResponder
from pebble_acme import available

from _support import drop_mysql_databases
from _support import free_port
from _support import mysql_config_data
from _support import mysql_reachable
from _support import need
from postal_tracking_plugin.certificates._state import acquire_lock
from postal_tracking_plugin.certificates._state import release_lock
from postal_tracking_plugin.config import load_config
from postal_tracking_plugin.store import open_store

pytestmark = pytest.mark.slow  # 3-26 s each against real Pebble


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command, as a user (or cron: stdin/stderr are not a terminal) runs it."""
    return subprocess.run(
        [sys.executable, "-m", "postal_tracking_plugin.cli", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def cli_on_terminal(config: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run the command with stderr on a pseudo-terminal, as a user at a shell would."""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "postal_tracking_plugin.cli", "-c", str(config), *args],
            stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=120,
        )  # fmt: skip
        os.close(terminal)
        terminal = -1
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    return proc, b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    reason = available()
    need(reason is None, reason or "")
    with Pebble(tmp_path_factory.mktemp("pebble"), free_port()) as p:
        yield p


def write_setup(tmp_path: Path, pebble: Pebble, backend: str, **acme: str) -> Path:
    data: dict = {"tracking": {"data_dir": "data"}}
    database = None
    if backend == "mysql":
        reason = mysql_reachable()
        need(reason is None, reason or "")
        database = f"ptp_test_{secrets.token_hex(4)}"
        data = mysql_config_data(database)
        data["tracking"]["data_dir"] = "data"
    data["tracking"]["acme"] = {
        "directory": pebble.directory,
        "ca_bundle": str(pebble.ca_bundle),
        **acme,
    }
    data["fast_server"] = {"port": pebble.http_port}
    path = tmp_path / "postal.yml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def setup(tmp_path: Path, pebble: Pebble) -> Iterator[Path]:
    # SQLite only: test_letsencrypt_e2e.py runs the same flow on MariaDB, with
    # the real fast server (two of them), and the bookkeeping is tested on both
    # backends in test_letsencrypt_state.py.
    path = write_setup(tmp_path, pebble, "sqlite")
    yield path
    config = load_config(path)
    if config.tracking.store == "mysql":
        drop_mysql_databases(config.main_db.database)


def add_domains(config: Path, *names: str, dns_ok: bool = True) -> None:
    assert cli(config, "init").returncode == 0
    if cli(config, "servers", "list").stdout.strip() == "":
        assert cli(config, "servers", "add", "Main").returncode == 0
    for name in names:
        args = ["track-domains", "add", name, "--server", "Main"]
        added = cli(config, *(args + (["--assume-dns-ok"] if dns_ok else [])))
        assert added.returncode == 0, added.stderr


def verify_chain(cert_pem: str, chain_pem: str, root_pem: str, name: str) -> x509.Certificate:
    leaf = x509.load_pem_x509_certificate(cert_pem.encode())
    chain = x509.load_pem_x509_certificates(chain_pem.encode())
    root = x509.load_pem_x509_certificate(root_pem.encode())
    store = x509.verification.Store([root])
    verifier = (
        x509.verification.PolicyBuilder().store(store).build_server_verifier(x509.DNSName(name))
    )
    verifier.verify(leaf, chain)
    return leaf


def test_register_issue_list_renew_and_failure(setup: Path, pebble: Pebble) -> None:
    config = load_config(setup)
    add_domains(setup, "click.example.test", "track.example2.test", "broken.example3.test")

    first = cli(setup, "register-lets-encrypt", "ops@example.test")
    assert first.returncode == 0, first.stderr
    assert "terms of service" in first.stderr
    assert first.stdout.startswith(f"https://127.0.0.1:{pebble.acme_port}/my-account/")
    again = cli(setup, "register-lets-encrypt", "ops@example.test")
    assert again.returncode == 0, again.stderr
    assert "already registered" in again.stderr and again.stdout == first.stdout
    assert (config.data_dir / "letsencrypt" / "config" / "accounts").is_dir()

    store = open_store(config)
    # broken.example3.test's CNAME "points elsewhere": this responder never answers for it.
    with StoreResponder(config, "127.0.0.1", pebble.http_port, ignore={"broken.example3.test"}):
        issued = cli(setup, "certs", "issue", "click.example.test", "track.example2.test")
        assert issued.returncode == 0, issued.stdout + issued.stderr
        assert issued.stderr == ""  # quiet when not on a terminal

        root = pebble.root_pem()
        first_certs = {}
        for name in ("click.example.test", "track.example2.test"):
            cert = store.get_certificate(name)
            assert cert is not None and cert.active
            leaf = verify_chain(cert.certificate, cert.intermediaries, root, name)
            assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
            assert leaf.public_key().curve.name == "secp256r1"
            assert cert.verification_path is None and cert.verification_string is None
            assert cert.renew_after < cert.expires_at
            first_certs[name] = cert.certificate

        failed = cli(setup, "certs", "issue", "broken.example3.test")
        assert failed.returncode == 1
        assert "broken.example3.test" in failed.stderr and "got 404" in failed.stderr

        listed = cli(setup, "certs", "list")
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        row = {ln.split()[0]: ln.split()[1] for ln in lines[1:] if not ln.startswith(" ")}
        assert row == {
            "click.example.test": "active",
            "track.example2.test": "active",
            "broken.example3.test": "failed",
        }
        assert (
            "last error: the HTTP-01 request for http://broken.example3.test:"
            f"{pebble.http_port}/.well-known/acme-challenge/... got 404: "
            "is the CNAME pointing at this server?"
        ) in listed.stdout
        assert "next attempt:" in listed.stdout and "(failed 1x)" in listed.stdout
        assert store.get_certificate("broken.example3.test").verification_path is None

        # Nothing is due and the failure is backing off: renew does nothing, quietly.
        quiet = cli(setup, "certs", "renew")
        assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
        assert "(failed 1x)" in cli(setup, "certs", "list").stdout

        forced = cli(setup, "certs", "renew", "--force", "click.example.test")
        assert forced.returncode == 0, forced.stderr
        renewed = store.get_certificate("click.example.test")
        assert renewed.certificate != first_certs["click.example.test"]
        verify_chain(renewed.certificate, renewed.intermediaries, root, "click.example.test")
        assert (
            store.get_certificate("track.example2.test").certificate
            == first_certs["track.example2.test"]
        )
    store.close()


def test_rsa_key_type(tmp_path: Path, pebble: Pebble) -> None:
    setup = write_setup(tmp_path, pebble, "sqlite", key_type="rsa")
    add_domains(setup, "rsa.example.test")
    assert cli(setup, "register-lets-encrypt", "ops@example.test").returncode == 0
    with StoreResponder(load_config(setup), "127.0.0.1", pebble.http_port):
        issued, progress = cli_on_terminal(setup, "certs", "issue")
    assert issued.returncode == 0, progress
    # On a terminal: a progress line per domain, ending in its outcome.
    assert "[1/1] rsa.example.test: requesting a certificate ..." in progress
    assert "[1/1] rsa.example.test: active, expires " in progress
    store = open_store(load_config(setup))
    leaf = x509.load_pem_x509_certificate(
        store.get_certificate("rsa.example.test").certificate.encode()
    )
    store.close()
    assert isinstance(leaf.public_key(), rsa.RSAPublicKey) and leaf.public_key().key_size == 2048


def test_refused_registration_is_one_line(tmp_path: Path, pebble: Pebble) -> None:
    setup = write_setup(tmp_path, pebble, "sqlite")
    # Pebble refuses contacts whose domain it finds unacceptable; "localhost" has no dot,
    # so our own check stops it first: either way, one line and exit 1.
    for email in ("not-an-address", "ops@localhost"):
        result = cli(setup, "register-lets-encrypt", email)
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and "e-mail address" in result.stderr
    # This one passes our check, and the ACME server refuses it.
    refused = cli(setup, "register-lets-encrypt", "o<p>s@example.com")
    assert refused.returncode == 1
    # After the terms-of-service line, exactly one line says what went wrong.
    assert refused.stderr.splitlines()[1:] == [
        "postal-tracking: error: the ACME server refused the e-mail address o<p>s@example.com "
        "as invalid: give one it accepts (Let's Encrypt also checks that its domain exists)"
    ]


def test_register_again_after_the_server_forgot_the_account(tmp_path: Path) -> None:
    reason = available()
    need(reason is None, reason or "")
    http_port = free_port()
    with Pebble(tmp_path / "first", http_port) as first:
        setup = write_setup(tmp_path, first, "sqlite")
        add_domains(setup, "click.example.test")
        assert cli(setup, "register-lets-encrypt", "ops@example.test").returncode == 0
    # Pebble forgets every account when it restarts (a CA may also deactivate one).
    second = Pebble(tmp_path / "second", http_port)
    second.acme_port = first.acme_port
    with second:
        setup = write_setup(tmp_path, second, "sqlite")  # the new run's CA bundle
        with StoreResponder(load_config(setup), "127.0.0.1", http_port):
            failed = cli(setup, "certs", "issue")
            assert failed.returncode == 1
            assert "no longer knows the account registered here" in failed.stderr
            again = cli(setup, "register-lets-encrypt", "ops@example.test")
            assert again.returncode == 0, again.stderr
            assert "registering a new one" in again.stderr
            issued = cli(setup, "certs", "issue")
            assert issued.returncode == 0, issued.stderr


GEVENT_CALLER = """
from gevent import monkey

monkey.patch_all()
import sys

import gevent

from postal_tracking_plugin.certificates import run_scheduled_renewal
from postal_tracking_plugin.certificates._state import acquire_lock
from postal_tracking_plugin.certificates._state import release_lock
from postal_tracking_plugin.config import load_config

ticks = []
gevent.spawn(lambda: [ticks.append(gevent.sleep(0.05)) for _ in range(100000)])
# As the fast server calls it: in a thread of gevent's pool, off the hub.
rc = gevent.get_hub().threadpool.spawn(run_scheduled_renewal, load_config(sys.argv[1])).get()
print(rc, len(ticks) > 0)
"""


def test_scheduled_renewal_from_a_gevent_server(tmp_path: Path, pebble: Pebble) -> None:
    setup = write_setup(tmp_path, pebble, "sqlite")
    add_domains(setup, "new.example.test")
    assert cli(setup, "register-lets-encrypt", "ops@example.test").returncode == 0
    with StoreResponder(load_config(setup), "127.0.0.1", pebble.http_port):
        caller = subprocess.run(
            [sys.executable, "-c", GEVENT_CALLER, str(setup)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    # Exit status 0 from `certs renew`, and the hub kept serving meanwhile.
    assert caller.stdout.split() == ["0", "True"], caller.stderr
    store = open_store(load_config(setup))
    assert store.get_certificate("new.example.test").active  # the missing one was issued
    store.close()


def test_one_node_at_a_time(tmp_path: Path, pebble: Pebble) -> None:
    setup = write_setup(tmp_path, pebble, "sqlite")
    add_domains(setup, "click.example.test")
    assert cli(setup, "register-lets-encrypt", "ops@example.test").returncode == 0
    store = open_store(load_config(setup))
    assert acquire_lock(store, "other-node:4242", ttl=300)  # another node is renewing
    try:
        # From cron or the fast server's timer: skipped quietly, not an error.
        renew = cli(setup, "certs", "renew")
        assert (renew.returncode, renew.stdout, renew.stderr) == (0, "", "")
        # Asked for by hand: told who holds the lock.
        issue = cli(setup, "certs", "issue", "click.example.test")
        assert issue.returncode == 1
        assert "other-node:4242 is issuing or renewing certificates right now" in issue.stderr
        assert store.get_certificate("click.example.test") is None
    finally:
        release_lock(store, "other-node:4242")
        store.close()
