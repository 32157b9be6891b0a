"""Postal's tokens and link hashes: what every tracking URL is made of."""

from __future__ import annotations

import hashlib
import re
import secrets
import string

_ALNUM = string.ascii_letters + string.digits
SERVER_TOKEN_RE = re.compile(r"^[a-z]{6}$")


# Random bytes below 248 (= 4 * 62) map evenly onto the 62 alphanumerics; the
# rest are dropped (rejection sampling): unbiased, and done in C by translate.
_TOKEN_TABLE = bytes(ord(_ALNUM[b % 62]) if b < 248 else 0 for b in range(256))
_TOKEN_DROP = bytes(range(248, 256))


def random_token(length: int = 16) -> str:
    """Postal's message and link tokens: random alphanumerics, about 95 bits for 16.

    One link token per link of every message: it must be cheap as well as
    unguessable (``secrets.choice`` per character cost ~1 µs each).
    """
    out = b""
    while len(out) < length:
        out += secrets.token_bytes(length + 8).translate(_TOKEN_TABLE, _TOKEN_DROP)
    return out[:length].decode("ascii")


def server_token() -> str:
    """Postal's server token: 6 random lowercase letters."""
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(6))


def url_hash(url: str) -> str:
    """``links.hash``: SHA-1 hex of the URL, as Postal stores it."""
    return hashlib.sha1(url.encode("utf-8")).hexdigest()
