"""Rewrite links in decoded HTML text and insert the open pixel, changing nothing else.

A small tokenizer, written as one regular expression, walks the document the
way the HTML5 tokenizer splits it (text, tags with their attributes, comments,
raw-text elements such as ``<style>`` and ``<script>``) without building a tree.
Only the tags that matter stop the scan: ``<a>`` and ``<area>``, ``<body>`` and
``</body>``, and Outlook's ``<!--[if ...]>`` conditional comments, inside which
VML elements (``<v:roundrect href=...>``) are tracked too. Everything else,
including quoted attribute values that happen to contain ``<a href``, is
consumed inside the regex engine and copied through untouched, so the output
differs from the input only in the ``href`` values that change, removed opt-out
attributes, and the pixel. Re-serialising a parsed tree (as pytracking does)
would lose doctypes, comments, entities and quoting.
"""

from __future__ import annotations

import re

from ._plan import Tracker
from ._urls import clean_url
from ._urls import decode_attribute
from ._urls import escape_attribute
from ._urls import strip_notrack
from ._urls import trackable_host

_WS = r"\t\n\f\r "
# The attributes of a tag, as the tokenizer reads them: names run to white
# space, "/", ">" or "="; values are double-, single- or un-quoted.
_ATTRS = (
    rf"(?:[{_WS}/]+|[^{_WS}/>][^{_WS}/>=]*+"
    rf"(?:[{_WS}]*+=[{_WS}]*+(?:\"[^\"]*+\"|'[^']*+'|[^{_WS}>]*+))?)*+"
)
_END = rf"(?=[{_WS}/>])"
_RAW = "script|style|textarea|title|xmp|iframe|noembed|noframes"
_TRACKED = "a|area"


def _scanner(vml: bool) -> re.Pattern[str]:
    interesting_tag = f"(?:{_TRACKED}|v:[a-z0-9_-]+)" if vml else f"(?:{_TRACKED}|body)"
    body_end = "" if vml else f"|/body{_END}"
    # Raw-text elements, one alternative each: no capture groups inside the
    # possessive loop (CPython 3.11's re mishandles them there).
    raw_text = "".join(
        rf"|<{name}{_END}{_ATTRS}>.*?(?:</{name}{_END}|\Z)" for name in _RAW.split("|")
    )
    boring = (
        "(?:[^<]++"
        r"|<!--(?!\[if)(?:-?>|.*?--!?>|.*+)"  # comment (unterminated: to the end)
        r"|<!(?!--\[if)[^>]*+>?"  # doctype, CDATA, bogus comment
        r"|<\?[^>]*+>?"
        rf"|</(?!body{_END})[a-z][^{_WS}/>]*+{_ATTRS}>"  # end tag
        r"|</>|</[^a-z>][^>]*+>?"
        + raw_text
        + rf"|<plaintext{_END}.*+"
        rf"|<(?!{interesting_tag}{_END})[a-z][^{_WS}/>]*+{_ATTRS}>"  # any other start tag
        rf"|<(?!{interesting_tag}{_END}{body_end}|!--\[if)"  # a "<" that is text
        ")*+"
    )
    interesting = (
        r"(?:(?P<cond><!--\[if[^\]]*+\]>)(?P<condbody>.*?)(?:--!?>|\Z)"
        rf"|(?P<tag><(?P<name>{interesting_tag}){_END}(?P<attrs>{_ATTRS})>)"
        rf"|(?P<endbody></body{_END}{_ATTRS}>)"
        r"|<|\Z)"
    )
    return re.compile(boring + interesting, re.IGNORECASE | re.DOTALL | re.ASCII)


_SCAN = _scanner(vml=False)
_SCAN_VML = _scanner(vml=True)

_ATTR = re.compile(
    rf"[{_WS}/]*(?P<name>[^{_WS}/>][^{_WS}/>=]*)"
    rf"(?:(?P<eq>[{_WS}]*=[{_WS}]*)(?:\"(?P<dq>[^\"]*)\"|'(?P<sq>[^']*)'|(?P<uq>[^{_WS}>]*)))?"
)
_OPT_OUT = frozenset({"data-pm-no-track", "data-no-track", "clicktracking"})
_NOTRACK_ANY = re.compile(r"(?i)(https?)\+notrack://")
_NOTRACK_FIND = re.compile(r"\+(?i:notrack)://")


