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
from collections.abc import Sequence
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
        self,
        start: int,
        end: int,
        default_type: str = "text/plain",
        depth: int = 0,
        msg: Message | None = None,
    ) -> None:
        """Collect the edits that rewrite entity ``raw[start:end]`` and its children.

        ``msg``: the entity's header, when the caller has read it already (the
        top level's: a header read costs about 0.35 ms).
        """
        if depth > _MAX_DEPTH:
            raise Malformed(f"multiparts nested more than {_MAX_DEPTH} deep")
        raw = self.raw
        header_end, body_start = split_headers(raw, start, end)
        if msg is None:
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
        padded = _has_qp_padding(body)
        body_read = _QP_PADDING.sub(b"", body) if padded else body
        m = _QP_LOSSY_OR_LF.search(body_read)  # one pass for both: both are rare
        encoded_lf = m is not None and m.group()[1:] in (b"0A", b"0a")
        if encoded_lf and m is not None:
            m = _QP_LOSSY.search(body_read, m.end())
        if m is not None:
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
        if (
            codec not in _ROUND_TRIPS
            and (not data.isascii() or not _ascii_compatible(codec))
            and text.encode(codec, "surrogateescape") != data
        ):
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
        reused = (
            _qp_edited(body, text, changes, codec, eol, padded=padded, encoded_lf=encoded_lf)
            if cte == "quoted-printable"
            else None
        )
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


def _has_qp_padding(body: bytes) -> bool:
    """Whether a line of ``body`` ends in transport padding (RFC 2045 6.7 (3)).

    Encoders write trailing blanks as ``=20``, so there is seldom any: a search
    from line feed to line feed rules it out (the substitution alone tried every
    byte: 1.7 ms on a 20 KB part).
    """
    return _PADDED_LF.search(body) is not None or body.endswith((b" ", b"\t"))


