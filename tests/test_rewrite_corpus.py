"""Every real-world template in the shared corpus, checked against lxml as the oracle.

For each document: every absolute http(s) ``<a href>`` with a host that lxml
finds is tracked, in order, and stored as lxml reads the attribute (with the
URL standard's tab/newline removal, resolved against a ``<base href>``); and the output, with the tracked values
masked and the pixel removed, is the input byte for byte.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from urllib.parse import urljoin
from urllib.parse import urlsplit

import lxml.html
import pytest

from postal_tracking_plugin.rewrite._html import rewrite_html
from postal_tracking_plugin.rewrite._plan import Tracker
from postal_tracking_plugin.rewrite._plan import TrackingPlan
from postal_tracking_plugin.rewrite._urls import clean_url
from postal_tracking_plugin.rewrite._urls import decode_attribute

CORPUS = Path(__file__).resolve().parent / "corpus" / "html"  # sources: corpus/SOURCES.md
FILES = sorted(CORPUS.glob("*.html"))
CLICK = re.compile(r"https://click\.example\.com/srvtok/L[0-9]{5}")
PIXEL = re.compile(r"<img src='https://click\.example\.com/img/srvtok/M0000'[^>]*>")
PLACEHOLDER = re.compile(r"\{\{|\}\}|\{%|\*\||%[A-Za-z_][\w.\-]*%|\$\{")


def lxml_base(text: str) -> str | None:
    """The first ``<base href>`` that lxml finds, when it is an absolute http(s) URL."""
    root = lxml.html.document_fromstring(
        text.encode("utf-8"), parser=lxml.html.HTMLParser(encoding="utf-8")
    )
    for base in root.iter("base"):
        href = base.get("href")
        if href is not None:
            url = clean_url(href)
            return url if urlsplit(url).scheme.lower() in ("http", "https") else None
    return None


def resolved(url: str, base: str | None) -> str:
    """What a client opens: a relative reference resolved against the base."""
    if base is None or not url or url.startswith("#") or urlsplit(url).scheme:
        return url
    return urljoin(base, url)


def lxml_links(text: str) -> list[str]:
    root = lxml.html.document_fromstring(
        text.encode("utf-8"), parser=lxml.html.HTMLParser(encoding="utf-8")
    )
    base = lxml_base(text)
    found = []
    for a in root.iter("a"):
        href = a.get("href")
        if href is None:
            continue
        url = resolved(clean_url(href), base)
        parts = urlsplit(url)
        if (
            parts.scheme.lower() in ("http", "https")
            and parts.hostname
            and not PLACEHOLDER.search(url)
        ):
            found.append(url)
    return found


def is_subsequence(small: list[str], big: list[str]) -> bool:
    it = iter(big)
    return all(any(x == y for y in it) for x in small)


def test_corpus_is_there() -> None:
    assert len(FILES) == 84, (
        f"tests/corpus/html should hold the 84 corpus documents, not {len(FILES)}"
    )


@pytest.mark.parametrize("path", FILES, ids=[p.name[:60] for p in FILES])
def test_corpus_document(path: Path) -> None:
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    tokens = itertools.chain(["M0000"], (f"L{i:05d}" for i in itertools.count()))
    tracker = Tracker(
        TrackingPlan("click.example.com", "https", "srvtok"), new_token=lambda: next(tokens)
    )
    out = rewrite_html(text, tracker)
    stored = [link.url for link in tracker.links]

    # 1. lxml's links are all tracked, in document order, stored as lxml reads them
    expected = lxml_links(text)
    base = lxml_base(text)
    assert is_subsequence(expected, stored), (expected, stored)

    # 2. only the href values changed, and each old value reads as the stored URL
    assert tracker.images == 1 and len(PIXEL.findall(out)) == 1
    out = PIXEL.sub("", out, count=1)
    segments = CLICK.split(out)
    assert len(segments) == len(stored) + 1
    assert text.startswith(segments[0])
    pos = len(segments[0])
    for url, segment in zip(stored, segments[1:], strict=True):
        end = text.find(segment, pos) if segment else len(text)
        assert end != -1
        raw_value = text[pos:end]
        assert resolved(clean_url(decode_attribute(raw_value)), base) == url
        pos = end + len(segment)
    assert pos == len(text)
