"""The package as installed: every module imports cleanly, the layout holds."""

from __future__ import annotations

import argparse
import ast
import configparser
import importlib
import pkgutil
import re
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
            if node.level:  # relative to ``package``, the one the file is in
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _package_of(path: Path, top: Path, name: str) -> str:
    parts = list(path.relative_to(top).parent.parts)
    return ".".join([name, *parts]) if parts else name


# The rooms of the package and their floors: a module imports only from its own room
# and the rooms below it, so the doors run one way. The core's own modules (config,
# errors, ...) are the ground floor; nothing imports the CLI. hooks and web, on one
# floor, never import each other.
FLOORS = {
    "core": 0,
    "store": 1,
    "rewrite": 2,
    "events": 2,
    "certificates": 2,
    "hooks": 3,
    "web": 3,
    "cli": 4,
    "entry": 5,
}

#: Modules where a process starts (``python -m ...``, gunicorn's ``module:app``): they
#: wire the rooms together (web/__main__.py hands the plugins' tracking-event hook to
#: the fast server), so they stand on the top floor, whatever folder they are in;
#: nothing imports them.
ENTRY_MODULES = ("__main__", "wsgi")

# Known exceptions, each (importing file, imported module), to be removed when fixed.
KNOWN: set[tuple[str, str]] = set()

TOPS = (
    (ROOT / "postal_tracking_plugin", "postal_tracking_plugin"),
    (ROOT / "hooks", "postal_tracking_plugin.hooks"),
    (ROOT / "web", "postal_tracking_plugin.web"),
)


def _room(module: str, rooms: set[str]) -> str:
    """``store`` for postal_tracking_plugin.store._models; ``core`` for .config;
    ``entry`` for postal_tracking_plugin.web.__main__."""
    parts = module.split(".")
    if any(part in ENTRY_MODULES for part in parts[1:]):
        return "entry"
    return parts[1] if len(parts) > 1 and parts[1] in rooms else "core"


def _private_owner(module: str) -> str | None:
    """The package whose private module ``module`` is, or None when it is public."""
    parts = module.split(".")
    for i, part in enumerate(parts[1:], 1):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def _door_violations(tops: tuple[tuple[Path, str], ...], root: Path) -> list[str]:
    """Imports that go up a floor, sideways between rooms, or into another package's
    private module (a subpackage may use its parent's)."""
    found: list[str] = []
    core = tops[0][0]
    rooms = {d.name for d in core.iterdir() if (d / "__init__.py").is_file()}
    rooms |= {name.split(".")[1] for _, name in tops[1:]}
    for top, name in tops:
        for path in sorted(top.rglob("*.py")):
            package = _package_of(path, top, name)
            here = _room(f"{package}.{path.stem}", rooms)
            shown = path.relative_to(root).as_posix()
            for module in sorted(_imports(path, package)):
                if not module.startswith("postal_tracking_plugin"):
                    continue
                there = _room(module, rooms)
                if there not in FLOORS or here not in FLOORS:
                    found.append(f"{shown}: add the room of {module} to FLOORS in test_meta.py")
                    continue
                owner = _private_owner(module)
                if owner is not None and not package.startswith(owner):
                    # name the private module itself, not the names imported from it
                    module = ".".join(module.split(".")[: owner.count(".") + 2])
                    what = "another package's private module"
                elif there != here and FLOORS[there] >= FLOORS[here]:
                    module = ".".join(module.split(".")[:2])
                    what = "a room up or beside"
                else:
                    continue
                line = f"{shown} imports {module}: {what} ({here} -> {there})"
                if (shown, module) not in KNOWN and line not in found:
                    found.append(line)
    return found


def test_the_doors_run_one_way_and_private_modules_stay_private() -> None:
    """Core <- store <- rewrite/events/certificates <- hooks/web <- cli, and no package
    imports another's private module (tests are outside: they may open any door)."""
    assert _door_violations(TOPS, ROOT) == []


def test_the_door_check_catches_a_private_import_and_an_upward_one(tmp_path: Path) -> None:
    core = tmp_path / "postal_tracking_plugin"
    for folder in ("store", "events"):
        (core / folder).mkdir(parents=True)
        (core / folder / "__init__.py").write_text("")
    (core / "__init__.py").write_text("")
    (core / "store" / "_rows.py").write_text("")
    (core / "events" / "recorder.py").write_text(
        "from postal_tracking_plugin.store._rows import x\n"
    )
    (core / "store" / "ops.py").write_text("from ..events import recorder\nfrom . import _rows\n")
    found = _door_violations(((core, "postal_tracking_plugin"),), tmp_path)
    assert len(found) == 2, found
    assert "events/recorder.py imports postal_tracking_plugin.store._rows" in found[0]
    assert "private" in found[0]
    assert "store/ops.py imports postal_tracking_plugin.events:" in found[1]
    assert "(store -> events)" in found[1]


