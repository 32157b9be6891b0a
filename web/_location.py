"""Turn a stored URL into a safe ``Location`` header value.

The redirect must go exactly where the sender's link went, so an ASCII URL is
passed through byte for byte. Only what cannot appear in a header is changed:
non-ASCII characters become a URI (an IDNA host, percent-encoded UTF-8
elsewhere), and control characters, CR and LF above all, are percent-encoded so
a stored URL can never split the response.
"""

from __future__ import annotations

from urllib.parse import quote
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

# Everything printable in ASCII stays as it is (including '%', so existing
# escapes are not doubled); the rest is percent-encoded as UTF-8.
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


def _is_clean(url: str) -> bool:
    return url.isascii() and url.isprintable() and " " not in url


def location_value(url: str) -> str:
    """The header value for ``url``: unchanged when it is printable ASCII."""
    if _is_clean(url):
        return url
    # Control characters first: urlsplit would silently drop CR, LF and TAB.
    url = "".join(f"%{ord(c):02X}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return quote(url, safe=_SAFE)
    netloc = parts.netloc
    if netloc and not netloc.isascii():
        netloc = _ascii_netloc(netloc)
    encoded = urlunsplit(
        (
            quote(parts.scheme, safe=_SAFE),
            quote(netloc, safe=_SAFE),
            quote(parts.path, safe=_SAFE),
            quote(parts.query, safe=_SAFE),
            quote(parts.fragment, safe=_SAFE),
        )
    )
    return encoded


def _ascii_netloc(netloc: str) -> str:
    userinfo, at, hostport = netloc.rpartition("@")
    host, colon, port = hostport.partition(":")
    if host.startswith("["):  # an IPv6 literal is ASCII already
        return netloc
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        host = quote(host, safe=_SAFE)
    return f"{quote(userinfo, safe=_SAFE)}{at}{host}{colon}{port}"
