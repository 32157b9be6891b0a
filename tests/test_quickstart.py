"""``postal-tracking quickstart DIR``: a new user's first click, end to end."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from web_live import raw_exchange
from web_live import rows

from _support import free_port
from postal_tracking_plugin.config import load_config
from postal_tracking_plugin.store import open_store

BIN = [sys.executable, "-m", "postal_tracking_plugin.cli"]


def test_quickstart_sets_up_tracks_the_sample_and_serves(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    port = free_port(span=2)  # and quickstart's HTTPS port after it
    log = tmp_path / "server.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*BIN, "quickstart", str(directory), "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        assert proc.stdout is not None
        printed = b""
        while b"Starting the fast server" not in printed:
            line = proc.stdout.readline()
            assert line, log.read_text()
            printed += line
        text = printed.decode()
        link = re.search(rf"curl -i http://127\.0\.0\.1:{port}(/\S+)", text)
        assert link, text
        target = re.search(re.escape(link[1]) + r"\s+->\s+(\S+)", text)
        assert target is not None
        assert re.search(rf"Open pixel:\s+http://127\.0\.0\.1:{port}/img/\w+/\w+", text)
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = raw_exchange(
                    "127.0.0.1",
                    port,
                    f"GET {link[1]} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
                )
                break
            except ConnectionRefusedError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert answer.startswith(b"HTTP/1.1 307")
        assert f"\r\nLocation: {target[1]}\r\n".encode() in answer
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    tracked = (directory / "sample-newsletter.tracked.eml").read_bytes()
    assert b"http://click.example.com/" in tracked
    stats = subprocess.run(
        [*BIN, "-c", str(directory / "postal.yml"), "stats"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stats.returncode == 0, stats.stderr
    store = open_store(load_config(directory / "postal.yml"))
    try:
        clicks = rows(store, 1, "SELECT link_id FROM clicks")
    finally:
        store.close()
    assert len(clicks) == 1

    # Again on the same directory: reuses what is there and still works.
    again = subprocess.run(
        [*BIN, "quickstart", str(directory), "--port", str(port), "--no-serve"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    assert "Using the existing" in again.stderr and "curl -i" in again.stdout
