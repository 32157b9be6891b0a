"""``postal-tracking fast-server`` as an operator runs it: a real process, real signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from web_live import add_message
from web_live import names_of
from web_live import peer_certificate
from web_live import raw_exchange
from web_live import rows
from web_live import store_certificate
from web_live import tls_client_context

from _support import free_port
from postal_tracking_plugin.cli import main as cli_main
from postal_tracking_plugin.config import load_config
from postal_tracking_plugin.default_certificate import default_certificate_paths
from postal_tracking_plugin.store import open_store

BIN = [sys.executable, "-m", "postal_tracking_plugin.cli"]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[dict[str, Any]]:
    ports = free_port(), free_port()
    data = {
        "fast_server": {
            "enabled": True,
            "bind_address": "127.0.0.1",
            "port": ports[0],
            "ssl_port": ports[1],
        },
        "tracking": {"data_dir": "data"},
    }
    path = tmp_path / "postal.yml"
    path.write_text(yaml.safe_dump(data))
    assert cli_main(["-c", str(path), "init"]) == 0
    store = open_store(load_config(path))
    server = store.add_server("Main")
    _, links = add_message(store, server.id, ["https://example.com/from-process"])
    yield {
        "path": path,
        "data": data,
        "ports": ports,
        "store": store,
        "server": server,
        "links": links,
    }
    store.close()


def launch(path: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as stderr:
        return subprocess.Popen(
            [*BIN, "-c", str(path), "fast-server", *args], stdout=subprocess.DEVNULL, stderr=stderr
        )


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"server did not listen: {log.read_text()}")


def get(port: int, path: str, headers: str = "") -> bytes:
    request = f"GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n"
    return raw_exchange("127.0.0.1", port, request.encode())


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_refuses_to_start_when_disabled(setup: dict[str, Any], tmp_path: Path) -> None:
    data = {**setup["data"], "fast_server": {**setup["data"]["fast_server"], "enabled": False}}
    setup["path"].write_text(yaml.safe_dump(data))
    result = subprocess.run(
        [*BIN, "-c", str(setup["path"]), "fast-server"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"postal-tracking: error: the fast server is disabled: set fast_server.enabled: true "
        f"and fast_server.bind_address in {setup['path']}"
    ]


def test_refuses_to_start_when_a_port_is_taken(setup: dict[str, Any]) -> None:
    port = setup["ports"][1]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = subprocess.run(
            [*BIN, "-c", str(setup["path"]), "fast-server"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [
        f"postal-tracking: error: port {port} on 127.0.0.1 is in use by another program: stop "
        f"that program or set another fast_server.ssl_port"
    ]


def test_serves_reloads_on_sighup_and_drains_on_sigterm(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    http, https = setup["ports"]
    proc = launch(setup["path"], "--workers", "1", log=log)
    try:
        wait_for_port(http, proc, log)
        path = f"/{setup['server'].token}/{setup['links'][0]}"
        answer = get(http, path, "X-Forwarded-For: 198.51.100.4\r\n")
        assert answer.startswith(b"HTTP/1.1 307")
        assert b"\r\nLocation: https://example.com/from-process\r\n" in answer
        # SIGHUP: trust loopback as a proxy from now on
        data = {
            **setup["data"],
            "tracking": {"data_dir": "data", "trusted_proxies": ["127.0.0.0/8"]},
        }
        setup["path"].write_text(yaml.safe_dump(data))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "reloaded" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert get(http, path, "X-Forwarded-For: 198.51.100.4\r\n").startswith(b"HTTP/1.1 307")
        code = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, log.read_text()
    # Both clicks were flushed to the store before the process exited.
    found = rows(setup["store"], setup["server"].id, "SELECT ip_address FROM clicks ORDER BY id")
    assert [r["ip_address"] for r in found] == ["127.0.0.1", "198.51.100.4"]
    assert "Traceback" not in log.read_text()
    _ = https


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def launch_workers(setup: dict[str, Any], count: int, log: Path) -> tuple[Any, list[int]]:
    """Start the server with ``count`` workers; return it and the workers' pids once all
    serve (and have their signal handlers)."""
    proc = launch(setup["path"], "--workers", str(count), log=log)
    try:
        wait_for_port(setup["ports"][0], proc, log)
        deadline = time.monotonic() + 30
        while log.read_text().count(" serving (pid ") < count:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        workers = _children(proc.pid)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, workers


def test_two_workers_answer_on_http_and_https(setup: dict[str, Any], tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    http, https = setup["ports"]
    proc, _workers = launch_workers(setup, 2, log)
    try:
        path = f"/{setup['server'].token}/{setup['links'][0]}"
        for _ in range(20):
            assert get(http, path).startswith(b"HTTP/1.1 307")
        ctx = tls_client_context()
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", https), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname="click.example.com") as tls:
                    tls.sendall(
                        f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
                    )
                    assert tls.recv(100).startswith(b"HTTP/1.1 307")
        code = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, log.read_text()
    assert len(rows(setup["store"], setup["server"].id, "SELECT id FROM clicks")) == 30


def resumptions(port: int, server_name: str | None, count: int) -> list[bool]:
    """Whether each of ``count`` HTTPS requests in a row resumed the session of the one before."""
    ctx = tls_client_context()
    session, resumed = None, []
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=server_name, session=session) as tls:
                tls.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                while tls.recv(4096):  # to the end: the ticket comes after the handshake
                    pass
                resumed.append(tls.session_reused)
                session = tls.session
    return resumed


@pytest.mark.parametrize("name", ["unknown.example", "click.stored.example"])
def test_tls_sessions_resume_on_either_worker(
    setup: dict[str, Any], tmp_path: Path, name: str
) -> None:
    """A session ticket from one worker resumes on the other (the kernel picks a
    worker per connection), as nginx's workers share theirs: on the default
    certificate and on a tracking domain's own."""
    store_certificate(setup["store"], trustme.CA(), "click.stored.example", trustme.KeyType.ECDSA)
    log = tmp_path / "server.log"
    _, https = setup["ports"]
    proc, _workers = launch_workers(setup, 2, log)
    try:
        served = names_of(peer_certificate(https, name))
        assert (served == [name]) == (name == "click.stored.example"), served
        assert resumptions(https, name, 16) == [False] + [True] * 15
    finally:
        stop(proc)