def rewrite_html(text: str, tracker: Tracker, *, pixel_position: str = "bottom") -> str:
    """``text`` with its tracked links replaced, the pixel inserted if the tracker
    still owes one, and ``http(s)+notrack://`` markers turned back into ``http(s)://``.

    Returns ``text`` itself (the same object) when nothing changed.
    """
    edits: list[tuple[int, int, str]] = []
    pixel_at = _walk(text, 0, len(text), tracker, edits, vml=False, position=pixel_position)
    if pixel_at is not None:
        pixel = tracker.take_pixel()
        if pixel is not None:
            edits.append((pixel_at, pixel_at, pixel))
    if edits:
        edits.sort(key=lambda e: e[0])
        parts = []
        last = 0
        for start, end, new in edits:
            parts.append(text[last:start])
            parts.append(new)
            last = end
        parts.append(text[last:])
        text = "".join(parts)
    if _NOTRACK_FIND.search(text) is not None:
        text = _NOTRACK_ANY.sub(r"\1://", text)
    return text


def _walk(
    text: str,
    start: int,
    stop: int,
    tracker: Tracker,
    edits: list[tuple[int, int, str]],
    *,
    vml: bool,
    position: str,
) -> int | None:
    """Collect edits for text[start:stop]; return where the pixel belongs."""
    scan = _SCAN_VML if vml else _SCAN
    body_open: int | None = None
    body_close: int | None = None
    clicks = tracker.clicks
    for m in scan.finditer(text, start, stop):
        if m.start("tag") >= 0:
            name = m.group("name")
            if len(name) == 4 and name.lower() == "body":
                if body_open is None:
                    body_open = m.end("tag")
            elif clicks:
                _link(m, tracker, edits)
        elif m.start("endbody") >= 0:
            body_close = m.start("endbody")
        elif m.start("cond") >= 0 and clicks:
            _walk(text, m.start("condbody"), m.end("condbody"), tracker, edits, vml=True,
                  position=position)
    if vml or not tracker.loads or tracker.images:
        return None
    if position == "top" and body_open is not None:
        return body_open
    return body_close if body_close is not None else stop


def _link(m: re.Match[str], tracker: Tracker, edits: list[tuple[int, int, str]]) -> None:
    """Track the ``href`` of one tag, and drop the tag's opt-out attribute."""
    href: re.Match[str] | None = None
    opt_out: list[re.Match[str]] = []
    seen: set[str] = set()
    attrs = m.group("attrs")
    base = m.start("attrs")
    for a in _ATTR.finditer(attrs):
        name = a.group("name").lower()
        if name in seen:
            continue  # a repeated attribute is ignored by browsers
        seen.add(name)
        if name == "href":
            href = a
        elif name in _OPT_OUT:
            if name != "clicktracking" or _value(a).strip().lower() == "off":
                opt_out.append(a)
    if href is None or href.group("eq") is None:
        return  # no href, or an href without a value
    if opt_out:
        for a in opt_out:
            edits.append((base + a.start(), base + a.end(), ""))
        return
    raw = _value(href)
    url = clean_url(decode_attribute(raw))
    host = trackable_host(url)
    if host is None:
        plain = strip_notrack(url)
        if plain is not None and "+notrack:" not in raw.lower():
            # The marker was written with character references: rewrite the value.
            new = escape_attribute(plain, _quote(href))
            _replace(href, base, new if href.group("uq") is None else f'"{new}"', edits)
        return
    if not url.isascii():
        try:
            url.encode("utf-8")
        except UnicodeEncodeError:
            return  # undecodable bytes in the part: the stored URL would be garbage
    click = tracker.click_url(url, host)
    if click is not None:
        _replace(href, base, click, edits)


def _value(a: re.Match[str]) -> str:
    for group in ("dq", "sq", "uq"):
        v = a.group(group)
        if v is not None:
            return v
    return ""


def _quote(a: re.Match[str]) -> str:
    return "'" if a.group("sq") is not None else '"'


def _replace(a: re.Match[str], base: int, new: str, edits: list[tuple[int, int, str]]) -> None:
    for group in ("dq", "sq", "uq"):
        if a.group(group) is not None:
            edits.append((base + a.start(group), base + a.end(group), new))
            return
