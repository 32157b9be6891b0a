"""Rewrite links in decoded HTML text and insert the open pixel, changing nothing else.

A small tokenizer, written as one regular expression (:mod:`._scanner`), walks
the document the way the HTML5 tokenizer splits it (text, tags with their attributes, comments,
raw-text elements such as ``<style>`` and ``<script>``) without building a tree.
Only the tokens that matter stop the scan: ``<a>`` and ``<area>``, ``<base>``,
``</body>`` (and ``<body>`` when the pixel goes at the top), a construct left
open at the end (the pixel goes before it), and Outlook's
``<!--[if ...]>`` conditional comments that mention ``href``, inside which
VML elements (``<v:roundrect href=...>``) are tracked too. Everything else,
including quoted attribute values that happen to contain ``<a href``, is
consumed inside the regex engine and copied through untouched, so the output
differs from the input only in the ``href`` values that change, removed opt-out
attributes, and the pixel. Re-serialising a parsed tree (as pytracking does)
would lose doctypes, comments, entities and quoting.
"""

from __future__ import annotations

import re
from urllib.parse import urljoin

from ._plan import Tracker
from ._scanner import ATTRS as _ATTRS
from ._scanner import COND as _COND
from ._scanner import CONDBODY as _CONDBODY
from ._scanner import END
from ._scanner import ENDBODY as _ENDBODY
from ._scanner import NAME as _NAME
from ._scanner import TAG as _TAG
from ._scanner import UNFINISHED as _UNFINISHED
from ._scanner import WS
from ._scanner import ci
from ._scanner import scanner
from ._urls import C0_SPACE
from ._urls import clean_url
from ._urls import decode_attribute
from ._urls import escape_attribute
from ._urls import strip_notrack
from ._urls import trackable_host

# One attribute: (1) name, (2) "=", then the value (3) double-, (4) single- or (5) un-quoted.
_ATTR = re.compile(
    rf"[{WS}/]*([^{WS}/>][^{WS}/>=]*)"
    rf"(?:([{WS}]*=[{WS}]*)(?:\"([^\"]*)\"|'([^']*)'|([^{WS}>]*)))?"
)
_LINK_END = re.compile(rf"</[aA]{END}")  # an </a> end tag
_OPT_OUT = frozenset({"data-pm-no-track", "data-no-track", "clicktracking"})
_NOTRACK_ANY = re.compile(r"(?i)(https?)\+notrack://")
_NOTRACK_FIND = re.compile(r"\+(?i:notrack)://")
# The first href of a tag in one call: skip whole attributes until one named
# href, then capture its value (1) double-, (2) single- or (3) un-quoted.
_FIRST_HREF = re.compile(
    rf"(?:[{WS}/]*+(?!{ci('href')}[{WS}/>=])[^{WS}/>][^{WS}/>=]*+"
    rf"(?:[{WS}]*+=[{WS}]*+(?:\"[^\"]*+\"|'[^']*+'|[^{WS}>]*+))?)*+"
    rf"[{WS}/]*+{ci('href')}[{WS}]*+=[{WS}]*+(?:\"([^\"]*+)\"|'([^']*+)'|([^{WS}>]*+))"
)
_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-]*:")  # an absolute URL starts with a scheme
_H = ("h", "H")  # what an http(s) URL starts with (not "": "" in "hH" holds)
# The quote around each value group of _FIRST_HREF and of _ATTR (None: unquoted).
_FIRST_HREF_QUOTES = (None, '"', "'", None)
_ATTR_QUOTES = (None, None, None, '"', "'", None)


def rewrite_html(text: str, tracker: Tracker, *, pixel_position: str = "bottom") -> str:
    """``text`` with its tracked links replaced, the pixel inserted if the tracker
    still owes one, and ``http(s)+notrack://`` markers turned back into ``http(s)://``.

    Returns ``text`` itself (the same object) when nothing changed.
    """
    return apply_text_edits(text, html_edits(text, tracker, pixel_position=pixel_position))


