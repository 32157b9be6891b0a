"""Rewrite http(s) URLs in plain text.

A URL runs from ``http://`` or ``https://`` to white space, ``<``, ``>`` or
``"``; trailing punctuation (``.,;:!?'``) and unbalanced closing brackets are
left outside it, so "see https://example.com/a." and
"(https://en.wikipedia.org/wiki/Mail_(protocol))" both track the right URL,
and ``<https://...>`` works because ``>`` ends a URL.

Japanese, Chinese and Korean prose runs on without a space after a URL
(``…?id=1をご覧ください。``, ``「https://example.jp/a」``). As linkify-it does,
any punctuation outside ASCII ends a URL (fullwidth and ideographic
punctuation, curly quotes), and so does an ideograph, kana or hangul syllable:
a path written with them unencoded is cut there (the rest stays visible
text), where running on would swallow the sentence into the tracked link.
Percent-encoded paths are unaffected.
"""

from __future__ import annotations

import re
import unicodedata

from ._html import apply_text_edits
from ._plan import Tracker
from ._urls import trackable_host


def _ranges(chars: list[int]) -> str:
    """A character class body for the code points ``chars`` (sorted), as ranges."""
    parts = []
    start = prev = chars[0]
    for c in [*chars[1:], -1]:
        if c != prev + 1:
            parts.append(
                re.escape(chr(start)) + ("-" + re.escape(chr(prev)) if prev > start else "")
            )
            start = c
        prev = c
    return "".join(parts)


# Punctuation outside ASCII (Unicode categories P*, in the BMP: 10 ms at import, where
# all planes took 300 ms) and CJK ideographs, kana, hangul, the CJK symbols and
# fullwidth forms blocks: each ends a URL (so an IDN host in ideographs is not tracked).
_PUNCT = _ranges([c for c in range(0x80, 0x10000) if unicodedata.category(chr(c))[0] == "P"])
_CJK = (
    "\u3000-\u303f\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
    "\uf900-\ufaff\uff00-\uffef\U00020000-\U0003ffff"
)
_URL = re.compile(
    rf"(?<![A-Za-z0-9+.\-])(https?)(\+notrack)?://[^\s<>\"{_PUNCT}{_CJK}]+",
    re.IGNORECASE,
)
_TRAILING = ".,;:!?'"
_PAIRS = {")": "(", "]": "[", "}": "{"}


def _trim(url: str) -> str:
    """``url`` without trailing punctuation and unbalanced closing brackets.

    Brackets are counted once, then kept up to date as characters are cut: counting
    on every step made a URL followed by 40,000 ")" take 0.6 s.
    """
    end = len(url)
    excess: dict[str, int] | None = None  # closing minus opening brackets, counted lazily
    while end:
        last = url[end - 1]
        if last in _TRAILING:
            end -= 1
            continue
        if last not in _PAIRS:
            break
        if excess is None:
            excess = {c: url.count(c, 0, end) - url.count(o, 0, end) for c, o in _PAIRS.items()}
        if excess[last] <= 0:
            break
        excess[last] -= 1
        end -= 1
    return url[:end]


def rewrite_text(text: str, tracker: Tracker, *, flowed: bool = False) -> str:
    """``text`` with tracked URLs replaced and ``+notrack`` markers removed.

    With ``flowed`` (``format=flowed``), a URL that ends at a soft line break
    (a space before the newline) may continue on the next line, so it is left
    alone rather than tracked half.
    """
    return apply_text_edits(text, text_edits(text, tracker, flowed=flowed))


def text_edits(text: str, tracker: Tracker, *, flowed: bool = False) -> list[tuple[int, int, str]]:
    """The ``(start, end, new)`` replacements :func:`rewrite_text` makes, in order."""
    edits: list[tuple[int, int, str]] = []
    for m in _URL.finditer(text):
        start = m.start()
        if m.group(2) is not None:  # +notrack: drop the marker, never track
            edits.append((m.start(2), m.end(2), ""))
            continue
        if not tracker.clicks:
            continue
        url = _trim(m.group())
        end = start + len(url)
        if flowed and text.startswith(" \n", end) or flowed and text.startswith(" \r\n", end):
            continue
        host = trackable_host(url)
        if host is None:
            continue
        if not url.isascii():
            try:
                url.encode("utf-8")
            except UnicodeEncodeError:
                continue
        click = tracker.click_url(url, host)
        if click is not None:
            edits.append((start, end, click))
    return edits
