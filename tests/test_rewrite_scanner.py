"""The tokenizer's expanded pattern against its golden copy, so every change shows as a diff.

After a deliberate change to ``postal_tracking_plugin/rewrite/_scanner.py``, run
``python tests/test_rewrite_scanner.py --write`` and commit the golden file with it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from postal_tracking_plugin.rewrite import _scanner

GOLDEN = Path(__file__).resolve().parent / "golden" / "rewrite_scanner.txt"
VARIANTS = {
    "SCAN (pixel at the top: stops at <body>)": _scanner.scanner(vml=False, body_start=True),
    "SCAN_BOTTOM (pixel before </body>)": _scanner.scanner(vml=False, body_start=False),
    "SCAN_VML (inside a conditional comment)": _scanner.scanner(vml=True, body_start=False),
}


def expanded() -> str:
    return "".join(f"### {name}\n{scan.pattern}\n\n" for name, scan in VARIANTS.items())


def test_the_pattern_is_the_golden_copy() -> None:
    assert GOLDEN.read_text(encoding="utf-8") == expanded(), (
        "the tokenizer changed: review the diff, then run "
        "`python tests/test_rewrite_scanner.py --write` and commit tests/golden/rewrite_scanner.txt"
    )


def test_every_alternative_has_its_own_commented_line() -> None:
    for scan in VARIANTS.values():
        assert scan.flags & re.VERBOSE
        lines = [line for line in scan.pattern.splitlines() if line.lstrip().startswith("|")]
        assert len(lines) > 30
        assert all(
            "  # " in line or line.endswith("(?:") for line in lines
        )  # or opens a nested one


def test_the_variants_share_their_group_numbers() -> None:
    top, bottom, vml = VARIANTS.values()
    assert top.groupindex == bottom.groupindex == vml.groupindex == _scanner.GROUPS


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        GOLDEN.write_text(expanded(), encoding="utf-8")
        print(f"wrote {GOLDEN}")
    else:
        sys.stdout.write(expanded())
