"""Issue 5 end to end: Pebble, the real fast server, and the real CLI.

Pebble validates HTTP-01 against the running fast server (``postal-tracking
fast-server``), which answers from the store; the test then connects with TLS
and SNI, verifies the served chain against Pebble's root, forces a renewal and
sees the new certificate served without a restart, and sees a challenge that
cannot be answered reported in words by ``certs list``. On MariaDB a second
fast server (127.0.0.2) shares the store and serves the same certificates.
"""

from __future__ import annotations

import json
import secrets
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pebble_acme import Pebble
from pebble_acme import available

from _support import drop_mysql_databases
from _support import free_port
from _support import mysql_config_data
from _support import mysql_reachable
from _support import need
from _support import port_free
from postal_tracking_plugin.certificates import run_scheduled_renewal
from postal_tracking_plugin.config import load_config
from postal_tracking_plugin.store import open_store

pytestmark = pytest.mark.slow  # 20-40 s against real Pebble

NAMES = ("click.example.test", "track.example2.test")
BROKEN = "broken.example3.test"


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postal_tracking_plugin.cli", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def ports_for(addresses: list[str]) -> tuple[int, int]:
    """An HTTP and an HTTPS port free on every address (Pebble needs the HTTP one fixed)."""
    for _ in range(50):
        http, https = free_port(), free_port()
        if http != https and all(port_free(p, a) for a in addresses for p in (http, https)):
            return http, https
    raise RuntimeError("no free port pair")


def wait_listening(address: str, port: int, proc: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"fast server exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(
        f"fast server not listening on {address}:{port}: {log.read_text()[-2000:]}"
    )


def served_certificate(address: str, port: int, name: str, root_pem: str) -> bytes:
    """DER of the certificate served for SNI ``name``, after verifying it against Pebble's root."""
    context = ssl.create_default_context(cadata=root_pem)
    with socket.create_connection((address, port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            return tls.getpeercert(binary_form=True)


def wait_served(address: str, port: int, name: str, root_pem: str, pem: str) -> None:
    """The fast server refreshes from the store on its own: poll until it serves ``pem``."""
    want = ssl.PEM_cert_to_DER_cert(pem)
    deadline = time.monotonic() + 65
    last: object = None
    while time.monotonic() < deadline:
        try:
            if served_certificate(address, port, name, root_pem) == want:
                return
            last = "an older or different certificate"
        except (ssl.SSLError, OSError) as exc:
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"{address}:{port} did not serve the new certificate for {name}: {last}")


@pytest.fixture(params=["sqlite", "mysql"])
def backend(request: pytest.FixtureRequest) -> str:
    reason = available()
    need(reason is None, reason or "")
    if request.param == "mysql":
        reason = mysql_reachable()
        need(reason is None, reason or "")
    return request.param


@pytest.fixture
def cluster(backend: str, tmp_path: Path) -> Iterator[dict]:
    """Pebble, postal.yml for one node (SQLite) or two nodes sharing MariaDB, fast servers running."""
    addresses = ["127.0.0.1"] if backend == "sqlite" else ["127.0.0.1", "127.0.0.2"]
    http_port, https_port = ports_for(addresses)
    database = f"ptp_test_{secrets.token_hex(4)}"
    procs: list[subprocess.Popen[str]] = []
    logs: list = []
    with Pebble(tmp_path / "pebble", http_port) as pebble:
        configs = []
        for i, address in enumerate(addresses):
            data: dict = mysql_config_data(database) if backend == "mysql" else {"tracking": {}}
            data["fast_server"] = {
                "enabled": True,
                "bind_address": [address],
                "port": http_port,
                "ssl_port": https_port,
            }
            data["tracking"].update(
                data_dir=f"node{i}",
                workers=1,
                acme={"directory": pebble.directory, "ca_bundle": str(pebble.ca_bundle)},
            )
            path = tmp_path / f"postal-node{i}.yml"
            path.write_text(yaml.safe_dump(data))
            configs.append(path)
            assert cli(path, "init").returncode == 0
        main = configs[0]
        assert cli(main, "servers", "add", "Main").returncode == 0
        for name in (*NAMES, BROKEN):
            added = cli(main, "track-domains", "add", name, "--server", "Main", "--assume-dns-ok")
            assert added.returncode == 0, added.stderr
        try:
            for path, address in zip(configs, addresses, strict=True):
                log = path.with_suffix(".log")
                logs.append(open(log, "w"))  # closed below
                proc = subprocess.Popen(
                    [sys.executable, "-m", "postal_tracking_plugin.cli", "-c", str(path),
                     "fast-server"],
                    stdout=logs[-1], stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    text=True,
                )  # fmt: skip
                procs.append(proc)
                wait_listening(address, http_port, proc, log)
                wait_listening(address, https_port, proc, log)
            yield {
                "pebble": pebble,
                "configs": configs,
                "addresses": addresses,
                "https_port": https_port,
            }
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for handle in logs:
                handle.close()
            if backend == "mysql":
                drop_mysql_databases(database)


def test_issue_serve_renew_and_fail_end_to_end(cluster: dict) -> None:
    pebble: Pebble = cluster["pebble"]
    main: Path = cluster["configs"][0]
    port: int = cluster["https_port"]

    registered = cli(main, "register-lets-encrypt", "ops@example.test")
    assert registered.returncode == 0, registered.stderr

    # broken.example3.test's DNS points where no fast server listens: its challenge fails.
    request = urllib.request.Request(
        f"http://127.0.0.1:{pebble.challtestsrv_port}/add-a",
        data=json.dumps({"host": BROKEN + ".", "addresses": ["127.0.0.9"]}).encode(),
        method="POST",
    )
    urllib.request.urlopen(request, timeout=5).read()

    issued = cli(main, "certs", "issue")
    assert issued.returncode == 1  # one of three failed
    assert BROKEN in issued.stderr and "connection refused" in issued.stderr

    root = pebble.root_pem()
    store = open_store(load_config(main))
    try:
        first = {}
        for name in NAMES:
            cert = store.get_certificate(name)
            assert cert is not None and cert.active, name
            first[name] = cert.certificate
            for address in cluster["addresses"]:  # every fast server, no restart
                wait_served(address, port, name, root, cert.certificate)

        listed = cli(main, "certs", "list")
        assert listed.returncode == 0
        rows = {
            ln.split()[0]: ln.split()[1] for ln in listed.stdout.splitlines()[1:] if ln[:1] != " "
        }
        assert rows == {NAMES[0]: "active", NAMES[1]: "active", BROKEN: "failed"}
        assert (
            f"last error: the HTTP-01 request for http://{BROKEN}:{pebble.http_port}"
            "/.well-known/acme-challenge/... could not connect (connection refused)"
        ) in listed.stdout

        renewed = cli(main, "certs", "renew", "--force", NAMES[0])
        assert renewed.returncode == 0, renewed.stderr
        new = store.get_certificate(NAMES[0]).certificate
        assert new != first[NAMES[0]]
        for address in cluster["addresses"]:
            wait_served(address, port, NAMES[0], root, new)
            wait_served(address, port, NAMES[1], root, first[NAMES[1]])

        # What the fast server's timer calls: nothing is due, the failure backs off.
        assert run_scheduled_renewal(load_config(main)) == 0
        assert store.get_certificate(NAMES[0]).certificate == new
    finally:
        store.close()