def test_the_door_check_keeps_hooks_out_of_web_but_lets_an_entry_module_wire_them(
    tmp_path: Path,
) -> None:
    """web's library may not import hooks (nor hooks web); its process entry point may,
    and nothing may import an entry point."""
    core = tmp_path / "postal_tracking_plugin"
    core.mkdir()
    (core / "__init__.py").write_text("")
    (core / "config.py").write_text("import postal_tracking_plugin.web.wsgi\n")
    web, hooks = tmp_path / "web", tmp_path / "hooks"
    for folder in (web, hooks):
        folder.mkdir()
        (folder / "__init__.py").write_text("")
    (hooks / "_manager.py").write_text("")
    (web / "_supervisor.py").write_text("from postal_tracking_plugin.hooks import x\n")
    (web / "__main__.py").write_text(
        "from postal_tracking_plugin.hooks import x\nfrom ._supervisor import serve\n"
    )
    (web / "wsgi.py").write_text("from postal_tracking_plugin import hooks\n")
    (hooks / "spec.py").write_text("from postal_tracking_plugin.web import app\n")
    tops = (
        (core, "postal_tracking_plugin"),
        (hooks, "postal_tracking_plugin.hooks"),
        (web, "postal_tracking_plugin.web"),
    )
    found = _door_violations(tops, tmp_path)
    assert found == [
        "postal_tracking_plugin/config.py imports postal_tracking_plugin.web: "
        "a room up or beside (core -> entry)",
        "hooks/spec.py imports postal_tracking_plugin.web: a room up or beside (hooks -> web)",
        "web/_supervisor.py imports postal_tracking_plugin.hooks: "
        "a room up or beside (web -> hooks)",
    ], found


def test_the_fast_server_check_loads_neither_web_nor_gevent(tmp_path: Path) -> None:
    """fast-server checks its addresses from the configuration, before the server loads."""
    config = tmp_path / "postal.yml"
    config.write_text("fast_server: {enabled: false}\n")
    code = (
        "import sys\n"
        "from postal_tracking_plugin.cli import main\n"
        f"assert main(['-c', {str(config)!r}, 'fast-server']) == 1\n"
        "print(sorted(m for m in sys.modules if m.startswith(('gevent', 'flask', "
        "'postal_tracking_plugin.web'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert "the fast server is disabled: set fast_server.enabled: true" in result.stderr


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
    for package, folder in (
        ("postal_tracking_plugin", "postal_tracking_plugin"),
        ("postal_tracking_plugin.hooks", "hooks"),
        ("postal_tracking_plugin.web", "web"),
    ):
        assert "py.typed" in package_data[package], package
        assert (ROOT / folder / "py.typed").is_file(), folder


def test_tests_import_helpers_from_support_not_conftest() -> None:
    """pytest loads conftest.py itself; helpers live in _support.py (Flask's split)."""
    for path in sorted((ROOT / "tests").glob("*.py")):
        imports = _imports(path, "tests")
        assert "conftest" not in imports, f"{path.name}: import helpers from _support, not conftest"


def _anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_the_readme_is_short_and_every_docs_link_lands() -> None:
    """README at most 150 lines (the reference is in docs/); relative links and their
    #anchors point at files and headings that exist."""
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 150
    pages = [readme, *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) > 5
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: {target} does not exist"
            if fragment and linked.suffix == ".md":
                headings = re.findall(r"(?m)^#+ (.+)$", linked.read_text())
                anchors = {_anchor(h) for h in headings}
                assert fragment in anchors, f"{page.name}: no heading for #{fragment}"


def test_every_tracking_key_is_in_the_configuration_reference() -> None:
    """docs/configuration.md names each ``tracking.*`` key the loader accepts (the loader
    refuses unknown ones, so an undocumented key is one nobody can find)."""
    from dataclasses import fields
    from dataclasses import is_dataclass

    from postal_tracking_plugin.config import TrackingConfig

    reference = (ROOT / "docs" / "configuration.md").read_text()
    documented = " ".join(
        line for line in reference.splitlines() if line.startswith("| `tracking.")
    )

    def keys(cls: type, prefix: str) -> list[tuple[str, str]]:
        found = []
        for f in fields(cls):
            inner = f.default_factory if callable(f.default_factory) else None
            if inner is not None and is_dataclass(inner):
                found += keys(inner, f"{prefix}{f.name}.")  # type: ignore[arg-type]
            else:
                found.append((prefix, f.name))
        return found

    missing = [
        f"{prefix}{name}"
        for prefix, name in keys(TrackingConfig, "tracking.")
        if f"`{prefix}{name}`" not in documented
        and not (f"`{prefix}" in documented and f"`{name}`" in documented)
        and f"`{prefix}*`" not in documented
    ]
    assert not missing, f"add to docs/configuration.md: {', '.join(missing)}"
