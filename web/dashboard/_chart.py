"""Charts drawn on the server as SVG: no JavaScript, no CDN, nothing to download.

:func:`stacked_bars` draws one bar per time bucket, people at the bottom and
machines stacked above, with a ``<title>`` per bar (the browser's tooltip) so
each figure can be read; the page shows the same numbers as a table too.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 720, 200
_LEFT, _BOTTOM, _TOP = 48, 24, 10
PEOPLE_COLOUR = "#2b6cb0"
MACHINES_COLOUR = "#cbd5e0"


def label(start: int, bucket: int) -> str:
    when = _dt.datetime.fromtimestamp(start, _dt.UTC)
    return f"{when:%Y-%m-%d}" if bucket >= 86400 else f"{when:%Y-%m-%d %H:00}"


def stacked_bars(
    title: str, starts: Sequence[int], people: Sequence[int], machines: Sequence[int], bucket: int
) -> str:
    """An SVG bar chart of people (below) and machines (above) per bucket."""
    n = len(starts)
    peak = max((p + m for p, m in zip(people, machines, strict=True)), default=0)
    plot_w, plot_h = WIDTH - _LEFT - 8, HEIGHT - _BOTTOM - _TOP
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<line x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{WIDTH - 8}" y2="{_TOP + plot_h}" '
        'stroke="#718096"/>',
        f'<text x="{_LEFT - 4}" y="{_TOP + 8}" text-anchor="end" font-size="11">{peak}</text>',
        f'<text x="{_LEFT - 4}" y="{_TOP + plot_h}" text-anchor="end" font-size="11">0</text>',
    ]
    if n == 0 or peak == 0:
        parts.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" font-size="13">'
            "no events in this range</text></svg>"
        )
        return "".join(parts)
    step = plot_w / n
    bar_w = max(step * 0.8, 1.0)
    for i, (start, p, m) in enumerate(zip(starts, people, machines, strict=True)):
        x = _LEFT + i * step + (step - bar_w) / 2
        hp = plot_h * p / peak
        hm = plot_h * m / peak
        y_p = _TOP + plot_h - hp
        tip = escape(f"{label(start, bucket)}: {p} people, {m} machines")
        parts.append(
            f'<g class="bar"><title>{tip}</title>'
            f'<rect x="{x:.1f}" y="{y_p:.1f}" width="{bar_w:.1f}" height="{hp:.1f}" '
            f'fill="{PEOPLE_COLOUR}"/>'
            f'<rect x="{x:.1f}" y="{y_p - hm:.1f}" width="{bar_w:.1f}" height="{hm:.1f}" '
            f'fill="{MACHINES_COLOUR}"/></g>'
        )
    parts.append(
        f'<text x="{_LEFT}" y="{HEIGHT - 6}" font-size="11">{escape(label(starts[0], bucket))}'
        f'</text><text x="{WIDTH - 8}" y="{HEIGHT - 6}" text-anchor="end" font-size="11">'
        f"{escape(label(starts[-1], bucket))}</text></svg>"
    )
    return "".join(parts)
