"""Shared fixtures: configurations, and a store on each backend.

A MariaDB test gets a fresh database, dropped after it; where MariaDB is, and
what happens when it cannot be reached, is in ``_support.py``, beside the other
helpers test modules import (``from _support import ...``, never ``conftest``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from _support import drop_mysql_databases
from _support import mysql_config_data
from _support import mysql_reachable
from _support import need
from postal_tracking_plugin.config import Config
from postal_tracking_plugin.config import load_config
from postal_tracking_plugin.store import Store
from postal_tracking_plugin.store import open_store


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Config]:
    """Write a postal.yml in ``tmp_path`` from a dict and load it."""

    def write(data: dict | None = None, name: str = "postal.yml") -> Config:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data or {}))
        return load_config(path)

    return write


@pytest.fixture(params=["sqlite", "mysql"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "mysql":
        reason = mysql_reachable()
        need(reason is None, reason or "")
    return request.param


@pytest.fixture
def backend_config(backend: str, write_config: Callable[..., Config]) -> Iterator[Config]:
    """A configuration for ``backend``: SQLite in tmp_path, or a fresh MariaDB database."""
    if backend == "sqlite":
        yield write_config({"tracking": {"data_dir": "data"}})
        return
    database = f"ptp_test_{secrets.token_hex(4)}"
    yield write_config(mysql_config_data(database))
    drop_mysql_databases(database)


@pytest.fixture
def store(backend_config: Config) -> Iterator[Store]:
    """An initialised store on each backend (the test runs once per backend)."""
    s = open_store(backend_config)
    s.create_schema()
    yield s
    s.close()