def html_edits(
    text: str, tracker: Tracker, *, pixel_position: str = "bottom"
) -> list[tuple[int, int, str]]:
    """The ``(start, end, new)`` replacements :func:`rewrite_html` makes, in order."""
    edits: list[tuple[int, int, str]] = []
    last_link: list[int] = []  # where the last <a> start tag ends (before the pixel or not)
    pixel_at = _walk(
        text, 0, len(text), tracker, edits, vml=False, position=pixel_position, last_link=last_link
    )
    if pixel_at is not None:
        pixel = tracker.take_pixel()
        if pixel is not None:
            if (
                last_link
                and last_link[0] <= pixel_at
                and _LINK_END.search(text, last_link[0], pixel_at) is None
            ):
                pixel = "</a>" + pixel  # a link left open: the pixel would sit inside it
            edits.append((pixel_at, pixel_at, pixel))
    if _has_notrack(text):
        # Each marker not inside a replaced span goes; both lists are in document
        # order, so one sweep decides (a scan of every span per marker was quadratic).
        taken = sorted((s, e) for s, e, _ in edits if e > s)
        markers = []
        i = 0
        for m in _NOTRACK_ANY.finditer(text):
            start, end = m.end(1), m.end() - 3  # the "+notrack" between scheme and "://"
            while i < len(taken) and taken[i][1] <= start:
                i += 1
            if i == len(taken) or end <= taken[i][0]:
                markers.append((start, end, ""))
        edits.extend(markers)
    edits.sort()  # by start, then end: no two edits share both
    return edits


def _has_notrack(text: str) -> bool:
    """Whether ``text`` holds a ``+notrack://`` marker: str.find runs far faster than re's search."""
    at = text.find("+")
    while at != -1:
        if _NOTRACK_FIND.match(text, at) is not None:
            return True
        at = text.find("+", at + 1)
    return False


def apply_text_edits(text: str, edits: list[tuple[int, int, str]]) -> str:
    """``text`` with sorted, non-overlapping ``(start, end, new)`` edits applied."""
    if not edits:
        return text
    parts = []
    last = 0
    for start, end, new in edits:
        parts.append(text[last:start])
        parts.append(new)
        last = end
    parts.append(text[last:])
    return "".join(parts)


def _walk(
    text: str,
    start: int,
    stop: int,
    tracker: Tracker,
    edits: list[tuple[int, int, str]],
    *,
    vml: bool,
    position: str,
    base: str | None = None,
    last_link: list[int] | None = None,
) -> int | None:
    """Collect edits for text[start:stop]; return where the pixel belongs.

    ``base``: the document's ``<base href>`` so far (inside a conditional comment);
    None until a ``<base>`` with an href is seen, "" when that href is not absolute http(s).
    ``last_link``: set to ``[end]`` of the last ``<a>`` start tag seen.
    """
    clicks = tracker.clicks
    body_tags = not vml and position == "top"  # <body> stops the scan: the pixel follows it
    scan = scanner(vml, body_tags)
    body_open: int | None = None
    body_close: int | None = None
    unfinished: int | None = None  # where a construct starts that runs to the end unclosed
    for m in scan.finditer(text, start, stop):
        kind = m.lastindex  # the outermost group of the token that matched
        if kind == _TAG:
            name = m.start(_NAME)
            if text[name] in "bB":
                if text[name + 1] in "aA":  # <base>: the first with an href sets the base
                    if base is None:
                        base = _base_url(text, *m.span(_ATTRS))
                elif body_tags and body_open is None:
                    body_open = m.end()
            else:
                if last_link is not None and m.end(_NAME) == name + 1:  # <a>, not <area>
                    last_link[:] = [m.end()]
                if clicks:
                    attrs_start, attrs_end = m.span(_ATTRS)
                    _link(text, attrs_start, attrs_end, tracker, edits, base or None)
        elif kind == _ENDBODY:
            body_close = m.start(_ENDBODY)
        elif kind == _CONDBODY:
            # Only a conditional comment whose text holds "href" stops the scan.
            body_start, body_end = m.span(_CONDBODY)
            if clicks:
                _walk(
                    text,
                    body_start,
                    body_end,
                    tracker,
                    edits,
                    vml=True,
                    position=position,
                    base=base or None,
                )
            if body_end == m.end():  # no "-->": a comment to the end
                unfinished = m.start(_COND)
        elif kind == _UNFINISHED:
            unfinished = m.start(_UNFINISHED)
    if vml or not tracker.loads or tracker.images:
        return None
    if position == "top" and body_open is not None:
        return body_open
    if body_close is not None:
        return body_close
    return unfinished if unfinished is not None else stop


