"""Plain-text rewriting: where a URL ends, +notrack, placeholders, format=flowed."""

from __future__ import annotations

import itertools

import pytest

from postal_tracking_plugin.rewrite._plan import Tracker
from postal_tracking_plugin.rewrite._plan import TrackingPlan
from postal_tracking_plugin.rewrite._text import rewrite_text

CLICK = "https://click.example.com/srvtok/"


def run(text: str, *, flowed: bool = False, **plan: object) -> tuple[str, list[str]]:
    tokens = itertools.chain(["M000"], (f"L{i:03d}" for i in itertools.count()))
    t = Tracker(
        TrackingPlan("click.example.com", "https", "srvtok", **plan),  # type: ignore[arg-type]
        new_token=lambda: next(tokens),
    )
    out = rewrite_text(text, t, flowed=flowed)
    return out, [link.url for link in t.links]


@pytest.mark.parametrize(
    ("text", "url", "after"),
    [
        ("Go to https://a.example/x now", "https://a.example/x", " now"),
        ("Go to https://a.example/x.", "https://a.example/x", "."),
        ("See https://a.example/x, then", "https://a.example/x", ", then"),
        ("Really https://a.example/x?!", "https://a.example/x", "?!"),
        ("List: https://a.example/x;", "https://a.example/x", ";"),
        ("(see https://a.example/x)", "https://a.example/x", ")"),
        (
            "(https://en.wikipedia.org/wiki/Mail_(protocol))",
            "https://en.wikipedia.org/wiki/Mail_(protocol)",
            ")",
        ),
        (
            "https://en.wikipedia.org/wiki/Mail_(protocol).",
            "https://en.wikipedia.org/wiki/Mail_(protocol)",
            ".",
        ),
        ("[https://a.example/x]", "https://a.example/x", "]"),
        ("<https://a.example/x?a=1&b=2>", "https://a.example/x?a=1&b=2", ">"),
        ('"https://a.example/x"', "https://a.example/x", '"'),
        ("'https://a.example/x'", "https://a.example/x", "'"),
        ("https://a.example/p!*'(),;$@x end", "https://a.example/p!*'(),;$@x", " end"),
        ("https://caf\u00e9.example/x\u00a0next", "https://caf\u00e9.example/x", "\u00a0next"),
        # CJK prose runs on without a space: ideographs, kana and their punctuation end a URL
        (
            "\u8a73\u7d30\u306fhttps://example.jp/a?id=1\u3092\u3054\u89a7\u304f\u3060\u3055\u3044\u3002",
            "https://example.jp/a?id=1",
            "\u3092\u3054\u89a7\u304f\u3060\u3055\u3044\u3002",
        ),
        ("\u300chttps://example.jp/a\u300d", "https://example.jp/a", "\u300d"),
        ("\uff08https://example.cn/a\uff09\u3002", "https://example.cn/a", "\uff09\u3002"),
        ("https://example.cn/a\u3001\u89c1\u4e0b", "https://example.cn/a", "\u3001\u89c1\u4e0b"),
        ("https://example.jp/\u65e5\u672c", "https://example.jp/", "\u65e5\u672c"),
        ("https://example.jp\u3092\u898b\u3066", "https://example.jp", "\u3092\u898b\u3066"),
        (
            "https://example.kr/a\uc5d0\uc11c \ubcf4\uae30",
            "https://example.kr/a",
            "\uc5d0\uc11c \ubcf4\uae30",
        ),
        ("\u201chttps://a.example/x\u201d", "https://a.example/x", "\u201d"),
        (
            "https://a.example/%E6%97%A5%E6%9C%AC end",
            "https://a.example/%E6%97%A5%E6%9C%AC",
            " end",
        ),
        (
            "https://caf\u00e9.example/na\u00efve end",
            "https://caf\u00e9.example/na\u00efve",
            " end",
        ),
        ("HTTP://A.EXAMPLE/X\r\n", "HTTP://A.EXAMPLE/X", "\r\n"),
    ],
)
def test_url_boundaries(text: str, url: str, after: str) -> None:
    out, urls = run(text)
    assert urls == [url]
    start = text.index(url)
    assert out == text[:start] + CLICK + "L000" + after + text[start + len(url) + len(after) :]


@pytest.mark.parametrize(
    "text",
    [
        "write to mailto:someone@example.com",
        "http:// is a placeholder",
        "https://{{domain}}/x",
        "https://example.com/u/%recipient.id%",
        "https://example.com/*|EMAIL|*",
        "xhttps://a.example/ is part of a word",
        "ftp://a.example/x",
    ],
)
def test_not_tracked(text: str) -> None:
    out, urls = run(text)
    assert urls == [] and out == text


def test_notrack_marker_is_removed_and_not_tracked() -> None:
    out, urls = run("Prefs: https+notrack://a.example/p and HTTP+NoTrack://a.example/q.")
    assert urls == []
    assert out == "Prefs: https://a.example/p and HTTP://a.example/q."


def test_notrack_without_a_plan() -> None:
    t = Tracker(None)
    assert rewrite_text("a https+notrack://a.example/ b https://b.example/", t) == (
        "a https://a.example/ b https://b.example/"
    )
    assert t.links == []


def test_each_occurrence_is_one_link_and_exclusions_apply() -> None:
    out, urls = run(
        "https://a.example/ https://a.example/ https://www.skip.example/",
        excluded_hosts=("*.skip.example",),
    )
    assert urls == ["https://a.example/", "https://a.example/"]
    assert out == f"{CLICK}L000 {CLICK}L001 https://www.skip.example/"


def test_flowed_text_url_at_a_soft_break_is_left_alone() -> None:
    text = "Read https://a.example/very/long \r\ncontinued/path and https://b.example/ \r\n"
    out, urls = run(text, flowed=True)
    assert urls == []
    assert out == text
    out, urls = run(text, flowed=False)
    assert urls == ["https://a.example/very/long", "https://b.example/"]


def test_clicks_off_tracks_nothing_in_text() -> None:
    out, urls = run("https://a.example/", track_clicks=False)
    assert urls == [] and out == "https://a.example/"


def test_trailing_brackets_are_trimmed_in_one_count() -> None:
    """The bracket rule on a long run of ")" (benchmarks/rewrite.py times it)."""
    out, urls = run("see https://a.example/x(1)" + ")" * 5000 + " ok")
    assert urls == ["https://a.example/x(1)"]
    assert out == f"see {CLICK}L000" + ")" * 5000 + " ok"
