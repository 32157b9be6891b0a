"""The MIME rules: which parts are rewritten, how they are re-encoded, what stays byte-identical."""

from __future__ import annotations

import base64
import binascii
import codecs
import email
import email.policy
import itertools
import re
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import postal_tracking_plugin
from postal_tracking_plugin.rewrite import TrackingPlan
from postal_tracking_plugin.rewrite import _mime
from postal_tracking_plugin.rewrite import rewrite
from postal_tracking_plugin.rewrite._plan import PIXEL_HTML

PLAN = TrackingPlan("click.example.com", "https", "srvtok")
NO_PIXEL = TrackingPlan("click.example.com", "https", "srvtok", track_loads=False)
CLICK = "https://click.example.com/srvtok/"
SAMPLE = Path(postal_tracking_plugin.__file__).parent / "data" / "sample-newsletter.eml"

FEW_QP = settings(max_examples=150, deadline=None)


def tokens():  # type: ignore[no-untyped-def]
    it = itertools.chain(["M000"], (f"L{i:03d}" for i in itertools.count()))
    return lambda: next(it)


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def texts(data: bytes) -> list[tuple[str, str]]:
    return [
        (part.get_content_type(), part.get_content())
        for part in parse(data).walk()
        if part.get_content_maintype() == "text"
    ]


def message(body: str, eol: str = "\r\n", headers: str = "") -> bytes:
    head = "From: News <news@example.com>\nTo: a@example.org\nSubject: Hi\nMessage-ID: <m1@example.com>\n"
    return (head + headers + body).replace("\n", eol).encode("utf-8")


NESTED = """MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="mixed"

preamble with https://preamble.example/ stays
--mixed
Content-Type: multipart/related; boundary=related

--related
Content-Type: multipart/alternative; boundary="alt"

--alt
Content-Type: text/plain; charset=us-ascii

Plain https://a.example/text
--alt
Content-Type: text/html; charset=us-ascii

<html><body><a href="https://a.example/html">x</a></body></html>
--alt--

--related
Content-Type: image/png
Content-ID: <logo>
Content-Transfer-Encoding: base64

iVBORw0KGgo=
--related--

--mixed
Content-Type: text/html; name=report.html
Content-Disposition: attachment; filename=report.html

<a href="https://attachment.example/">not a body part</a>
--mixed
Content-Type: message/rfc822

From: other@example.com
Subject: forwarded
Content-Type: text/html

<a href="https://forwarded.example/">inside an attached message</a>
--mixed
Content-Type: text/html; charset=utf-8
Content-Disposition: inline

<body><a href="https://a.example/second-html">x</a></body>
--mixed--
epilogue https://epilogue.example/
"""


@pytest.mark.parametrize("eol", ["\r\n", "\n"])
def test_nested_multiparts_only_inline_text_parts(eol: str) -> None:
    raw = message(NESTED, eol)
    result = rewrite(raw, PLAN, new_token=tokens())
    assert result.untouched is None
    assert [link.url for link in result.links] == [
        "https://a.example/text",
        "https://a.example/html",
        "https://a.example/second-html",
    ]
    assert result.tracked_images == 1
    pixel = "img/srvtok/M000"
    expected = raw.decode()
    expected = expected.replace("https://a.example/text", CLICK + "L000")
    expected = expected.replace("https://a.example/html", CLICK + "L001")
    expected = expected.replace("https://a.example/second-html", CLICK + "L002")
    out = result.data.decode()
    assert out.count(pixel) == 1  # one pixel, in the first HTML body part
    first_html = out.index(CLICK + "L001")
    assert first_html < out.index(pixel) < out.index(CLICK + "L002")
    container = out[
        out.index("<img src='https://click.example.com/" + pixel) : out.index(">", out.index(pixel))
        + 1
    ]
    assert out.replace(container, "") == expected  # everything else byte for byte
    assert eol in out and (eol == "\r\n" or "\r\n" not in out)