def _base_url(text: str, start: int, end: int) -> str | None:
    """The absolute http(s) URL of a ``<base>`` tag's href: None without one, "" for another."""
    if "href" not in text[start:end].lower():
        return None
    m = _FIRST_HREF.match(text, start, end)
    if m is None:
        return ""
    url = clean_url(decode_attribute(m.group(m.lastindex or 1)))
    return url if trackable_host(url) is not None else ""


def _link(
    text: str,
    start: int,
    end: int,
    tracker: Tracker,
    edits: list[tuple[int, int, str]],
    base: str | None = None,
) -> None:
    """Track the ``href`` among the attributes ``text[start:end]``; drop opt-out attributes.

    ``base``: the absolute URL of the document's ``<base href>``, if any.
    """
    attrs = text[start:end].lower()
    if "href" not in attrs:
        return  # no href: nothing to track, and opt-out attributes stay (as without one)
    if "track" in attrs and ("no-track" in attrs or "clicktracking" in attrs):
        _link_slowly(text, start, end, tracker, edits, base)
    elif base or "http" in attrs or "&" in attrs:  # else no href value can be an http(s) URL
        m = _FIRST_HREF.match(text, start, end)
        if m is not None:
            group = m.lastindex or 1
            _href(m, group, tracker, edits, _FIRST_HREF_QUOTES[group], base)


def _link_slowly(
    text: str,
    start: int,
    end: int,
    tracker: Tracker,
    edits: list[tuple[int, int, str]],
    base: str | None = None,
) -> None:
    """Read every attribute: an opt-out attribute may be there (and is removed)."""
    href: re.Match[str] | None = None
    opt_out: list[re.Match[str]] = []
    seen: set[str] = set()
    for a in _ATTR.finditer(text, start, end):
        name = a.group(1).lower()
        if name in seen:
            continue  # a repeated attribute is ignored by browsers
        seen.add(name)
        if name == "href":
            href = a
        elif name in _OPT_OUT:
            if name != "clicktracking" or a.group(a.lastindex or 1).strip().lower() == "off":
                opt_out.append(a)
    if href is None or href.lastindex == 1:
        return  # no href, or an href without a value
    if opt_out:
        for a in opt_out:
            edits.append((a.start(), a.end(), ""))
        return
    group = href.lastindex or 1
    _href(href, group, tracker, edits, _ATTR_QUOTES[group], base)


def _href(
    m: re.Match[str],
    group: int,
    tracker: Tracker,
    edits: list[tuple[int, int, str]],
    quote: str | None,
    base: str | None = None,
) -> None:
    """Track one href value, group ``group`` of ``m``, quoted with ``quote`` (None: unquoted).

    With a ``base``, a relative reference is tracked as the URL it resolves to.
    """
    raw = m.group(group)
    if "&" in raw:
        url = clean_url(decode_attribute(raw))
    elif raw[:1] in _H or raw.lstrip(C0_SPACE)[:1] in _H:
        url = clean_url(raw)
    elif base is None:
        return  # mailto:, #top, {{url}}, a relative link: the common cases, decided at once
    else:
        url = clean_url(raw)
    if base is not None and url and url[0] != "#" and _SCHEME.match(url) is None:
        url = urljoin(base, url)  # a relative reference: the client opens it resolved
    host = trackable_host(url)
    if host is None:
        plain = strip_notrack(url) if "+" in url else None
        if plain is not None and "+notrack:" not in raw.lower():
            # The marker was written with character references: rewrite the value.
            new = escape_attribute(plain, quote or '"')
            edits.append((*m.span(group), new if quote else f'"{new}"'))
        return
    if not url.isascii():
        try:
            url.encode("utf-8")
        except UnicodeEncodeError:
            return  # undecodable bytes in the part: the stored URL would be garbage
    click = tracker.click_url(url, host)
    if click is not None:
        edits.append((*m.span(group), click))