# Literal white space before an encoded line's end is transport padding (RFC 2045 6.7).
# Trailing blanks of a line: a match starts only where a run of blanks starts and
# never gives a blank back, so an indented line costs one step per blank, not the
# square of its indentation (which made the whole-message QP path 12x slower).
_QP_PADDING = re.compile(rb"(?<![ \t])[ \t]++(?=\r?\n|\Z)")
# With transport padding after a soft break's "=" (rare), the pattern that marks the
# break's line feed and keeps what is before it.
_SOFT_LF_PADDED = re.compile(rb"(=[ \t]*+\r?)\n")
_PADDED_LF = re.compile(rb"\n(?:(?<=[ \t]\n)|(?<=[ \t]\r\n))")  # after a blank
_SOFT_MARK = b"\x00soft\x00"  # stands for a soft break's line feed while lines are split
# What a2b_qp reads with loss: "=" before a lone CR stops it (the rest of the part is
# dropped), and "==" becomes "=".
_QP_LOSSY = re.compile(rb"=\r(?!\n)|==")
# The same, or an encoded line break ("=0A" not after another "=": that is lossy).
_QP_LOSSY_OR_LF = re.compile(rb"=(?:\r(?!\n)|=|0[aA])")
# Codecs that give every byte string back from its surrogateescape decoding (an
# undecodable byte becomes a lone surrogate and is written back as that byte), so
# checking costs a whole encode for nothing (about 10% of the QP message path).
_ROUND_TRIPS = frozenset({"utf-8", "ascii", "iso8859-1"})  # codecs.lookup() names
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
    body: bytes,
    text: str,
    changes: list[tuple[int, int, str]],
    codec: str,
    eol: bytes,
    *,
    padded: bool,
    encoded_lf: bool,
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
    again. ``padded``, ``encoded_lf``: whether ``body`` has transport padding,
    and an ``=0A``.

    The soft breaks' line feeds are swapped for a mark and the body split at the
    others, in C: a Python step per physical line cost 3 ms per corpus document
    (a' in ``benchmarks/rewrite.py``).
    """
    if _SOFT_MARK in body or codec.startswith(_STATEFUL_OR_WIDE):
        return None
    if padded:
        lines = _SOFT_LF_PADDED.sub(rb"\1" + _SOFT_MARK, body).split(b"\n")
    else:
        marked = body.replace(b"=\r\n", b"=\r" + _SOFT_MARK).replace(b"=\n", b"=" + _SOFT_MARK)
        lines = marked.split(b"\n")
    # The decoded "\n"s an encoded line carries inside it (its "=0A"s): rare.
    if not encoded_lf:
        inner = None
        decoded_lines = len(lines)
    else:
        inner = [line.count(b"=0A") + line.count(b"=0a") for line in lines]
        decoded_lines = len(lines) + sum(inner)
    if decoded_lines != text.count("\n") + 1:
        return None
    # Decoded line k of text belongs to encoded line owner[k]; encoded line n decodes to
    # the decoded lines first_line[n] up to first_line[n + 1] (without "=0A"s: n to n + 1).
    if inner is None:
        owner: Sequence[int] = range(decoded_lines)
        first_line: Sequence[int] = range(decoded_lines + 1)
    else:
        owner = [n for n, more in enumerate(inner) for _ in range(more + 1)]
        first_line = list(itertools.accumulate((more + 1 for more in inner), initial=0))
    # Changes grouped by the encoded lines they touch (in order, so a sweep merges
    # them): (first encoded line, last, the changes, decoded line of the first
    # change's start, decoded line of the last change's end).
    groups: list[tuple[int, int, list[tuple[int, int, str]], int, int]] = []
    index = 0  # the decoded line number of position ``counted``, counted forwards once
    counted = 0
    for change in changes:
        start, end, _ = change
        index += text.count("\n", counted, start)
        counted = start
        end_line = index + text.count("\n", start, end)
        first, last = owner[index], owner[end_line]
        if groups and first <= groups[-1][1]:
            g_first, g_last, g_changes, g_line, _ = groups[-1]
            groups[-1] = (g_first, max(last, g_last), [*g_changes, change], g_line, end_line)
        else:
            groups.append((first, last, [change], index, end_line))
    for first, last, group, start_line, end_line in reversed(groups):
        seg_start = _line_start(text, group[0][0], start_line - first_line[first])
        seg_end = _line_end(text, group[-1][1], first_line[last + 1] - 1 - end_line)
        # Read back as a reader's decoder will, the lines replaced and their
        # replacement: a line mapped wrong (malformed quoted-printable) and the caller
        # encodes the whole part instead. The lines between stay as they were.
        old = b"\n".join(lines[first : last + 1]).replace(_SOFT_MARK, b"\n")
        if padded:
            old = _QP_PADDING.sub(b"", old)
        if binascii.a2b_qp(old) != text[seg_start:seg_end].encode(codec, "surrogateescape"):
            return None
        segment = apply_text_edits(
            text[seg_start:seg_end], [(s - seg_start, e - seg_start, new) for s, e, new in group]
        ).encode(codec, "surrogateescape")
        new_lines = [_qp_line(line, eol) for line in segment.split(b"\n")]
        if binascii.a2b_qp(b"\n".join(new_lines)) != segment:
            return None
        lines[first : last + 1] = new_lines
    return b"\n".join(lines).replace(_SOFT_MARK, b"\n")


def _line_start(text: str, at: int, back: int) -> int:
    """Where the line ``back`` lines before the one holding ``text[at]`` starts."""
    for _ in range(back + 1):
        at = text.rfind("\n", 0, at)
        if at == -1:
            return 0
    return at + 1


def _line_end(text: str, at: int, forward: int) -> int:
    """Where the line ``forward`` lines after the one holding ``text[at]`` ends (its "\\n")."""
    at -= 1
    for _ in range(forward + 1):
        at = text.find("\n", at + 1)
        if at == -1:
            return len(text)
    return at


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
