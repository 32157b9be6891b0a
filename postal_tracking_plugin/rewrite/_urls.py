"""Reading link URLs the way a browser does, and deciding which ones are tracked.

Pure functions, no I/O. The HTML side hands over raw attribute values (still
entity-encoded), the text side bare URLs; both end up in :func:`trackable_host`,
the single place that says "this is an absolute http(s) URL with a real host that
is not a template placeholder".
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from html.entities import html5 as _HTML5

# Character references as the HTML tokenizer sees them inside an attribute value.
_CHARREF = re.compile(r"&(#[xX][0-9a-fA-F]+;?|#[0-9]+;?|[a-zA-Z][a-zA-Z0-9]*;?)")

# URL standard: strip leading/trailing C0 controls and space, drop every tab/CR/LF.
C0_SPACE = "".join(chr(c) for c in range(0x21))
_TAB_NEWLINE = str.maketrans("", "", "\t\n\r")

# Scheme, optional user info (up to the authority's last "@"), host, optional port.
# A host holding a character no host name has (_BAD_HOST) does not match at all.
_BAD_HOST = r"\s\"'<>^`{|}%"
_HOST_PORT = rf"(\[[^\]/?#\\@{_BAD_HOST}]*\]|[^/?#\\:@{_BAD_HOST}]*)(?::[0-9]*)?(?=[/?#\\]|\Z)"
_AUTHORITY = re.compile(r"[hH][tT][tT][pP][sS]?://(?:[^/?#\\]*@)?" + _HOST_PORT)
_AUTHORITY_NO_AT = re.compile(r"[hH][tT][tT][pP][sS]?://" + _HOST_PORT)  # the same without "@"
_NOTRACK = re.compile(r"(?i)(https?)\+notrack://")

# Template placeholders left for a later stage to fill in: tracking them would
# hide them from that stage (Handlebars/Jinja/Liquid, Mailchimp merge tags,
# Mailgun %recipient.x%, ${...}, ERB/ASP). A %XX% percent-escape is not one.
_PLACEHOLDER = re.compile(
    r"\{\{|\}\}|\{%|%\}|\*\||\|\*|\$\{|<%|%>|%(?![0-9A-Fa-f]{2})[A-Za-z_][\w.\-]*%"
)
_PORT = re.compile(r":\d*\Z")  # on exclusion entries


def _charref(match: re.Match[str]) -> str:
    ref = match.group(1)
    if ref[0] == "#":
        return html.unescape(match.group(0))  # numeric: html's spec-conformant table
    if ref in _HTML5:
        if ref.endswith(";"):
            return _HTML5[ref]
        # A legacy reference without ";" followed by "=" is not decoded in an
        # attribute (the HTML spec's historical rule: "?a=1&copy=2" stays).
        end = match.end()
        if end < len(match.string) and match.string[end] == "=":
            return match.group(0)
        return _HTML5[ref]
    return match.group(0)  # unknown, or a legacy prefix followed by an alnum


def decode_attribute(raw: str) -> str:
    """An attribute value as the browser reads it: character references decoded."""
    if "&" not in raw:
        return raw
    return _CHARREF.sub(_charref, raw)


def clean_url(value: str) -> str:
    """What the URL parser sees: outer spaces and controls stripped, tabs/newlines gone."""
    value = value.strip(C0_SPACE)
    if "\n" in value or "\t" in value or "\r" in value:
        value = value.translate(_TAB_NEWLINE)
    return value


def escape_attribute(value: str, quote: str) -> str:
    """Write ``value`` back inside an attribute quoted with ``quote`` (``"`` or ``'``)."""
    value = value.replace("&", "&amp;")
    return value.replace('"', "&quot;") if quote == '"' else value.replace("'", "&#39;")


def strip_notrack(url: str) -> str | None:
    """``http(s)+notrack://...`` without the marker, or None when there is none."""
    m = _NOTRACK.match(url)
    return None if m is None else m.group(1) + "://" + url[m.end() :]


def trackable_host(url: str) -> str | None:
    """The lower-cased host (no port) of an absolute http(s) URL worth tracking.

    None for anything else: another scheme, a relative or host-less URL
    (``http://`` alone is a common template placeholder), a host that cannot be
    a host name, or a URL carrying a template placeholder anywhere.
    """
    m = (_AUTHORITY if "@" in url else _AUTHORITY_NO_AT).match(url)
    if m is None:
        return None
    host = m.group(1).rstrip(".").lower()
    if not host or host[0] == ".":
        return None
    # Every placeholder holds one of these: str's "in" runs faster than any regex.
    if (
        "%" in url
        or "{" in url
        or "}" in url
        or "|" in url
        or "$" in url
        or "<" in url
        or ">" in url
    ) and _PLACEHOLDER.search(url):
        return None
    return host


class Exclusions:
    """The tracking domain's excluded link hosts.

    Postal matches a host exactly; ``*.example.com`` also matches example.com and
    every subdomain. Case-insensitive; a port on either side is ignored.
    """

    __slots__ = ("exact", "suffixes")

    def __init__(self, entries: Iterable[str] = ()) -> None:
        exact: set[str] = set()
        suffixes: list[str] = []
        for entry in entries:
            entry = _PORT.sub("", entry.strip().lower()).rstrip(".")
            if entry.startswith("*."):
                exact.add(entry[2:])
                suffixes.append(entry[1:])
            elif entry:
                exact.add(entry)
        #: Hosts matched exactly, and the ``.example.com`` endings of ``*.`` entries.
        self.exact = frozenset(exact)
        self.suffixes = tuple(suffixes)

    def __contains__(self, host: str) -> bool:
        return host in self.exact or (bool(self.suffixes) and host.endswith(self.suffixes))

    def __bool__(self) -> bool:
        return bool(self.exact)
