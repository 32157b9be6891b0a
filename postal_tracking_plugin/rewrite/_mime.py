"""Walk a message's MIME tree on its raw bytes and rewrite the inline text parts.

The message is never parsed into objects and serialised again (the ``email``
package's generator refolds headers and re-encodes parts, which changes bytes
and breaks nothing-changed guarantees). Instead the entity boundaries are found
in the bytes, only each header block is read with the ``email`` package, and
each inline ``text/html`` or ``text/plain`` part is decoded, rewritten, and
re-encoded with its own transfer encoding and charset. Everything else
(headers, attachments, preambles, attached messages) is copied slice for
slice, so it stays byte-identical, and a large attachment is never decoded.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import functools
import itertools
import re
from dataclasses import dataclass
from dataclasses import field
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser
from typing import NamedTuple

from ._html import apply_text_edits
from ._html import html_edits
from ._plan import Tracker
from ._text import text_edits

_HEADER_PARSER = BytesHeaderParser(policy=policy.compat32)
_CTE_HEADER = re.compile(rb"(?im)^content-transfer-encoding[ \t]*:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*")
_X_AMP_SKIP = re.compile(rb"(?im)^x-amp[ \t]*:[ \t]*skip[ \t]*(?:\r?\n|\Z)")
_DKIM = re.compile(rb"(?im)^dkim-signature[ \t]*:")
_SIGNED = ("multipart/signed", "multipart/encrypted")
_MAX_DEPTH = 50  # real mail nests a handful deep; this keeps far from the recursion limit

Edit = tuple[int, int, bytes]


class Malformed(Exception):
    """The message cannot be read safely: it is sent unchanged."""


class Untouchable(Exception):
    """Rewriting would break something (a signature): the message is sent unchanged."""


def split_headers(raw: bytes, start: int, end: int) -> tuple[int, int]:
    """``(header_end, body_start)`` of the entity ``raw[start:end]``.

    The header block includes its last line break; the body starts after the
    blank line. Without a blank line everything is header and the body is empty.
    """
    if raw.startswith(b"\r\n", start) or raw.startswith(b"\n", start):
        return start, start + (2 if raw[start] == 13 else 1)
    crlf = raw.find(b"\n\r\n", start, end)
    lf = raw.find(b"\n\n", start, crlf if crlf != -1 else end)
    if lf != -1:
        return lf + 1, lf + 2
    if crlf != -1:
        return crlf + 1, crlf + 3
    return end, end


def parse_headers(raw: bytes, start: int, end: int) -> Message:
    return _HEADER_PARSER.parsebytes(raw[start:end])


def line_ending(raw: bytes) -> bytes:
    i = raw.find(b"\n")
    return b"\r\n" if i > 0 and raw[i - 1] == 13 else b"\n"


def top_level_edits(raw: bytes, header_end: int) -> tuple[list[Edit], bool, bool]:
    """Edits removing ``X-AMP: skip``, and whether it and a DKIM signature were there."""
    header = raw[:header_end]
    edits = [(m.start(), m.end(), b"") for m in _X_AMP_SKIP.finditer(header)]
    return edits, bool(edits), _DKIM.search(header) is not None


@dataclass
class MimeWalk:
    """One message's MIME walk: what every entity needs, and the edits it collects.

    :param raw: the whole message; entities are ``(start, end)`` slices of it.
    :param tracker: hands out click URLs and the pixel, and collects the links.
    :param pixel_position: ``bottom`` or ``top`` (see :class:`TrackingPlan`).
    :param eol: the message's line ending, for the lines a re-encoded body gets.
    :param edits: the ``(start, end, new bytes)`` replacements, in no order.
    """

    raw: bytes
    tracker: Tracker
    pixel_position: str
    eol: bytes
    edits: list[Edit] = field(default_factory=list)

    def entity(
        self, start: int, end: int, default_type: str = "text/plain", depth: int = 0
    ) -> None:
        """Collect the edits that rewrite entity ``raw[start:end]`` and its children."""
        if depth > _MAX_DEPTH:
            raise Malformed(f"multiparts nested more than {_MAX_DEPTH} deep")
        raw = self.raw
        header_end, body_start = split_headers(raw, start, end)
        msg = parse_headers(raw, start, header_end)
        msg.set_default_type(default_type)
        ctype = msg.get_content_type()
        if ctype in _SIGNED:
            raise Untouchable(f"{ctype} (rewriting would break it)")
        maintype, _, subtype = ctype.partition("/")
        if maintype == "multipart":
            boundary = msg.get_param("boundary")
            if not isinstance(boundary, str) or not boundary:
                raise Malformed(f"{ctype} without a boundary")
            child_type = "message/rfc822" if subtype == "digest" else "text/plain"
            for part_start, part_end in _parts(raw, body_start, end, boundary.encode("latin-1")):
                self.entity(part_start, part_end, child_type, depth + 1)
        elif maintype == "text" and subtype in ("html", "plain"):
            if msg.get_content_disposition() == "attachment":
                return
            _rewrite_leaf(self, _Leaf(start, header_end, body_start, end, msg, subtype))


class _Leaf(NamedTuple):
    """An inline text/html or text/plain entity: where its header and body are, its header."""

    start: int
    header_end: int
    body_start: int
    end: int
    msg: Message
    subtype: str


def _parts(raw: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """The ``(start, end)`` of each body part between the boundary delimiters."""
    delimiter = b"--" + boundary
    parts: list[tuple[int, int]] = []
    part_start: int | None = None
    pos = start
    while True:
        i = raw.find(delimiter, pos, end)
        if i == -1:
            break
        pos = i + len(delimiter)
        if i != start and raw[i - 1] != 10:
            continue  # not at the start of a line
        closing = raw.startswith(b"--", pos, end)
        after = pos + 2 if closing else pos
        line_end = raw.find(b"\n", after, end)
        line_end = end if line_end == -1 else line_end + 1
        if raw[after:line_end].strip(b" \t\r\n"):
            continue  # "--boundary-more": a longer boundary, not ours
        if part_start is not None:
            content_end = i
            if i != start:
                content_end -= 1
                if content_end > start and raw[content_end - 1] == 13:
                    content_end -= 1
            parts.append((part_start, max(content_end, part_start)))
        if closing:
            return parts
        part_start = line_end
        pos = line_end
    if part_start is not None and part_start < end:
        parts.append((part_start, end))  # no closing delimiter: read leniently
    return parts


def _rewrite_leaf(walk: MimeWalk, leaf: _Leaf) -> None:
    """Collect the edits of one text part, or none: a part that cannot be read back
    exactly (see the checks below) is left alone."""
    start, header_end, body_start, end, msg, subtype = leaf
    tracker, edits, eol = walk.tracker, walk.edits, walk.eol
    cte = str(msg.get("content-transfer-encoding", "7bit")).strip().lower() or "7bit"
    body = walk.raw[body_start:end]
    if cte == "base64":
        try:
            data = binascii.a2b_base64(body)
        except binascii.Error as exc:
            raise Malformed(f"broken base64 in a text/{subtype} part: {exc}") from None
        if base64.b64encode(data) != b"".join(body.split()):
            return  # two padded chunks, stray characters: decoding would drop some
    elif cte == "quoted-printable":
        body_read = _QP_PADDING.sub(b"", body)  # RFC 2045 6.7 (3): transport padding goes
        if _QP_LOSSY.search(body_read):
            return  # a2b_qp would drop the rest of the part, or read "==" as "="
        data = binascii.a2b_qp(body_read)
    elif cte in ("7bit", "8bit", "binary"):
        data = body
    else:
        return  # an encoding we do not know (x-uuencode, ...): leave the part alone
    charset = msg.get_content_charset() or "utf-8"  # undeclared: ASCII, or UTF-8 in practice
    try:
        codec = codecs.lookup(charset).name
        text = data.decode(codec, "surrogateescape")
        if (not data.isascii() or not _ascii_compatible(codec)) and text.encode(
            codec, "surrogateescape"
        ) != data:
            return  # the codec would not give the same bytes back (UTF-16 without a BOM)
    except (LookupError, UnicodeError, ValueError):
        return  # a charset Python does not know: leave the part alone

    mark = (len(tracker.links), tracker.images)
    flowed = subtype == "plain" and str(msg.get_param("format", "")).lower() == "flowed"
    if subtype == "html":
        changes = html_edits(text, tracker, pixel_position=walk.pixel_position)
    else:
        changes = text_edits(text, tracker, flowed=flowed)
    if not changes:
        return
    try:
        reused = _qp_edited(body, text, changes, codec, eol) if cte == "quoted-printable" else None
        if reused is not None:
            edits.append((body_start, end, reused))
            return
        new_data = apply_text_edits(text, changes).encode(codec, "surrogateescape")
    except UnicodeError:
        del tracker.links[mark[0] :]  # the part stays as it was: so do its counts
        tracker.images = mark[1]
        return

    if cte == "base64":
        encoded = base64.encodebytes(new_data).rstrip(b"\n")
        if eol != b"\n":
            encoded = encoded.replace(b"\n", eol)
        new_body = encoded + body[len(body.rstrip()) :]
    elif cte == "quoted-printable":
        new_body = _qp(new_data, eol)
    elif cte != "binary" and (
        _has_long_line(new_data) or (cte == "7bit" and not new_data.isascii())
    ):
        # Too long for the declared encoding now: quoted-printable keeps lines short.
        new_body = _qp(new_data, eol)
        header = walk.raw[start:header_end]
        m = _CTE_HEADER.search(header)
        line = b"Content-Transfer-Encoding: quoted-printable"
        if m is not None:
            edits.append((start + m.start(), start + m.end(), line))
        else:
            edits.append((header_end, header_end, line + eol))
    else:
        new_body = new_data
    edits.append((body_start, end, new_body))


def _has_long_line(data: bytes) -> bool:
    """Whether a line of ``data`` is longer than RFC 5322's 998 octets.

    Split, not searched: re's search for ``[^\\r\\n]{999}`` tries each start
    anew, 39 s on 14 MB of 990-octet lines.
    """
    if len(data) < 999:
        return False
    return any(len(line) > 998 for line in data.replace(b"\r", b"\n").split(b"\n"))


# Literal white space before an encoded line's end is transport padding (RFC 2045 6.7).
# Trailing blanks of a line: a match starts only where a run of blanks starts and
# never gives a blank back, so an indented line costs one step per blank, not the
# square of its indentation (which made the whole-message QP path 12x slower).
_QP_PADDING = re.compile(rb"(?<![ \t])[ \t]++(?=\r?\n|\Z)")
# What a2b_qp reads with loss: "=" before a lone CR stops it (the rest of the part is
# dropped), and "==" becomes "=".
_QP_LOSSY = re.compile(rb"=\r(?!\n)|==")
_QP_ENCODED_LF = re.compile(rb"=0[aA]")  # maybe an encoded line break (not after another "=")
# Codecs where a line cannot be encoded on its own, or "\n" is not the byte 0x0A.
_STATEFUL_OR_WIDE = ("iso2022", "utf-7", "hz", "utf-16", "utf-32")


@functools.lru_cache(maxsize=64)
def _ascii_compatible(codec: str) -> bool:
    """Whether ASCII bytes mean the same characters in ``codec`` (not UTF-16, UTF-7, ...)."""
    ascii_bytes = bytes(range(128))
    try:
        return ascii_bytes.decode(codec) == ascii_bytes.decode("ascii") and (
            ascii_bytes.decode("ascii").encode(codec) == ascii_bytes
        )
    except (UnicodeError, LookupError):
        return False


def _qp_edited(
    body: bytes, text: str, changes: list[tuple[int, int, str]], codec: str, eol: bytes
) -> bytes | None:
    """The quoted-printable ``body`` with ``changes`` (offsets in the decoded ``text``)
    applied by re-encoding only the lines they touch.

    The rest of the part stays byte for byte as its encoder wrote it, and most of
    the encoding work is skipped. An encoded line is one or more physical lines
    joined at soft breaks (``=`` at the end, transport padding allowed after it);
    it decodes to one line of ``text``, or to several when it carries encoded
    line breaks (``=0A``). None when the lines do not add up to ``text`` (a
    charset whose line breaks are not "\\n"), or when the result does not
    decode to ``text`` with the changes: then the caller encodes the whole part
    again.
    """
    if codec.startswith(_STATEFUL_OR_WIDE):
        return None
    physical = body.split(b"\n")
    encoded_breaks = _QP_ENCODED_LF.search(body) is not None  # rare: then decode line by line
    # Each encoded line: (first physical line, after its last, decoded "\n" it adds).
    logical: list[tuple[int, int, int]] = []
    first = 0
    pieces: list[bytes] = []  # the encoded line's text, soft breaks and padding removed
    for i, line in enumerate(physical):
        content = (line[:-1] if line.endswith(b"\r") else line).rstrip(b" \t")
        soft = content.endswith(b"=") and i + 1 < len(physical)
        if encoded_breaks:
            pieces.append(content[:-1] if soft else content)
        if soft:
            continue  # the encoded line goes on
        extra = binascii.a2b_qp(b"".join(pieces)).count(b"\n") if encoded_breaks else 0
        pieces.clear()
        logical.append((first, i + 1, extra))
        first = i + 1
    if sum(extra for _, _, extra in logical) + len(logical) != text.count("\n") + 1:
        return None
    # Decoded line k of text belongs to encoded line owner[k]; encoded line n decodes to
    # the decoded lines first_line[n] up to first_line[n + 1].
    owner = [n for n, (_, _, extra) in enumerate(logical) for _ in range(extra + 1)]
    first_line = list(itertools.accumulate((extra + 1 for _, _, extra in logical), initial=0))
    line_start = [0]  # where each decoded line starts in text
    at = text.find("\n")
    while at != -1:
        line_start.append(at + 1)
        at = text.find("\n", at + 1)
    line_start.append(len(text) + 1)  # one past the last line's end
    # Changes grouped by the encoded lines they touch (in order, so a sweep merges them).
    groups: list[tuple[int, int, list[tuple[int, int, str]]]] = []
    index = 0  # the decoded line number of position ``counted``, counted forwards once
    counted = 0
    for change in changes:
        start, end, _ = change
        index += text.count("\n", counted, start)
        counted = start
        first, last = owner[index], owner[index + text.count("\n", start, end)]
        if groups and first <= groups[-1][1]:
            groups[-1] = (groups[-1][0], max(last, groups[-1][1]), [*groups[-1][2], change])
        else:
            groups.append((first, last, [change]))
    replacements = []
    for first, last, group in groups:
        seg_start = line_start[first_line[first]]
        seg_end = line_start[first_line[last + 1]] - 1
        segment = apply_text_edits(
            text[seg_start:seg_end], [(s - seg_start, e - seg_start, new) for s, e, new in group]
        )
        encoded = segment.encode(codec, "surrogateescape").split(b"\n")
        replacements.append(
            (logical[first][0], logical[last][1], [_qp_line(line, eol) for line in encoded])
        )
    for first_physical, after_physical, new_lines in reversed(replacements):
        physical[first_physical:after_physical] = new_lines
    new_body = b"\n".join(physical)
    # Read back as a reader's decoder will: anything else (malformed quoted-printable
    # mapped wrong) and the caller encodes the whole part instead.
    decoded = binascii.a2b_qp(_QP_PADDING.sub(b"", new_body)).decode(codec, "surrogateescape")
    return new_body if decoded == apply_text_edits(text, changes) else None


def _qp_line(line: bytes, eol: bytes) -> bytes:
    cr = line.endswith(b"\r")
    encoded = binascii.b2a_qp(line[:-1] if cr else line, quotetabs=False, istext=True)
    if eol != b"\n":
        encoded = encoded.replace(b"=\n", b"=" + eol)
    return encoded + b"\r" if cr else encoded


def _qp(data: bytes, eol: bytes) -> bytes:
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    if eol == b"\r\n" and b"\r\n" not in encoded and b"\n" in encoded:
        encoded = encoded.replace(b"\n", b"\r\n")
    return encoded


def apply_edits(raw: bytes, edits: list[Edit]) -> bytes:
    """``raw`` with each ``(start, end, new)`` span replaced (spans do not overlap)."""
    edits.sort(key=lambda e: (e[0], e[1]))
    view = memoryview(raw)
    pieces: list[bytes | memoryview] = []
    last = 0
    for start, end, new in edits:
        pieces.append(view[last:start])
        pieces.append(new)
        last = end
    pieces.append(view[last:])
    return b"".join(pieces)
