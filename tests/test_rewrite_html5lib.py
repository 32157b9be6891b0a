"""Tracked links against html5lib's spec tokenizer, on generated documents.

The rewriter reads HTML with one regular expression; html5lib implements the
WHATWG tokenizer state by state. For every generated document, the links the
rewriter tracks must be exactly, and in order, the ``href`` of each ``<a>`` and
``<area>`` start tag html5lib emits (first attribute of a name wins, character
references decoded), when it is an absolute http(s) URL with a host, plus those
inside conditional comments that Outlook renders (``[if mso]``, not
``[if !mso]``), which browsers see as comments. The tokenizer alone does not
switch to raw text after ``<style>`` and its kind (the tree builder does), so
the test switches it the same way.
"""

from __future__ import annotations

import itertools
import re

from html5lib._tokenizer import HTMLTokenizer
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from test_rewrite_properties import attributes

from postal_tracking_plugin.rewrite._html import rewrite_html
from postal_tracking_plugin.rewrite._plan import Tracker
from postal_tracking_plugin.rewrite._plan import TrackingPlan
from postal_tracking_plugin.rewrite._urls import clean_url
from postal_tracking_plugin.rewrite._urls import trackable_host

PLAN = TrackingPlan("click.example.com", "https", "srvtok", track_loads=False)
START_TAG, EMPTY_TAG, COMMENT = 3, 5, 6  # html5lib.constants.tokenTypes
RAW_STATES = {
    **dict.fromkeys(("style", "xmp", "iframe", "noembed", "noframes"), "rawtextState"),
    **dict.fromkeys(("title", "textarea"), "rcdataState"),
    "script": "scriptDataState",
    "plaintext": "plaintextState",
}
NOT_MSO = re.compile(r"\[if\s*!\s*\(?\s*mso(?![a-zA-Z0-9_])[^\]>|&]*\]>", re.IGNORECASE)
CONDITIONAL = re.compile(r"\[if[^\]>]*\]>", re.IGNORECASE)


def html5lib_links(html: str, *, vml: bool = False) -> list[str]:
    """The URLs a client follows, read with html5lib's tokenizer."""
    tokenizer = HTMLTokenizer(html)
    found = []
    for token in tokenizer:
        kind = token["type"]
        if kind in (START_TAG, EMPTY_TAG):
            name = token["name"]
            if name in ("a", "area") or vml and name.startswith("v:"):
                href = token["data"].get("href")
                if href is not None:
                    url = clean_url(href)
                    if trackable_host(url) is not None:
                        found.append(url)
            if not vml and name in RAW_STATES:
                tokenizer.state = getattr(tokenizer, RAW_STATES[name])
        elif kind == COMMENT and not vml:
            data = token["data"]
            head = CONDITIONAL.match(data)
            if head is not None and NOT_MSO.match(data) is None and "href" in data.lower():
                found.extend(html5lib_links(data[head.end() :], vml=True))
    return found


@st.composite
def documents(draw: st.DrawFn) -> str:
    pieces = []
    for _ in range(draw(st.integers(0, 14))):
        kind = draw(
            st.sampled_from(
                [
                    "text",
                    "a",
                    "a",
                    "tag",
                    "end",
                    "comment",
                    "cond",
                    "raw",
                    "entity",
                    "lt",
                    "doctype",
                ]
            )
        )
        if kind == "text":
            pieces.append(draw(st.text("ab \n&;=\"'/-!", max_size=8)))
        elif kind in ("a", "tag"):
            name = (
                "a"
                if kind == "a"
                else draw(
                    st.sampled_from(
                        [
                            "area",
                            "p",
                            "abbr",
                            "address",
                            "b",
                            "body",
                            "br",
                            "td",
                            "v:rect",
                            "A",
                            "AREA",
                        ]
                    )
                )
            )
            attrs = "".join(draw(st.lists(attributes(), max_size=3)))
            pieces.append(f"<{name}{attrs}{draw(st.sampled_from(['>', '/>', ' >']))}")
        elif kind == "end":
            pieces.append(draw(st.sampled_from(["</a>", "</body>", "</p x='>'>", "</ a>", "</>"])))
        elif kind == "comment":
            pieces.append(f"<!--{draw(st.text('ab <>-!', max_size=8))}-->")
        elif kind == "cond":
            condition = draw(st.sampled_from(["mso", "gte mso 9", "!mso", "mso | IE", "IE"]))
            inner = draw(
                st.sampled_from(
                    [
                        '<a href="https://c.example/1">x</a>',
                        '<v:roundrect href="https://c.example/2">',
                        "<p>no link</p>",
                        '<a href="https://c.example/&amp;3">',
                    ]
                )
            )
            pieces.append(f"<!--[if {condition}]>{inner}<![endif]-->")
        elif kind == "raw":
            name = draw(st.sampled_from(["style", "script", "title", "textarea", "xmp"]))
            body = draw(
                st.sampled_from(['<a href="https://r.example/">', "a</b>", "</" + name + "x>", ""])
            )
            pieces.append(f"<{name}>{body}</{name}>")
        elif kind == "entity":
            pieces.append(draw(st.sampled_from(["&amp;", "&lt;", "&#x41;", "&copy", "&"])))
        elif kind == "lt":
            pieces.append(draw(st.sampled_from(["<", "< a", "<3", "<!", "<?x>", "</3>"])))
        else:
            pieces.append("<!DOCTYPE html>")
    # The end of a document is where unfinished constructs hide.
    pieces.append(
        draw(
            st.sampled_from(
                [
                    "",
                    "<a",
                    '<a href="https://u.example/"',
                    "<!-- open",
                    "<style>open",
                    "<!--[if mso]><a href='https://u.example/'>",
                    '<a href="https://u.example/>',
                    "</p",
                    "<!",
                ]
            )
        )
    )
    return "".join(pieces)


@settings(max_examples=300, deadline=None)
@given(documents())
def test_tracked_links_are_the_links_html5lib_reads(html: str) -> None:
    tokens = itertools.chain(["M0000"], (f"L{i:05d}" for i in itertools.count()))
    tracker = Tracker(PLAN, new_token=lambda: next(tokens))
    rewrite_html(html, tracker)
    assert [link.url for link in tracker.links] == html5lib_links(html)