def test_a_replacement_worker_serves_the_reloaded_default_certificate_and_resumes(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    """A worker started after SIGHUP (its predecessor died) starts from the
    supervisor's reloaded default certificate, with the same ticket keys."""
    log = tmp_path / "server.log"
    _, https = setup["ports"]
    proc, workers = launch_workers(setup, 2, log)
    try:
        issued = trustme.CA().issue_cert("new-default.example", key_type=trustme.KeyType.ECDSA)
        cert, key = default_certificate_paths(load_config(setup["path"]))
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while log.read_text().count("configuration and certificates reloaded") < 2:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        os.kill(workers[0], signal.SIGKILL)
        while log.read_text().count(" serving (pid ") < 3:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        served = set()
        for _ in range(16):  # full handshakes (a resumed one sends no certificate)
            served.update(names_of(peer_certificate(https, None)))
        assert served == {"new-default.example"}
        assert resumptions(https, None, 16) == [False] + [True] * 15
    finally:
        stop(proc)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # an exited orphan may wait unreaped


def test_workers_stop_when_their_supervisor_is_killed(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    http, _https = setup["ports"]
    proc, workers = launch_workers(setup, 2, log)
    try:
        path = f"/{setup['server'].token}/{setup['links'][0]}"
        assert get(http, path).startswith(b"HTTP/1.1 307")
        proc.kill()  # SIGKILL: no chance to pass anything on
        proc.wait()
        deadline = time.monotonic() + 20
        while any(_running(pid) for pid in workers):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        for pid in workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
    text = log.read_text()
    assert text.count("is gone: worker") == 2, text
    assert "events flushed" in text, text
    # The click answered before the kill was written by its worker on the way out.
    assert len(rows(setup["store"], setup["server"].id, "SELECT id FROM clicks")) == 1