def test_quoted_printable_part_is_re_encoded_with_short_lines() -> None:
    html = "<p>caf\u00e9 " + "word " * 40 + '<a href="https://a.example/x?a=1&amp;b=2">x</a></p>'
    qp = binascii.b2a_qp(html.encode("iso-8859-1"), istext=True).decode("ascii")
    raw = message(
        "MIME-Version: 1.0\nContent-Type: text/html; charset=iso-8859-1\n"
        "Content-Transfer-Encoding: quoted-printable\n\n" + qp + "\n"
    )
    result = rewrite(raw, PLAN, new_token=tokens())
    assert [link.url for link in result.links] == ["https://a.example/x?a=1&b=2"]
    head, _, body = result.data.partition(b"\r\n\r\n")
    assert head == raw.partition(b"\r\n\r\n")[0]  # headers untouched
    assert max(len(line) for line in body.split(b"\r\n")) <= 76
    ((ctype, content),) = texts(result.data)
    assert content.startswith("<p>caf\u00e9 word")
    assert f'<a href="{CLICK}L000">x</a></p>' in content


@pytest.mark.parametrize("eol", ["\r\n", "\n"])
def test_quoted_printable_lines_without_links_keep_their_encoding(eol: str) -> None:
    # Another encoder's choices (soft breaks at 40, "=3D" and "=E9" spellings) stay as they were.
    body = (
        '<p style=3D"color:red">caf=E9 au lait, a long line that another encoder =\n'
        "broke early</p>\n"
        '<p><a href=3D"https://a.example/x">x</a></p>\n'
        "<p>the end =C3=A9t=C3=A9</p>\n"
    )
    raw = message(
        "MIME-Version: 1.0\nContent-Type: text/html; charset=utf-8\n"
        "Content-Transfer-Encoding: quoted-printable\n\n" + body,
        eol,
    )
    result = rewrite(
        raw,
        TrackingPlan("click.example.com", "https", "srvtok", track_loads=False),
        new_token=tokens(),
    )
    expected = raw.replace(b"https://a.example/x", (CLICK + "L000").encode())
    assert result.data == expected


def test_quoted_printable_edit_spanning_lines_and_notrack() -> None:
    body = (
        "<p>keep =E9 this</p>\n"
        '<a href=3D"https://a.example/long\n/path">x</a> <a href=3D"https+notrack://b.example/">y</a>\n'
        "<p>and this</p>\n"
    )
    raw = message(
        "MIME-Version: 1.0\nContent-Type: text/html; charset=iso-8859-1\n"
        "Content-Transfer-Encoding: quoted-printable\n\n" + body
    )
    result = rewrite(
        raw,
        TrackingPlan("click.example.com", "https", "srvtok", track_loads=False),
        new_token=tokens(),
    )
    assert [link.url for link in result.links] == ["https://a.example/long/path"]
    out = result.data.partition(b"\r\n\r\n")[2]
    assert out.startswith(b"<p>keep =E9 this</p>\r\n")
    assert out.endswith(b"\r\n<p>and this</p>\r\n")
    ((_, content),) = texts(result.data)
    assert content == (
        "<p>keep \u00e9 this</p>\r\n"
        f'<a href="{CLICK}L000">x</a> <a href="https://b.example/">y</a>\r\n'
        "<p>and this</p>\r\n"
    )


def test_base64_part_keeps_base64_and_its_charset() -> None:
    html = "<p>\u65e5\u672c\u8a9e</p>" * 20 + '<a href="https://a.example/\u65e5">x</a>'
    encoded = base64.encodebytes(html.encode("utf-8")).decode("ascii")
    raw = message(
        'MIME-Version: 1.0\nContent-Type: text/html; charset="UTF-8"\n'
        "Content-Transfer-Encoding: base64\n\n" + encoded
    )
    result = rewrite(raw, PLAN, new_token=tokens())
    assert [link.url for link in result.links] == ["https://a.example/\u65e5"]
    head, _, body = result.data.partition(b"\r\n\r\n")
    assert head == raw.partition(b"\r\n\r\n")[0]
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))
    decoded = base64.b64decode(body).decode("utf-8")
    assert decoded == html.replace("https://a.example/\u65e5", CLICK + "L000") + PIXEL_HTML.format(
        src="https://click.example.com/img/srvtok/M000"
    )


