"""postal.yml loading: defaults, Postal's keys, our strict section, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from postal_tracking_plugin.config import Config
from postal_tracking_plugin.config import load_config
from postal_tracking_plugin.config import parse_config
from postal_tracking_plugin.errors import ConfigError


def test_defaults_keep_tracking_off() -> None:
    config = parse_config("")
    assert config.fast_server.enabled is False
    assert config.fast_server.port == 5010
    assert config.fast_server.ssl_port == 5011
    assert config.tracking.store == "sqlite"
    assert config.tracking.pixel_position == "bottom"
    assert config.main_db.database == "postal"
    assert config.message_db_prefix == "postal"
    assert config.max_message_bytes == 14 * 1024 * 1024


def test_seed_minimal_form_and_bind_address_list() -> None:
    config = parse_config("fast_server:\n  enabled: true\n  bind_address: 192.168.0.4\n")
    assert config.fast_server.enabled is True
    assert config.fast_server.bind_address == ("192.168.0.4",)
    config = parse_config("fast_server: {enabled: true, bind_address: [127.0.0.1, '::1']}")
    assert config.fast_server.bind_address == ("127.0.0.1", "::1")


def test_unknown_postal_keys_are_ignored() -> None:
    config = parse_config(
        "rails: {secret_key: x}\nfast_server: {enabled: false, some_future_key: 1}\n"
        "smtp_server: {port: 25, max_message_size: 20}\n"
    )
    assert config.max_message_bytes == 20 * 1024 * 1024


def test_postal3_prefix_spelling() -> None:
    assert parse_config("message_db: {database_name_prefix: p3}").message_db_prefix == "p3"


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    path = tmp_path / "postal.yml"
    path.write_text("tracking: {data_dir: ./state}\n")
    assert load_config(path).data_dir == tmp_path / "state"


def test_missing_default_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path / "absent.yml", required=False) == Config()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fast_server: {port: 70000}", "fast_server.port must be between 1 and 65535, not 70000"),
        ("fast_server: {port: '5010'}", "fast_server.port must be a whole number, not '5010'"),
        ("fast_server: {enabled: 'yes'}", "fast_server.enabled must be true or false"),
        (
            "fast_server: {enabled: true}",
            "fast_server.bind_address is required when fast_server.enabled is true",
        ),
        ("fast_server: {bind_address: nowhere}", "'nowhere' is not an IP address"),
        ("tracking: {store: postgres}", "tracking.store must be one of 'sqlite', 'mysql'"),
        ("tracking: {data_dri: x}", "unknown key tracking.data_dri"),
        ("tracking: {acme: {emial: x}}", "unknown key tracking.acme.emial"),
        ("tracking: {trusted_proxies: [banana]}", "tracking.trusted_proxies[0]: 'banana'"),
        ("tracking: [1, 2]", "tracking must be a mapping"),
        ("fast_server: {enabled: true\n", "YAML syntax error"),
        ("- a\n- b\n", "must hold a mapping of sections"),
    ],
)
def test_bad_values_name_the_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="./postal.yml")
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert "./postal.yml" in message


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yml")
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_config(tmp_path)  # a directory


BAD_CONFIGS = {
    "wrong-type": "fast_server: {enabled: 1}\n",
    "port-range": "fast_server: {ssl_port: 0}\n",
    "enabled-without-bind": "fast_server: {enabled: true}\n",
    "yaml-syntax": "tracking: {store: [\n",
    "unknown-tracking-key": "tracking: {pixel_positon: top}\n",
}


@pytest.mark.parametrize("kind", sorted(BAD_CONFIGS))
def test_cli_bad_config_is_one_line_and_exit_1(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "postal.yml"
    path.write_text(BAD_CONFIGS[kind])
    result = subprocess.run(
        [sys.executable, "-m", "postal_tracking_plugin.cli", "-c", str(path), "init"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("postal-tracking: error: ")
    assert str(path) in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_unreadable_file_exit_1(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "postal_tracking_plugin.cli", "-c", str(tmp_path / "x.yml"), "init"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "does not exist" in result.stderr
