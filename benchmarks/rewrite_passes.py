"""Run N passes of one implementation over the corpus: for counting instructions.

On a shared machine wall time swings by 2x; the instructions a pass executes do
not. Run this under valgrind twice, with 1 and with 3 passes, and halve the
difference of the totals (the imports and set-up cancel out)::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/rewrite_passes.py ours 1      # then 3

What each name runs: ``ours`` (a) and ``postal`` (c) of ``benchmarks/rewrite.py``
on each corpus document; ``qp`` the whole-message path (a'), each document as a
quoted-printable text/html message through ``rewrite()``. Not a benchmark on its
own: it prints nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rewrite as bench

from postal_tracking_plugin.rewrite import rewrite


def main(argv: list[str]) -> int:
    what, passes = argv[0], int(argv[1])
    corpus = Path(argv[2]) if len(argv) > 2 else bench.DEFAULT_CORPUS
    docs = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(corpus.glob("*.html"))]
    runs: dict[str, Callable[[], object]] = {
        "ours": lambda: [bench.ours(d) for d in docs],
        "postal": lambda: [bench.postal_html(d) for d in docs],
    }
    if what == "qp":
        head = (
            b"From: news@example.com\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/html; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        )
        messages = [head + bench._qp(d) for d in docs]
        runs["qp"] = lambda: [rewrite(m, bench.PLAN) for m in messages]
    for _ in range(passes):
        runs[what]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
