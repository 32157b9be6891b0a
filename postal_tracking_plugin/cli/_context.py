"""What every subcommand gets: its arguments, the configuration and the store."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from functools import cached_property
from typing import TextIO
from typing import TypeAlias

from ..config import Config
from ..config import load_config
from ..config import resolve_path
from ..store import Store
from ..store import open_store

#: What each command module's ``register(sub)`` adds its parsers to (the object
#: ``add_subparsers`` returns; a string, as argparse's class is not subscriptable).
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class Context:
    """Loads the configuration and opens the store on first use, once."""

    def __init__(self, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
        self.args = args
        self.environ = environ
        self.out: TextIO = sys.stdout
        self.err: TextIO = sys.stderr
        self._store: Store | None = None

    @cached_property
    def config(self) -> Config:
        path, required = resolve_path(self.args.config, self.environ)
        return load_config(path, required=required)

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.config)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    def note(self, text: str) -> None:
        """Progress and summaries: to stderr, so stdout stays for data."""
        print(text, file=self.err)


def table(rows: list[list[str]], headers: list[str]) -> str:
    """A plain text table, columns as wide as their widest cell."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)
