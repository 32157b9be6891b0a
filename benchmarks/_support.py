"""What the benchmarks share with the tests: the MariaDB settings and free ports.

The one definition is ``tests/_support.py`` (``PTP_MYSQL_*`` read from the
environment; ports outside the kernel's ephemeral range, so no client
connection made meanwhile can take them). Neither folder is a package, so this
module loads that file by path instead of keeping a copy that could drift.
A benchmark imports it as ``from _support import MYSQL`` (``python
benchmarks/x.py`` puts ``benchmarks/`` first on ``sys.path``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_TESTS_SUPPORT = Path(__file__).resolve().parent.parent / "tests" / "_support.py"
_spec = importlib.util.spec_from_file_location("_ptp_tests_support", _TESTS_SUPPORT)
assert _spec is not None and _spec.loader is not None, _TESTS_SUPPORT
_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tests)

MYSQL: dict[str, str | int] = _tests.MYSQL
free_port = _tests.free_port
drop_mysql_databases = _tests.drop_mysql_databases

__all__ = ["MYSQL", "drop_mysql_databases", "free_port"]
