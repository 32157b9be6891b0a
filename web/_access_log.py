"""The fast server's access log: one line per request, ``common`` (NCSA) or ``json``.

What comes from the wire is written escaped, the way Apache's ``mod_log_config``
does it (``ap_escape_logitem``): ``"`` and ``\\`` get a backslash, ``\\n``,
``\\r``, ``\\t``, ``\\b``, ``\\v`` their C escapes, and every other control or
non-ASCII byte ``\\xhh``. So a request line cannot forge a second log line, end
the quoted field early, or send escape sequences to a terminal. The JSON format
is escaped by ``json.dumps``.

Not here: deciding whether to log (the server opens this only when
``tracking.log.access_log`` is on) or rotating files (use ``copytruncate``).
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING
from typing import TextIO

from ._routes import CLIENT_KEY

if TYPE_CHECKING:
    from ._handler import TrackingHandler

_SPECIAL = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}
#: For ``str.translate`` over latin-1 text (what request lines are decoded as).
_ESCAPES = {
    c: _SPECIAL.get(chr(c), f"\\x{c:02x}")
    for c in range(256)
    if chr(c) in _SPECIAL or c < 0x20 or c >= 0x7F
}


def escape(text: str) -> str:
    """``text`` as Apache writes a log item: printable ASCII, everything else escaped."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return text.translate(_ESCAPES).encode("ascii", "backslashreplace").decode("ascii")


class AccessLog:
    """Writes one line per request to ``stream`` (a file or stderr)."""

    def __init__(self, fmt: str, stream: TextIO) -> None:
        self.fmt = fmt
        self.stream = stream

    def close(self) -> None:
        if self.stream not in (sys.stderr, sys.stdout):
            self.stream.close()

    def write(self, handler: TrackingHandler) -> None:
        """The line for the request ``handler`` (a ``TrackingHandler``) has just answered."""
        environ = getattr(handler, "environ", None) or {}
        client = environ.get(CLIENT_KEY) or environ.get("REMOTE_ADDR")
        if client is None:
            address = handler.client_address
            client = address[0] if isinstance(address, tuple) else address
        status = getattr(handler, "_orig_status", None) or handler.status or "000"
        if isinstance(status, bytes):
            status = status.decode("latin-1")
        code = status.split(" ", 1)[0]
        length = max(0, (handler.response_length or 0) - handler.head_length)
        if self.fmt == "json":
            line = json.dumps(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "client": client,
                    "request": handler.requestline or "",
                    "host": environ.get("HTTP_HOST"),
                    "status": int(code) if code.isdigit() else code,
                    "bytes": length,
                    "user_agent": environ.get("HTTP_USER_AGENT"),
                    "duration": round((handler.time_finish or time.time()) - handler.time_start, 6),
                },
                separators=(",", ":"),
            )
        else:
            when = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
            line = (
                f"{escape(str(client or '-'))} - - [{when}] "
                f'"{escape(handler.requestline or "")}" {escape(code)} {length or "-"}'
            )
        try:
            self.stream.write(line + "\n")
        except (OSError, ValueError):
            pass
