"""Property tests: generated HTML fragments and MIME trees.

The rewriter never raises, its output always parses to the same MIME
structure, only ``href`` values and the pixel change in HTML, and an untracked
message passes unchanged.
"""

from __future__ import annotations

import email
import email.policy
import itertools
import re
from email.message import EmailMessage

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from postal_tracking_plugin.rewrite import TrackingPlan
from postal_tracking_plugin.rewrite import rewrite
from postal_tracking_plugin.rewrite._html import rewrite_html
from postal_tracking_plugin.rewrite._plan import Tracker
from postal_tracking_plugin.rewrite._urls import clean_url
from postal_tracking_plugin.rewrite._urls import decode_attribute

PLAN = TrackingPlan("click.example.com", "https", "srvtok")
CLICK = re.compile(r"https://click\.example\.com/srvtok/L[0-9]{5}")
PIXEL = re.compile(r"<img src='https://click\.example\.com/img/[^']*'[^>]*>")
FEW = settings(max_examples=60, deadline=None)

url_chars = st.sampled_from(
    list("abcxyz019-._~/?#=&;:!*'(),$@+%[] \t\n\u00e9\u65e5") + ["&amp;", "&#38;", "&copy", "{{x}}"]
)
urls = st.builds(
    lambda scheme, host, path: scheme + host + path,
    st.sampled_from(
        ["http://", "https://", "HTTPS://", "https+notrack://", "mailto:", "", "//", "#"]
    ),
    st.sampled_from(["a.example", "b.example:8080", "", "user@c.example", "[::1]"]),
    st.lists(url_chars, max_size=12).map("".join),
)
attr_names = st.sampled_from(["href", "HREF", "class", "title", "data-href", "style", "x"])


@st.composite
def attributes(draw: st.DrawFn) -> str:
    name = draw(attr_names)
    value = draw(urls) if name.lower().endswith("href") else draw(st.text("ab <>=\"'&", max_size=6))
    quote = draw(st.sampled_from(['"', "'", ""]))
    if quote and quote in value or not quote and (not value or re.search(r"[\s>\"'=<`]", value)):
        quote = '"'
        value = value.replace('"', "&quot;")
    space = draw(st.sampled_from([" ", "\n", "\t ", "  "]))
    eq = draw(st.sampled_from(["=", " = ", "\n=\n"]))
    return f"{space}{name}{eq}{quote}{value}{quote}"


@st.composite
def fragments(draw: st.DrawFn) -> str:
    pieces = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(
            st.sampled_from(["text", "a", "tag", "comment", "cond", "raw", "end", "entity"])
        )
        if kind == "text":
            pieces.append(draw(st.text("ab <>&;=\"'/\n", max_size=10)))
        elif kind in ("a", "tag"):
            name = (
                "a"
                if kind == "a"
                else draw(st.sampled_from(["p", "area", "base", "link", "div", "v:rect", "body"]))
            )
            attrs = "".join(draw(st.lists(attributes(), max_size=3)))
            pieces.append(f"<{name}{attrs}{draw(st.sampled_from(['>', '/>', ' >']))}")
        elif kind == "comment":
            pieces.append(f"<!--{draw(st.text('ab <>-!', max_size=8))}-->")
        elif kind == "cond":
            pieces.append(f'<!--[if mso]><v:roundrect href="{draw(urls)}"><![endif]-->')
        elif kind == "raw":
            pieces.append(f"<style>{draw(st.text('a<>/', max_size=6))}</style>")
        elif kind == "end":
            pieces.append(draw(st.sampled_from(["</a>", "</body>", "</BODY >", "</p>"])))
        else:
            pieces.append(draw(st.sampled_from(["&amp;", "&lt;", "&#x41;", "&copy", "&"])))
    return "".join(pieces)


