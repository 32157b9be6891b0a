"""`postal-tracking rewrite` as a user runs it: message on stdout, summary on stderr."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import postal_tracking_plugin

SAMPLE = Path(postal_tracking_plugin.__file__).parent / "data" / "sample-newsletter.eml"


def run(*args: str, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "postal_tracking_plugin.cli", *args],
        capture_output=True,
        cwd=cwd,
        input=stdin,
    )


@pytest.fixture
def setup_dir(tmp_path: Path) -> Path:
    (tmp_path / "postal.yml").write_text(
        "fast_server: {enabled: true, bind_address: 127.0.0.1}\ntracking: {data_dir: ./data}\n"
    )
    for args in (
        ["init"],
        ["servers", "add", "Main", "--token", "srvtok"],
        ["track-domains", "add", "click.example.com", "--server", "Main", "--assume-dns-ok"],
    ):
        done = run(*args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    return tmp_path


def test_rewrite_a_file(setup_dir: Path) -> None:
    done = run("rewrite", "--server", "Main", "--rcpt", "r@example.org", str(SAMPLE), cwd=setup_dir)
    assert done.returncode == 0, done.stderr
    summary = done.stderr.decode().strip().splitlines()[-1]
    m = re.fullmatch(r"tracked 15 links, 1 image, message token ([A-Za-z0-9]{16})", summary)
    assert m, summary
    assert done.stdout.startswith(b'From: "The Example Team" <news@example.com>\n')
    assert b"http://click.example.com/srvtok/" in done.stdout
    with sqlite3.connect(setup_dir / "data" / "messages" / "server-1.sqlite") as conn:
        ((rcpt, links),) = conn.execute(
            "SELECT rcpt_to, tracked_links FROM messages WHERE token = ?", (m.group(1),)
        ).fetchall()
        assert rcpt == "r@example.org" and links == 15
        assert conn.execute("SELECT count(*) FROM links").fetchone() == (15,)


def test_rewrite_stdin_untracked_sender(setup_dir: Path) -> None:
    raw = b"From: a@elsewhere.example\nSubject: x\n\nhttps://a.example/\n"
    done = run("rewrite", "--server", "srvtok", "-", cwd=setup_dir, stdin=raw)
    assert done.returncode == 0
    assert done.stdout == raw
    assert done.stderr.decode().strip() == "not tracked: no tracking domain for elsewhere.example"


def test_user_errors_are_one_line(setup_dir: Path) -> None:
    done = run("rewrite", "--server", "Nope", str(SAMPLE), cwd=setup_dir)
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode().startswith("postal-tracking: error: no server named 'Nope'")
    done = run("rewrite", "--server", "Main", "missing.eml", cwd=setup_dir)
    assert done.returncode == 1
    assert done.stderr.decode().strip() == (
        "postal-tracking: error: cannot read missing.eml: No such file or directory"
    )
