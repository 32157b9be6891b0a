"""`postal-tracking init`, `servers` and `track-domains` as a user runs them."""

from __future__ import annotations

import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
import yaml

from _support import MYSQL
from _support import drop_mysql_databases
from _support import mysql_config_data
from _support import mysql_reachable
from _support import need
from postal_tracking_plugin.cli import main
from postal_tracking_plugin.dns_check import check_track_domain

MESSAGE_COLUMNS = {
    "id": "int(11)",
    "token": "varchar(255)",
    "scope": "varchar(10)",
    "rcpt_to": "varchar(255)",
    "mail_from": "varchar(255)",
    "subject": "varchar(255)",
    "message_id": "varchar(255)",
    "timestamp": "decimal(18,6)",
    "domain_id": "int(11)",
    "tag": "varchar(255)",
    "loaded": "decimal(18,6)",
    "clicked": "decimal(18,6)",
    "tracked_links": "int(11)",
    "tracked_images": "int(11)",
    "parsed": "tinyint(4)",
}


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postal_tracking_plugin.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


@pytest.mark.slow
def test_sqlite_init_servers_and_track_domains(tmp_path: Path) -> None:
    (tmp_path / "postal.yml").write_text("tracking: {data_dir: ./data}\n")
    first = run("init", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "created, self-signed" in first.stderr
    assert (tmp_path / "data" / "default-cert.pem").exists()
    again = run("init", cwd=tmp_path)
    assert again.returncode == 0 and "created" not in again.stderr

    with sqlite3.connect(tmp_path / "data" / "main.sqlite") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"servers", "domains", "track_domains", "track_certificates"} <= tables

    added = run("servers", "add", "Main", cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert len(token) == 6 and token.isalpha() and token.islower()
    with sqlite3.connect(tmp_path / "data" / "messages" / "server-1.sqlite") as conn:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(messages)")}
    assert set(MESSAGE_COLUMNS) <= columns

    td = run(
        "track-domains",
        "add",
        "click.example.com",
        "--server",
        "Main",
        "--assume-dns-ok",
        "--exclude",
        "a.example",
        "--no-track-loads",
        cwd=tmp_path,
    )
    assert td.returncode == 0, td.stderr
    listed = run("track-domains", "list", cwd=tmp_path).stdout
    assert "click.example.com" in listed and "a.example" in listed
    row = listed.splitlines()[1].split()
    assert row[:6] == ["click.example.com", "Main", "OK", "yes", "yes", "no"]

    assert (
        run("track-domains", "set", "click.example.com", "--track-loads", cwd=tmp_path).returncode
        == 0
    )
    assert run("track-domains", "list", cwd=tmp_path).stdout.splitlines()[1].split()[5] == "yes"

    dup = run("servers", "add", "Main", cwd=tmp_path)
    assert dup.returncode == 1
    assert dup.stderr.strip() == "postal-tracking: error: server 'Main' exists already"
    unknown = run("track-domains", "add", "x.example.org", "--server", "Nope", cwd=tmp_path)
    assert unknown.returncode == 1 and "no server named 'Nope'" in unknown.stderr

    assert run("track-domains", "remove", "click.example.com", cwd=tmp_path).returncode == 0
    assert "click.example.com" not in run("track-domains", "list", cwd=tmp_path).stdout


def test_commands_before_init_say_what_to_do(tmp_path: Path) -> None:
    result = run("servers", "list", cwd=tmp_path)
    assert result.returncode == 1
    assert "run `postal-tracking init` first" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_on_every_command(tmp_path: Path) -> None:
    for args in (
        ["--help"],
        ["init", "--help"],
        ["servers", "add", "--help"],
        ["track-domains", "add", "--help"],
        ["track-domains", "set", "--help"],
    ):
        result = run(*args, cwd=tmp_path)
        assert result.returncode == 0 and "usage:" in result.stdout
    assert "air-gapped" in run("track-domains", "add", "--help", cwd=tmp_path).stdout
    version = run("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("postal-tracking ")


@pytest.fixture
def mysql_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    reason = mysql_reachable()
    need(reason is None, reason or "")
    database = f"ptp_cli_{secrets.token_hex(4)}"
    (tmp_path / "postal.yml").write_text(yaml.safe_dump(mysql_config_data(database)))
    yield tmp_path, database
    drop_mysql_databases(database)


def test_mysql_init_creates_postal_tables_and_message_database(mysql_dir: tuple[Path, str]) -> None:
    cwd, database = mysql_dir
    assert run("init", cwd=cwd).returncode == 0
    assert run("init", cwd=cwd).returncode == 0
    added = run("servers", "add", "Main", cwd=cwd)
    assert added.returncode == 0, added.stderr
    conn = pymysql.connect(
        host=MYSQL["host"], port=MYSQL["port"], user=MYSQL["username"], password=MYSQL["password"]
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"SHOW TABLES FROM `{database}`")
            tables = {r[0] for r in cursor.fetchall()}
            cursor.execute(f"SHOW COLUMNS FROM `{database}-server-1`.`messages`")
            columns = {r[0]: r[1] for r in cursor.fetchall()}
            cursor.execute(f"SHOW COLUMNS FROM `{database}-server-1`.`links`")
            links = {r[0]: r[1] for r in cursor.fetchall()}
            cursor.execute(f"SHOW TABLES FROM `{database}-server-1`")
            message_tables = {r[0] for r in cursor.fetchall()}
            cursor.execute(
                "SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA "
                "WHERE SCHEMA_NAME = %s",
                (f"{database}-server-1",),
            )
            charset = cursor.fetchone()[0]
    finally:
        conn.close()
    assert {"servers", "domains", "track_domains", "track_certificates"} <= tables
    assert {"messages", "links", "clicks", "loads"} <= message_tables
    for name, kind in MESSAGE_COLUMNS.items():
        assert columns[name] == kind, name
    assert links["url"] == "text" and links["hash"] == "varchar(255)"
    assert charset == "utf8mb4"


def test_mysql_init_leaves_existing_tables_alone(mysql_dir: tuple[Path, str]) -> None:
    cwd, database = mysql_dir
    conn = pymysql.connect(
        host=MYSQL["host"],
        port=MYSQL["port"],
        user=MYSQL["username"],
        password=MYSQL["password"],
        autocommit=True,
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{database}`")
            # a servers table with a column of its own and a row, and no
            # track_certificates (Postal's own databases: test_postal_mode.py)
            cursor.execute(
                f"CREATE TABLE `{database}`.`servers` (id int(11) NOT NULL "
                "AUTO_INCREMENT PRIMARY KEY, name varchar(255), token varchar(255), "
                "permalink varchar(255), deleted_at datetime(6), extra_postal_col int)"
            )
            cursor.execute(
                f"INSERT INTO `{database}`.`servers` (name, token) VALUES ('P', 'pppppp')"
            )
        assert run("init", cwd=cwd).returncode == 0
        with conn.cursor() as cursor:
            cursor.execute(f"SHOW COLUMNS FROM `{database}`.`servers`")
            columns = [r[0] for r in cursor.fetchall()]
            cursor.execute(f"SELECT name FROM `{database}`.`servers`")
            names = [r[0] for r in cursor.fetchall()]
            cursor.execute(f"SHOW TABLES FROM `{database}` LIKE 'track_certificates'")
            has_certificates = cursor.fetchone() is not None
    finally:
        conn.close()
    assert columns == ["id", "name", "token", "permalink", "deleted_at", "extra_postal_col"]
    assert names == ["P"]
    assert has_certificates


def test_unreachable_mysql_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "postal.yml").write_text(
        "main_db: {host: 127.0.0.1, port: 1, username: root}\ntracking: {store: mysql}\n"
    )
    result = run("init", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "cannot connect to MySQL root@127.0.0.1:1" in result.stderr


def test_main_returns_exit_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    assert main(["servers", "add", "Main", "--token", "BAD"]) == 1


@pytest.mark.parametrize(
    ("answer", "status", "fragment"),
    [
        (["track.postal.example.com"], "OK", None),
        (["Track.Postal.Example.com."], "OK", None),
        ([], "Missing", "There is no CNAME record at click.example.com"),
        (["elsewhere.example.net"], "Invalid", "points to elsewhere.example.net"),
    ],
)
def test_dns_check(answer: list[str], status: str, fragment: str | None) -> None:
    result = check_track_domain("click.example.com", "track.postal.example.com", lambda _: answer)
    assert result.status == status
    if fragment:
        assert fragment in (result.error or "")
    else:
        assert result.error is None


def test_mysql_before_init_says_run_init(mysql_dir: tuple[Path, str]) -> None:
    cwd, database = mysql_dir
    result = run("servers", "list", cwd=cwd)
    assert result.returncode == 1
    assert f"Unknown database '{database}'" in result.stderr
    assert "run `postal-tracking init` first" in result.stderr