def test_legacy_charset_round_trips() -> None:
    text = "\u3053\u3093\u306b\u3061\u306f https://a.example/x \u3055\u3088\u3046\u306a\u3089\n"
    raw = message(
        "MIME-Version: 1.0\nContent-Type: text/plain; charset=shift_jis\n"
        "Content-Transfer-Encoding: 8bit\n\n"
    ).replace(b"", b"") + text.encode("shift_jis")
    result = rewrite(raw, PLAN, new_token=tokens())
    assert [link.url for link in result.links] == ["https://a.example/x"]
    body = result.data.partition(b"\r\n\r\n")[2]
    assert body.decode("shift_jis") == text.replace("https://a.example/x", CLICK + "L000")


def test_unknown_charset_part_is_left_alone() -> None:
    raw = message("Content-Type: text/plain; charset=x-no-such-charset\n\nhttps://a.example/\n")
    result = rewrite(raw, PLAN, new_token=tokens())
    assert result.links == () and result.data == raw


def test_a_line_made_too_long_switches_7bit_to_quoted_printable() -> None:
    line = " ".join(f"http://a.co/{i}" for i in range(70))  # ~900 octets, grows past 998
    raw = message(
        "MIME-Version: 1.0\nContent-Type: text/plain\nContent-Transfer-Encoding: 7bit\n\n"
        + line
        + "\n"
    )
    result = rewrite(raw, PLAN, new_token=tokens())
    assert len(result.links) == 70
    head, _, body = result.data.partition(b"\r\n\r\n")
    assert b"Content-Transfer-Encoding: quoted-printable" in head
    assert b"7bit" not in head
    assert max(len(x) for x in body.split(b"\r\n")) <= 76
    ((_, content),) = texts(result.data)
    assert content.split() == [CLICK + f"L{i:03d}" for i in range(70)]


