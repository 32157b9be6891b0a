"""Pebble (Let's Encrypt's test ACME server) and pebble-challtestsrv on loopback, for tests.

:class:`Pebble` starts both on free ports: challtestsrv as Pebble's DNS server,
answering every name with 127.0.0.1 (and no AAAA, so Pebble never dials ::1),
and Pebble with ``httpPort`` set to the port the HTTP-01 responder (the fast
server) listens on. Pebble's own listener gets a certificate from a throw-away
CA (trustme); ``ca_bundle`` is what clients must trust. Every start gives a new
root, so accounts and certificates from an earlier run mean nothing to it.

:class:`StoreResponder` is a tiny HTTP-01 responder that answers from the
store's ``track_certificates`` rows, the way the fast server does: for tests
that are about issuance rather than the server.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import trustme

from _support import free_port
from postal_tracking_plugin.config import Config
from postal_tracking_plugin.store import open_store

PREFIX = "/.well-known/acme-challenge/"


def available() -> str | None:
    """None when pebble and pebble-challtestsrv are installed, else why not."""
    missing = [n for n in ("pebble", "pebble-challtestsrv") if shutil.which(n) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (apt-get install pebble)"
    return None


class Pebble:
    """Pebble + challtestsrv processes; use as a context manager."""

    def __init__(self, workdir: Path, http_port: int) -> None:
        self.workdir = workdir
        self.http_port = http_port
        self.acme_port = free_port()
        self.management_port = free_port()
        self.dns_port = free_port()
        self.challtestsrv_port = free_port()
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[Any] = []

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.acme_port}/dir"

    @property
    def ca_bundle(self) -> Path:
        return self.workdir / "pebble-listener-ca.pem"

    def __enter__(self) -> Pebble:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        ca.cert_pem.write_to_path(str(self.ca_bundle))
        leaf.cert_chain_pems[0].write_to_path(str(self.workdir / "pebble-cert.pem"))
        leaf.private_key_pem.write_to_path(str(self.workdir / "pebble-key.pem"))
        conf = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.acme_port}",
                "managementListenAddress": f"127.0.0.1:{self.management_port}",
                "certificate": str(self.workdir / "pebble-cert.pem"),
                "privateKey": str(self.workdir / "pebble-key.pem"),
                "httpPort": self.http_port,
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        (self.workdir / "pebble-config.json").write_text(json.dumps(conf))
        try:
            self._start(
                [
                    "pebble-challtestsrv",
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                    "-dns01",
                    f"127.0.0.1:{self.dns_port}",
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-management",
                    f"127.0.0.1:{self.challtestsrv_port}",
                ],
                "challtestsrv.log",
                {},
            )
            self._start(
                [
                    "pebble",
                    "-config",
                    str(self.workdir / "pebble-config.json"),
                    "-dnsserver",
                    f"127.0.0.1:{self.dns_port}",
                    "-strict=false",
                ],
                "pebble.log",
                # No random validation sleep, no rejected nonces, no reused
                # authorizations: every order really runs HTTP-01, quickly.
                {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"},
            )
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self, argv: list[str], log: str, env: dict[str, str]) -> None:
        out = open(self.workdir / log, "wb")  # closed in __exit__
        self._logs.append(out)
        self._procs.append(
            subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env},
            )
        )

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 15
        while True:
            for proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited: {self.log_tail()}")
            try:
                urllib.request.urlopen(self.directory, context=self._context(), timeout=2).read()
                with socket.create_connection(("127.0.0.1", self.dns_port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pebble did not start: {self.log_tail()}") from None
                time.sleep(0.05)

    def root_pem(self) -> str:
        """This run's root certificate, from Pebble's management port."""
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        return urllib.request.urlopen(url, context=self._context(), timeout=5).read().decode()

    def intermediate_pem(self) -> str:
        url = f"https://127.0.0.1:{self.management_port}/intermediates/0"
        return urllib.request.urlopen(url, context=self._context(), timeout=5).read().decode()

    def log_tail(self, lines: int = 20) -> str:
        text = ""
        for name in ("pebble.log", "challtestsrv.log"):
            path = self.workdir / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                text += f"\n--- {name}\n" + "\n".join(tail)
        return text

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()


class StoreResponder:
    """Answers HTTP-01 from the store, as the fast server does (Host + path lookup)."""

    def __init__(
        self, config: Config, host: str, port: int, ignore: set[str] | frozenset[str] = frozenset()
    ) -> None:
        self.store = open_store(config)
        self.requests: list[tuple[str, str, int]] = []
        responder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name
                host = (self.headers.get("Host") or "").rsplit(":", 1)[0].lower()
                body, code = b"not found", 404
                if self.path.startswith(PREFIX) and host not in ignore:
                    cert = responder.store.get_certificate(host)
                    if cert and cert.verification_path == self.path and cert.verification_string:
                        body, code = cert.verification_string.encode(), 200
                responder.requests.append((host, self.path, code))
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StoreResponder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
        with contextlib.suppress(Exception):
            self.store.close()
