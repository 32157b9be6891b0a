"""The package as installed: every module imports cleanly, the layout holds."""

from __future__ import annotations

import argparse
import ast
import configparser
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import postal_tracking_plugin

ROOT = Path(__file__).resolve().parent.parent


def _modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(postal_tracking_plugin.__path__, "postal_tracking_plugin."):
        if info.name.endswith("__main__"):
            continue
        names.append(info.name)
    for sub in ("hooks", "web"):
        package = importlib.import_module(f"postal_tracking_plugin.{sub}")
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            names.append(info.name)
    return sorted(set(names))


@pytest.mark.parametrize("name", _modules())
def test_module_imports_without_warnings(name: str) -> None:
    """Each module imports in a fresh interpreter with warnings as errors."""
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", f"import {name}"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_hooks_and_web_are_mapped_into_the_package() -> None:
    import postal_tracking_plugin.hooks as hooks
    import postal_tracking_plugin.web as web

    assert Path(hooks.__file__).resolve().parent == ROOT / "hooks"
    assert Path(web.__file__).resolve().parent == ROOT / "web"


def _imports(path: Path, package: str) -> set[str]:
    """Absolute names of the modules ``path`` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if path.name == "__init__.py":
                    base = base + ["__init__"]
                base = base[: len(base) - node.level]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _package_of(path: Path, top: Path, name: str) -> str:
    parts = list(path.relative_to(top).parent.parts)
    return ".".join([name, *parts]) if parts else name


def test_core_never_imports_web_or_hooks_and_nothing_imports_the_cli() -> None:
    core = ROOT / "postal_tracking_plugin"
    for path in core.rglob("*.py"):
        if "cli" in path.relative_to(core).parts:
            continue
        imports = _imports(path, _package_of(path, core, "postal_tracking_plugin"))
        bad = {
            i
            for i in imports
            if i.startswith(("postal_tracking_plugin.web", "postal_tracking_plugin.hooks",
                             "postal_tracking_plugin.cli"))
        }
        assert not bad, f"{path} imports {bad}"
    for top, name in ((ROOT / "hooks", "postal_tracking_plugin.hooks"),
                      (ROOT / "web", "postal_tracking_plugin.web")):
        for path in top.rglob("*.py"):
            imports = _imports(path, _package_of(path, top, name))
            assert not {i for i in imports if i.startswith("postal_tracking_plugin.cli")}, path


def test_entry_points_are_registered() -> None:
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts["postal-tracking"] == "postal_tracking_plugin.cli:main"
    plugins = {e.name: e.value for e in entry_points(group="postal.plugins")}
    assert plugins["tracking"] == "postal_tracking_plugin.hooks.tracking"


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every subcommand's parser below it."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += _parsers(sub)
    return found


def test_every_help_fits_an_80_column_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from postal_tracking_plugin.cli import build_parser

    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps to this
    for parser in _parsers(build_parser()):
        for line in parser.format_help().splitlines():
            assert len(line) <= 80, f"{parser.prog} --help: {line!r}"


def test_license_and_py_typed_are_shipped() -> None:
    """MIT in setup.cfg matches a LICENSE file; py.typed marks all three packages typed."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    package_data = {
        name: {p.strip() for p in value.split(",")}
        for name, value in cfg["options.package_data"].items()
    }
    for package, folder in (("postal_tracking_plugin", "postal_tracking_plugin"),
                            ("postal_tracking_plugin.hooks", "hooks"),
                            ("postal_tracking_plugin.web", "web")):
        assert "py.typed" in package_data[package], package
        assert (ROOT / folder / "py.typed").is_file(), folder


def test_tests_import_helpers_from_support_not_conftest() -> None:
    """pytest loads conftest.py itself; helpers live in _support.py (Flask's split)."""
    for path in sorted((ROOT / "tests").glob("*.py")):
        imports = _imports(path, "tests")
        assert "conftest" not in imports, f"{path.name}: import helpers from _support, not conftest"