def test_a_line_made_too_long_without_a_cte_header_gets_one() -> None:
    line = " ".join(f"http://a.co/{i}" for i in range(70))
    raw = message("Content-Type: text/plain\n\n" + line + "\n")
    result = rewrite(raw, PLAN, new_token=tokens())
    head = result.data.partition(b"\r\n\r\n")[0]
    assert head.endswith(b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable")
    assert texts(result.data)[0][1].split()[0] == CLICK + "L000"


@pytest.mark.parametrize(
    "ctype",
    ["multipart/signed; protocol=x; boundary=b", "multipart/encrypted; protocol=x; boundary=b"],
)
def test_signed_or_encrypted_passes_whole(ctype: str) -> None:
    raw = message(
        "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=o\n\n--o\n"
        "Content-Type: text/plain\n\nhttps://a.example/first\n--o\n"
        f"Content-Type: {ctype}\n\n--b\nContent-Type: text/plain\n\nhttps://a.example/\n--b--\n--o--\n"
    )
    result = rewrite(raw, PLAN, new_token=tokens())
    assert result.data is raw and result.links == ()
    assert result.untouched is not None and ctype.split(";")[0] in result.untouched


def test_dkim_signed_message_passes_untouched() -> None:
    raw = message(
        "Content-Type: text/html\n\n<a href='https+notrack://a.example/'>x</a>",
        headers="DKIM-Signature: v=1; a=rsa-sha256; d=example.com; b=abc\n",
    )
    result = rewrite(raw, PLAN, new_token=tokens())
    assert result.data is raw and result.untouched == "DKIM-Signature present"


def test_x_amp_skip_is_removed_and_turns_tracking_off() -> None:
    raw = message(
        "Content-Type: text/html\n\n<body><a href='https://a.example/'>x</a>"
        "<a href='https+notrack://b.example/'>y</a></body>",
        headers="X-AMP: skip\n",
    )
    result = rewrite(raw, PLAN, new_token=tokens())
    assert result.links == () and result.tracked_images == 0
    assert result.data == raw.replace(b"X-AMP: skip\r\n", b"").replace(b"+notrack", b"")


def test_untracked_message_without_markers_is_the_same_bytes() -> None:
    raw = SAMPLE.read_bytes().replace(b"+notrack", b"")
    result = rewrite(raw, None)
    assert result.data is raw and result.links == () and result.untouched is None


@pytest.mark.parametrize(
    "body",
    [
        "Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\naHR0cHM6Ly9hLmV4YW1wbGUvYQ\n",
        "Content-Type: multipart/mixed\n\nno boundary https://a.example/\n",
    ],
)
def test_malformed_message_passes_unchanged(body: str) -> None:
    raw = message(body)
    result = rewrite(raw, PLAN, new_token=tokens())
    assert result.data is raw and result.links == ()
    assert result.untouched is not None and result.untouched.startswith("malformed")


def test_absurdly_deep_nesting_is_malformed_not_a_crash() -> None:
    depth = 200
    opening = "".join(
        f"Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n" for i in range(depth)
    )
    raw = message(opening + "Content-Type: text/plain\n\nhttps://a.example/\n")
    result = rewrite(raw, PLAN, new_token=tokens())
    assert result.data is raw and result.untouched is not None and "nested" in result.untouched


def test_digest_parts_default_to_attached_messages() -> None:
    raw = message(
        "MIME-Version: 1.0\nContent-Type: multipart/digest; boundary=d\n\n--d\n\n"
        "From: x@example.com\n\nhttps://a.example/in-digest\n--d--\n"
    )
    result = rewrite(raw, PLAN, new_token=tokens())
    assert result.links == () and result.data is raw


def test_link_limit_counts_across_parts() -> None:
    links = " ".join(f"https://a.example/{i}" for i in range(3))
    raw = message(
        "Content-Type: multipart/alternative; boundary=b\n\n--b\nContent-Type: text/plain\n\n"
        f"{links}\n--b\nContent-Type: text/plain\n\n{links}\n--b--\n"
    )
    result = rewrite(raw, PLAN, new_token=tokens(), max_links=4)
    assert len(result.links) == 4 and len(result.warnings) == 1


def test_sample_newsletter() -> None:
    raw = SAMPLE.read_bytes()
    result = rewrite(raw, PLAN, new_token=tokens())
    assert result.untouched is None and result.tracked_images == 1
    urls = [link.url for link in result.links]
    assert "https://www.example.com/?utm_source=newsletter&utm_medium=email" in urls
    assert "https://events.example.com/webinar/2026-12-03" in urls  # VML button and its twin
    assert not any("preferences" in u or "mailto" in u or "tel:" in u for u in urls)
    assert b"+notrack" not in result.data
    for _ctype, content in texts(result.data):
        assert "https://www.example.com/preferences?u=8f3a2c" in content
        assert "https://www.example.com/unsubscribe" not in content
    assert parse(result.data)["Subject"] == "The Example Monthly \u2013 November 2026"


@pytest.mark.parametrize(
    ("data", "long"),
    [
        (b"x" * 998, False),
        (b"x" * 999, True),
        (b"a\r\n" + b"x" * 998 + b"\r\nb", False),
        (b"a\n" + b"x" * 999 + b"\n", True),
        (b"x" * 500 + b"\r" + b"x" * 500, False),
        (b"", False),
    ],
)
def test_long_line_check_counts_octets_between_line_breaks(data: bytes, long: bool) -> None:
    from postal_tracking_plugin.rewrite._mime import _has_long_line

    assert _has_long_line(data) is long


def test_base64_of_two_separately_padded_chunks_is_left_alone() -> None:
    """A gateway's footer appended as its own base64: decoding stops at the first "=" (item 2)."""
    first = base64.encodebytes(b'<p><a href="https://a.example/">ab</a></p>\n')
    footer = base64.encodebytes(b'<p><a href="https://footer.example/">footer</a></p>\n')
    assert first.rstrip().endswith(b"=")
    raw = (
        message("Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: base64\n\n")
        + first
        + footer
    )
    result = rewrite(raw, PLAN, new_token=tokens())
    assert result.data == raw and result.links == ()


@pytest.mark.parametrize(
    ("charset", "data"),
    [
        ("utf-16", '<a href="https://a.example/">x</a>'.encode("utf-16-be")),  # no BOM: big-endian
        ("utf-7", b'<a href="https://a.example/">+AGk-</a>'),
        ("utf-16", '<a href="https://a.example/">x</a>'.encode("utf-16-le")),
    ],
)
def test_a_charset_that_does_not_give_the_same_bytes_back_is_left_alone(
    charset: str, data: bytes
) -> None:
    """UTF-16 without a BOM read as little-endian came out with a BOM (item 3)."""
    raw = message(
        f"Content-Type: text/html; charset={charset}\nContent-Transfer-Encoding: base64\n\n"
    ) + base64.encodebytes(data)
    result = rewrite(raw, PLAN, new_token=tokens())
    decoded = parse(result.data).get_payload(decode=True)
    assert decoded == data or CLICK.encode(charset)[2:] in decoded
    if charset == "utf-16" and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        assert result.data == raw or decoded.decode("utf-16") == data.decode("utf-16")


@pytest.mark.parametrize("padding", ["  ", "\t", " \t "])
def test_quoted_printable_soft_break_with_transport_padding(padding: str) -> None:
    """RFC 2045 6.7: white space after a soft break's "=" is transport padding (item 6)."""
    raw = message(
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
        f"Go to https://a.example/long/pa={padding}\nth?x=3D1 now\nnext line=20\n"
    )
    result = rewrite(raw, PLAN, new_token=tokens())
    assert [link.url for link in result.links] == ["https://a.example/long/path?x=1"]
    assert b"next line=20" in result.data  # an untouched line keeps its encoding


def test_quoted_printable_lines_with_encoded_line_breaks_stay_as_written() -> None:
    """``=0A`` inside an encoded line: lines without a link keep their bytes (item 11)."""
    html = (
        "<!DOCTYPE html>=0A<html>=0A<head><title>T</title></head>\n"
        "<body>=0A<p>caf=C3=A9</p>\n"
        '<a href=3D"https://a.example/x">x</a>=0A<p>after</p>\n'
        "<p>no link</p>=0A</body></html>\n"
    )
    raw = message(
        "Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
        + html,
        eol="\n",
    )
    result = rewrite(raw, NO_PIXEL, new_token=tokens())
    assert [link.url for link in result.links] == ["https://a.example/x"]
    out = result.data.decode()
    for line in html.splitlines():
        if "href" not in line:
            assert line + "\n" in out
    assert f'<a href=3D"{CLICK}L000">x</a>' in out
    before = binascii.a2b_qp(raw.split(b"\n\n", 1)[1]).decode()
    after = binascii.a2b_qp(result.data.split(b"\n\n", 1)[1]).decode()
    assert after.replace(CLICK + "L000", "https://a.example/x") == before


def test_two_links_in_one_encoded_line_split_by_encoded_line_breaks() -> None:
    """One encoded line, three decoded lines, a link on the first and the last."""
    raw = message(
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
        "a https://a.example/1 caf=C3=A9=0D=0A  =0A https:=\n//b.example/2\nuntouched=20\n",
        eol="\n",
    )
    result = rewrite(raw, NO_PIXEL, new_token=tokens())
    assert [link.url for link in result.links] == ["https://a.example/1", "https://b.example/2"]
    body = result.data.split(b"\n\n", 1)[1]
    assert body.endswith(b"\nuntouched=20\n")
    assert (
        binascii.a2b_qp(body).decode()
        == f"a {CLICK}L000 caf\u00e9\r\n  \n {CLICK}L001\nuntouched \n"
    )


@pytest.mark.parametrize("lossy", ["=\r", "=="])
def test_quoted_printable_that_a2b_qp_reads_with_loss_is_left_alone(lossy: str) -> None:
    """``=`` before a lone CR makes a2b_qp drop the rest of the part (links and all)."""
    raw = message(
        "Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
        f'<a href=3D"https://a.example/">a</a> x{lossy}y <a href=3D"https://b.example/">b</a>\n',
        eol="\n",
    )
    result = rewrite(raw, PLAN, new_token=tokens())
    assert result.data == raw and result.links == ()


@given(st.binary(max_size=64), st.sampled_from(sorted(_mime._ROUND_TRIPS)))
def test_codecs_trusted_to_round_trip_do(data: bytes, codec: str) -> None:
    """The parts whose round-trip check is skipped: their decoding always gives the bytes back."""
    assert codecs.lookup(codec).name == codec
    assert data.decode(codec, "surrogateescape").encode(codec, "surrogateescape") == data


@st.composite
def qp_bodies(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A quoted-printable text/plain body written the many ways encoders write it
    (soft breaks anywhere, transport padding after them, "=0A" inside a line, LF or
    CRLF), and its hard lines."""
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    words = st.sampled_from(["plain", "caf\u00e9", "a=b", "https://a.example/p?x=1", "  ", "\t"])
    lines = draw(st.lists(st.lists(words, max_size=6).map(" ".join), min_size=1, max_size=8))
    hard: list[bytes] = []
    for i, line in enumerate(lines):
        encoded = binascii.b2a_qp(line.encode(), istext=True)  # may hold soft breaks already
        # More soft breaks, each after whole characters (never inside an "=XX").
        cuts = draw(st.sets(st.integers(1, max(1, len(encoded) - 1)), max_size=3))
        pieces, last = [], 0
        for cut in sorted(cuts):
            if encoded[max(0, cut - 2) : cut].find(b"=") == -1 and cut > last:
                pieces.append(encoded[last:cut])
                last = cut
        pieces.append(encoded[last:])
        padding = draw(st.sampled_from([b"", b" ", b"\t "]))
        encoded = (b"=" + padding + eol).join(pieces).replace(b"\n", eol).replace(b"\r\r", b"\r")
        if i and draw(st.booleans()):
            hard[-1] += b"=0A" + encoded  # an encoded line break instead of a real one
        else:
            hard.append(encoded)
    return eol.join(hard) + eol, hard


def _decode_qp(body: bytes) -> bytes:
    """RFC 2045 6.7 decoding: trailing white space goes first (email's decoder keeps
    it, so ``= `` at a line's end is no soft break there)."""
    return binascii.a2b_qp(re.sub(rb"[ \t]+(?=\r?\n|\Z)", b"", body))


@FEW_QP
@given(qp_bodies())
def test_quoted_printable_reuse_keeps_lines_and_decodes_right(body_and_lines) -> None:  # type: ignore[no-untyped-def]
    """Whatever the encoder's choices, the rewritten part decodes to the original with
    the links replaced, and each encoded line without a link keeps its bytes."""
    body, hard = body_and_lines
    raw = (
        b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
    )
    raw = raw + body
    result = rewrite(raw, NO_PIXEL, new_token=tokens())
    assert result.untouched is None
    before = _decode_qp(body)
    out_body = result.data.split(b"\n\n", 1)[1]
    after = _decode_qp(out_body)
    for link in result.links:
        after = after.replace(f"{CLICK}{link.token}".encode(), link.url.encode(), 1)
    assert after == before
    for line in hard:
        if b"https" not in _decode_qp(line):
            assert line in out_body