def only_hrefs_changed(html: str, out: str, links: list[str]) -> bool:
    """Whether ``out`` is ``html`` with only href values replaced by click URLs, read as ``links``."""
    segments = CLICK.split(out)
    if len(segments) != len(links) + 1 or not html.startswith(segments[0]):
        return False
    pos = len(segments[0])
    for url, segment in zip(links, segments[1:], strict=True):
        end = html.find(segment, pos) if segment else len(html)
        if end == -1 or clean_url(decode_attribute(html[pos:end])) != url:
            return False
        pos = end + len(segment)
    return pos == len(html)


@FEW
@given(fragments())
def test_html_only_href_values_and_the_pixel_change(html: str) -> None:
    tokens = itertools.chain(["M0000"], (f"L{i:05d}" for i in itertools.count()))
    tracker = Tracker(PLAN, new_token=lambda: next(tokens))
    out = rewrite_html(html, tracker)
    assert "+notrack://" not in out.lower()
    html = re.sub(r"(?i)(https?)\+notrack://", r"\1://", html)
    pixel = PIXEL.search(out)
    assert pixel is not None
    before, after = out[: pixel.start()], out[pixel.end() :]
    candidates = [before + after]
    if before.endswith("</a>"):  # the pixel may close a link left open before it
        candidates.append(before[:-4] + after)
    links = [link.url for link in tracker.links]
    assert any(only_hrefs_changed(html, candidate, links) for candidate in candidates)


@FEW
@given(fragments())
def test_html_untracked_without_markers_is_unchanged(html: str) -> None:
    html = html.replace("+notrack", "")
    assert rewrite_html(html, Tracker(None)) is html


@st.composite
def messages(draw: st.DrawFn) -> EmailMessage:
    charset = draw(st.sampled_from(["utf-8", "iso-8859-1", "us-ascii", "shift_jis"]))
    cte = draw(st.sampled_from(["7bit", "8bit", "quoted-printable", "base64"]))
    words = st.sampled_from(
        [
            "Hello",
            "caf\u00e9" if charset in ("utf-8", "iso-8859-1") else "cafe",
            "https://a.example/x?y=1&z=2",
            "(https://b.example/p_(q))",
            "<https://c.example/>",
            "https+notrack://d.example/",
            "\n",
            ".",
        ]
    )
    text = " ".join(draw(st.lists(words, max_size=20)))
    if charset == "shift_jis":
        text += " \u65e5\u672c"
    html = f"<html><body><p>{text}</p><a href='https://e.example/&amp;x'>e</a></body></html>"
    if cte == "7bit" and charset != "us-ascii":
        cte = "quoted-printable"
    msg = EmailMessage()
    msg["From"] = "news@example.com"
    msg["To"] = "a@example.org"
    msg["Subject"] = "generated"
    shape = draw(st.sampled_from(["plain", "html", "alternative", "mixed", "related", "forwarded"]))
    if shape == "plain":
        msg.set_content(text, charset=charset, cte=cte)
    elif shape == "html":
        msg.set_content(html, subtype="html", charset=charset, cte=cte)
    else:
        msg.set_content(text, charset=charset, cte=cte)
        msg.add_alternative(html, subtype="html", charset=charset, cte=cte)
        if shape == "related":
            msg.get_payload()[1].add_related(b"\x89PNG....", "image", "png", cid="<logo>")
        if shape in ("mixed", "forwarded"):
            msg.add_attachment(html.encode(), "text", "html", filename="a.html")
        if shape == "forwarded":
            inner = EmailMessage()
            inner["Subject"] = "fwd"
            inner.set_content(html, subtype="html")
            msg.add_attachment(inner)
    return msg


def body_parts(msg: email.message.Message) -> list[email.message.Message]:
    """Text parts of the message itself, not of attached messages."""
    if msg.is_multipart() and msg.get_content_maintype() == "multipart":
        return [p for sub in msg.get_payload() for p in body_parts(sub)]
    return [msg] if msg.get_content_maintype() == "text" else []


def structure(data: bytes) -> list[str]:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    return [part.get_content_type() for part in msg.walk()]


@FEW
@given(messages(), st.sampled_from(["\n", "\r\n"]))
def test_mime_output_parses_to_the_same_structure(msg: EmailMessage, eol: str) -> None:
    raw = msg.as_bytes(policy=email.policy.default.clone(linesep=eol))
    result = rewrite(raw, PLAN)
    assert result.untouched is None
    assert structure(result.data) == structure(raw)
    out = email.message_from_bytes(result.data, policy=email.policy.default)
    for part in body_parts(out):
        if part.get_content_disposition() != "attachment":
            content = part.get_content()
            assert "+notrack" not in content
            if part.get_content_subtype() == "plain":
                assert "a.example/x" not in content  # every text URL is tracked
            else:
                assert "e.example" not in content  # every href is tracked
    assert all(len(line) <= 998 for line in result.data.split(b"\n"))

    # untracked: unchanged bytes, unless a +notrack marker had to go
    untracked = rewrite(raw, None).data
    before = email.message_from_bytes(raw, policy=email.policy.default)
    contents = [
        p.get_content() for p in body_parts(before) if p.get_content_disposition() != "attachment"
    ]
    if not any("+notrack" in c for c in contents):
        assert untracked is raw
    after = email.message_from_bytes(untracked, policy=email.policy.default)
    assert [
        p.get_content() for p in body_parts(after) if p.get_content_disposition() != "attachment"
    ] == [c.replace("+notrack", "") for c in contents]


# Random bytes, with pieces of links, HTML and MIME mixed in so some get tracked.
noisy_bytes = st.lists(
    st.one_of(
        st.binary(max_size=60),
        st.sampled_from(
            [
                b'<a href="https://a.example/x">',
                b"https://b.example/y ",
                b"</body>",
                b"<body>",
                b"\n--b\n",
                b"\n--b--\n",
                b"\n\n",
                b"=\n",
                b"=E9",
                b"Content-Type: text/html\n",
                b"Content-Type: text/plain\n",
                b"Content-Transfer-Encoding: quoted-printable\n",
                b"aHR0cHM6Ly9jLmV4YW1wbGUveg==\n",
                b"https+notrack://d.example/ ",
            ]
        ),
    ),
    max_size=12,
).map(b"".join)


@settings(max_examples=80, deadline=None)
@given(
    noisy_bytes,
    st.sampled_from(
        [
            b"",
            b"Content-Type: multipart/mixed; boundary=b\n\n--b\n",
            b"Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: base64\n\n",
        ]
    ),
)
def test_arbitrary_bytes_never_raise(tail: bytes, head: bytes) -> None:
    """Any input gives bytes back: unchanged when untouched, else the same MIME tree."""
    raw = b"From: a@example.com\n" + head + tail
    for plan in (PLAN, None):
        result = rewrite(raw, plan)
        if result.untouched is not None:
            assert result.data is raw and not result.links and result.message_token is None
        elif result.data is not raw:
            assert structure(result.data) == structure(raw)
            assert result.links or result.tracked_images or b"notrack" in raw
        if plan is None:
            assert not result.links and not result.tracked_images


@FEW
@given(st.lists(attributes(), max_size=4).map("".join))
def test_first_href_shortcut_reads_attributes_like_the_full_reader(attrs: str) -> None:
    from postal_tracking_plugin.rewrite._html import _link
    from postal_tracking_plugin.rewrite._html import _link_slowly

    text = f"<a{attrs}>"
    results = []
    for reader in (_link, _link_slowly):
        tokens = itertools.chain(["M0000"], (f"L{i:05d}" for i in itertools.count()))
        tracker = Tracker(PLAN, new_token=lambda tokens=tokens: next(tokens))
        edits: list[tuple[int, int, str]] = []
        reader(text, 2, len(text) - 1, tracker, edits)
        results.append((edits, tracker.links))
    assert results[0] == results[1]
