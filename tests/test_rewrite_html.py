"""HTML rewriting rules: which hrefs are tracked, how they are read and written, the pixel."""

from __future__ import annotations

import itertools

import pytest

from postal_tracking_plugin.rewrite._html import rewrite_html
from postal_tracking_plugin.rewrite._plan import PIXEL_HTML
from postal_tracking_plugin.rewrite._plan import Tracker
from postal_tracking_plugin.rewrite._plan import TrackingPlan

CLICK = "https://click.example.com/srvtok/"
PIXEL = PIXEL_HTML.format(src="https://click.example.com/img/srvtok/M000")


def tracker(**plan: object) -> Tracker:
    numbers = itertools.count()
    tokens = iter(["M000"])

    def new_token() -> str:
        return next(tokens, None) or f"L{next(numbers):03d}"

    options = {"track_loads": False, **plan}
    return Tracker(
        TrackingPlan("click.example.com", "https", "srvtok", **options),  # type: ignore[arg-type]
        new_token=new_token,
    )


def run(html: str, **plan: object) -> tuple[str, list[str]]:
    t = tracker(**plan)
    out = rewrite_html(html, t, pixel_position=str(plan.get("pixel_position", "bottom")))
    return out, [link.url for link in t.links]


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ('<a href="https://a.example/x">', f'<a href="{CLICK}L000">'),
        ("<a href='https://a.example/x'>", f"<a href='{CLICK}L000'>"),
        ("<a href=https://a.example/x>", f"<a href={CLICK}L000>"),
        ('<A HREF="https://a.example/x">', f'<A HREF="{CLICK}L000">'),
        (
            '<a\n  href \t=\n "https://a.example/x" class=b>',
            f'<a\n  href \t=\n "{CLICK}L000" class=b>',
        ),
        ('<a class="x"href="https://a.example/x"/>', f'<a class="x"href="{CLICK}L000"/>'),
        ('<area shape=rect href="https://a.example/x">', f'<area shape=rect href="{CLICK}L000">'),
    ],
)
def test_any_quoting_case_and_spacing(tag: str, expected: str) -> None:
    out, urls = run(tag + "link</a>")
    assert out == expected + "link</a>"
    assert urls == ["https://a.example/x"]


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("https://a.example/?a=1&amp;b=2", "https://a.example/?a=1&b=2"),
        ("https://a.example/?a=1&b=2", "https://a.example/?a=1&b=2"),
        ("https://a.example/&#x41;&#66;&lt;", "https://a.example/AB<"),
        ("https://a.example/?x=1&copy=2", "https://a.example/?x=1&copy=2"),  # attribute rule
        ("https://a.example/?x=1&copy;=2", "https://a.example/?x=1\u00a9=2"),
        ("  https://a.example/a\n\tb\r\n  ", "https://a.example/ab"),
        ("https://a.example/p!*'(),;$@~+:", "https://a.example/p!*'(),;$@~+:"),
        (
            "https://b\u00fccher.example/caf\u00e9?q=\u65e5\u672c",
            "https://b\u00fccher.example/caf\u00e9?q=\u65e5\u672c",
        ),
        ("HTTPS://A.EXAMPLE:8443/x", "HTTPS://A.EXAMPLE:8443/x"),
        ("https://user@a.example/", "https://user@a.example/"),
        ("https://[2001:db8::1]/x", "https://[2001:db8::1]/x"),
    ],
)
def test_stored_url_is_what_a_browser_reads(value: str, stored: str) -> None:
    quote = "'" if '"' not in value and "'" not in value else '"'
    out, urls = run(f"<a href={quote}{value}{quote}>x</a>")
    assert urls == [stored]
    assert out == f"<a href={quote}{CLICK}L000{quote}>x</a>"


@pytest.mark.parametrize(
    "html",
    [
        '<a href="mailto:someone@example.com">',
        '<a href="tel:+441234567">',
        '<a href="#top">',
        '<a href="/relative/path">',
        '<a href="page.html">',
        '<a href="//cdn.example/x">',
        '<a href="http://">',
        '<a href="https:///path">',
        '<a href="ftp://files.example/x">',
        '<a href="javascript:alert(1)">',
        '<a href="{{ unsubscribe_url }}">',
        '<a href="https://example.com/u?id={{user.id}}">',
        '<a href="*|UNSUB|*">',
        '<a href="https://example.com/*|EMAIL|*">',
        '<a href="https://example.com/u/%recipient.id%">',
        '<a href="%unsubscribe_url%">',
        '<a href="https://example.com/${token}">',
        "<a href>",
        '<a href="">',
        '<base href="https://example.com/">',
        '<link rel=stylesheet href="https://example.com/s.css">',
        '<div href="https://example.com/">',
        '<a data-href="https://example.com/" xhref="https://example.com/">',
        '<p>see href="https://example.com/" in the text</p>',
        '<!-- <a href="https://example.com/">old</a> -->',
        "<!----><!-- a -- b --><!-->x<a id=1>",
        '<style>a[href="https://example.com/"]{}</style><script>s="<a href=\'https://example.com/\'>"</script>',
        '<textarea><a href="https://example.com/"></textarea>',
        '<img title=\'<a href="https://example.com/">\' src="https://example.com/i.png">',
        '<!--[if mso]><link href="https://example.com/"><![endif]-->',
        '<v:roundrect href="https://example.com/">',  # VML only counts inside mso comments
    ],
)
def test_never_touched(html: str) -> None:
    out, urls = run(html)
    assert urls == []
    assert out == html


def test_vml_and_links_inside_conditional_comments() -> None:
    html = (
        '<!--[if mso]><v:roundrect xmlns:v="urn:schemas-microsoft-com:vml" '
        'href="https://a.example/vml" arcsize="10%"><w:anchorlock/><center>Go</center>'
        '</v:roundrect><a href="https://a.example/mso">x</a><![endif]-->'
        '<!--[if !mso]><!--><a href="https://a.example/web">Go</a><!--<![endif]-->'
    )
    out, urls = run(html)
    assert urls == ["https://a.example/vml", "https://a.example/mso", "https://a.example/web"]
    assert out == (
        '<!--[if mso]><v:roundrect xmlns:v="urn:schemas-microsoft-com:vml" '
        f'href="{CLICK}L000" arcsize="10%"><w:anchorlock/><center>Go</center>'
        f'</v:roundrect><a href="{CLICK}L001">x</a><![endif]-->'
        f'<!--[if !mso]><!--><a href="{CLICK}L002">Go</a><!--<![endif]-->'
    )


def test_everything_else_is_byte_identical() -> None:
    html = (
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN">\r\n'
        "<html><head><!-- keep me --><style>\r\n a { color: red }</style></head>\n"
        "<body BGCOLOR=white>&nbsp;&copy; 2026 &amp; co <b>bold</b>\n"
        "<a   title='t &quot;q&quot;'   href = \"https://a.example/x?y=1&amp;z=2\"  >x</a >\n"
        '<a href="https://a.example/y" href="https://ignored.example/">dup</a>\n'
        "</body></html>\n"
    )
    out, urls = run(html)
    assert urls == ["https://a.example/x?y=1&z=2", "https://a.example/y"]
    expected = html.replace("https://a.example/x?y=1&amp;z=2", f"{CLICK}L000").replace(
        'href="https://a.example/y"', f'href="{CLICK}L001"'
    )
    assert out == expected


def test_notrack_links_lose_the_marker_and_are_not_tracked() -> None:
    html = (
        '<a href="https+notrack://a.example/prefs">p</a> <a href="HTTP+NOTRACK://a.example/b">b</a>'
        ' visible https+notrack://a.example/text <a href="https&#43;notrack://a.example/&quot;q">e</a>'
        " <a href=https&#43;notrack://a.example/u>u</a>"
    )
    out, urls = run(html)
    assert urls == []
    assert out == (
        '<a href="https://a.example/prefs">p</a> <a href="HTTP://a.example/b">b</a>'
        ' visible https://a.example/text <a href="https://a.example/&quot;q">e</a>'
        ' <a href="https://a.example/u">u</a>'
    )


def test_notrack_is_honoured_even_when_nothing_is_tracked() -> None:
    t = Tracker(None)
    out = rewrite_html('<a href="https+notrack://a.example/">x</a><a href="https://b.example/">', t)
    assert out == '<a href="https://a.example/">x</a><a href="https://b.example/">'
    assert t.links == [] and t.images == 0


@pytest.mark.parametrize(
    "attribute",
    [
        "data-pm-no-track",
        'data-pm-no-track=""',
        "data-no-track",
        "clicktracking=off",
        'CLICKTRACKING="OFF"',
    ],
)
def test_per_link_opt_out_attribute_is_honoured_and_removed(attribute: str) -> None:
    out, urls = run(f'<a href="https://a.example/" {attribute} class="c">x</a>')
    assert urls == []
    assert out == '<a href="https://a.example/" class="c">x</a>'


def test_clicktracking_on_is_not_an_opt_out() -> None:
    out, urls = run('<a clicktracking=on href="https://a.example/">x</a>')
    assert urls == ["https://a.example/"]
    assert out == f'<a clicktracking=on href="{CLICK}L000">x</a>'


def test_excluded_domains() -> None:
    html = "".join(
        f'<a href="{u}">x</a>'
        for u in [
            "https://skip.example/a",  # exact
            "https://SKIP.EXAMPLE:8080/b",  # case and port ignored
            "https://www.skip.example/c",  # exact match does not cover subdomains (Postal)
            "https://wild.example/d",  # *.wild.example covers the domain itself
            "https://a.b.wild.example/e",  # ... and its subdomains
            "https://notwild.example/f",  # ... but not a longer name
            "https://click.example.com/srvtok/abc",  # our own tracking domain
        ]
    )
    _, urls = run(html, excluded_hosts=("skip.example", "*.Wild.Example:443"))
    assert urls == ["https://www.skip.example/c", "https://notwild.example/f"]


def test_pixel_goes_before_the_closing_body_tag() -> None:
    out, _ = run("<html><body><p>Hi</p></BODY ></html>", track_loads=True)
    assert out == f"<html><body><p>Hi</p>{PIXEL}</BODY ></html>"


def test_pixel_goes_at_the_end_without_a_body_tag() -> None:
    out, _ = run("<p>Hi <!-- </body> --></p>", track_loads=True)
    assert out == f"<p>Hi <!-- </body> --></p>{PIXEL}"


def test_pixel_at_the_top_goes_right_after_the_body_tag() -> None:
    out, _ = run(
        '<html><head></head><BODY style="margin:0">\n<p>Hi</p></body></html>',
        track_loads=True,
        pixel_position="top",
    )
    assert out == f'<html><head></head><BODY style="margin:0">{PIXEL}\n<p>Hi</p></body></html>'


def test_one_pixel_per_message() -> None:
    t = tracker(track_loads=True)
    first = rewrite_html("<body>a</body>", t)
    second = rewrite_html("<body>b</body>", t)
    assert first == f"<body>a{PIXEL}</body>"
    assert second == "<body>b</body>"
    assert t.images == 1


def test_halves_switch_independently() -> None:
    html = '<body><a href="https://a.example/">x</a></body>'
    out, urls = run(html, track_clicks=False, track_loads=True)
    assert urls == [] and out == f'<body><a href="https://a.example/">x</a>{PIXEL}</body>'
    out, urls = run(html, track_clicks=True, track_loads=False)
    assert urls == ["https://a.example/"] and PIXEL not in out


def test_link_limit_leaves_the_rest_untracked_with_a_warning() -> None:
    html = "".join(f'<a href="https://a.example/{i}">{i}</a>' for i in range(5))
    t = Tracker(
        TrackingPlan("click.example.com", "https", "srvtok", track_loads=False), max_links=3
    )
    out = rewrite_html(html, t)
    assert [link.url for link in t.links] == [f"https://a.example/{i}" for i in range(3)]
    assert out.endswith('<a href="https://a.example/3">3</a><a href="https://a.example/4">4</a>')
    assert len(t.warnings) == 1 and "3 links" in t.warnings[0]


def test_unterminated_constructs_do_not_hide_or_invent_links() -> None:
    html = '<a href="https://a.example/1">x</a><a href="https://a.example/2" class="never closed'
    out, urls = run(html)
    assert urls == ["https://a.example/1"]
    assert (
        out == f'<a href="{CLICK}L000">x</a>' + html[len('<a href="https://a.example/1">x</a>') :]
    )


PIXEL_AT = "<img src='https://click.example.com/img/"


@pytest.mark.parametrize(
    ("html", "before"),
    [
        ("<p>x</p><!-- never closed <p>", "<!-- never closed"),
        ('<p>x</p><a href="https://a.example/" class="never closed', "<a href="),
        ("<p>x</p><a", "<a"),
        ("<p>x</p></", "</"),
        ("<p>x</p><!", "<!"),
        ("<p>x</p></p class='x", "</p class"),
        ("<p>x</p><style>p { color: red }", "<style>"),
        ("<p>x</p><title>never closed", "<title>"),
        ("<p>x</p><plaintext>all text", "<plaintext>"),
        ("<p>x</p><!--[if mso]><p>never closed", "<!--[if mso]>"),
    ],
)
def test_pixel_goes_before_a_construct_left_open_at_the_end(html: str, before: str) -> None:
    """Appended after an unterminated comment or unfinished tag, no browser would see it."""
    out, _ = run(html, track_loads=True)
    assert out.index(PIXEL_AT) == html.rindex(before)
    assert out.replace(PIXEL, "") == html


def test_pixel_still_goes_at_the_end_after_a_lone_less_than() -> None:
    out, _ = run("<p>1 < 2 <", track_loads=True)
    assert out == "<p>1 < 2 <" + PIXEL


@pytest.mark.parametrize("condition", ["!mso", " ! mso ", "!(mso)", "!mso 12", "!MSO"])
def test_links_in_downlevel_hidden_conditional_comments_are_not_tracked(condition: str) -> None:
    """``<!--[if !mso]> ... <![endif]-->`` is a comment to browsers and skipped by Outlook."""
    html = f'<!--[if {condition}]><a href="https://hidden.example/">x</a><![endif]--><a href="https://shown.example/">y</a>'
    out, urls = run(html)
    assert urls == ["https://shown.example/"]
    assert out == html.replace("https://shown.example/", CLICK + "L000")


def test_downlevel_revealed_and_mso_only_links_are_tracked() -> None:
    html = (
        '<!--[if !mso]><!--><a href="https://revealed.example/">x</a><!--<![endif]-->'
        '<!--[if mso | IE]><a href="https://outlook.example/">y</a><![endif]-->'
    )
    _, urls = run(html)
    assert urls == ["https://revealed.example/", "https://outlook.example/"]


@pytest.mark.parametrize(
    "piece",
    [
        "<a ",
        '<a href="https://a.example/',
        "<p ",
        "<style ",
        "</p ",
        "</body ",
        "<!--[if",
        "<!--[if mso]>href ",
        '<!--[if mso]><a href="https://a.example/">',
        "<!-- <a href=x>",
    ],
)
def test_pathological_repetitions_are_read_as_a_browser_reads_them(piece: str) -> None:
    """The inputs of benchmarks/rewrite.py's pathological section (the benchmark times them).

    Each repeats one construct that never ends; a browser reads the rest of the
    document as one tag or comment, so at most the first conditional link is tracked.
    """
    html = "<p>x</p>" + piece * 2000
    out, urls = run(html, track_loads=True)
    assert urls == (["https://a.example/"] if piece.startswith("<!--[if mso]><a") else [])
    assert out.index(PIXEL_AT) == len("<p>x</p>")
    assert out.replace(PIXEL, "").replace(CLICK + "L000", "https://a.example/") == html


def test_relative_links_under_a_base_href_are_tracked_as_the_url_opened() -> None:
    """``<base href>`` makes relative links absolute in every client (item 10)."""
    html = (
        '<head><base href="https://shop.example/en/"></head><body>'
        '<a href="sale?id=1&amp;x=2">a</a><a href="/top">b</a><a href="../fr/">c</a>'
        '<a href="//cdn.example/x">d</a><a href="#top">e</a><a href="mailto:a@example.com">f</a>'
        '<a href="https://other.example/">g</a><a href="{{url}}">h</a><a href="">i</a></body>'
    )
    out, urls = run(html)
    assert urls == [
        "https://shop.example/en/sale?id=1&x=2",
        "https://shop.example/top",
        "https://shop.example/fr/",
        "https://cdn.example/x",
        "https://other.example/",
    ]
    assert '<base href="https://shop.example/en/">' in out  # the base itself is never rewritten
    assert '<a href="#top">e</a><a href="mailto:a@example.com">f</a>' in out


@pytest.mark.parametrize(
    "base",
    [
        '<base target="_blank">',
        '<base href="/relative/">',
        '<base href="ftp://files.example/">',
        '<!-- <base href="https://shop.example/"> -->',
    ],
)
def test_relative_links_stay_without_an_absolute_http_base(base: str) -> None:
    _, urls = run(f'{base}<a href="sale">a</a><a href="https://a.example/">b</a>')
    assert urls == ["https://a.example/"]


def test_only_the_first_base_href_counts() -> None:
    html = '<base target=x><base href="https://one.example/"><base href="https://two.example/"><a href="p">x</a>'
    assert run(html)[1] == ["https://one.example/p"]


def test_pixel_is_a_bare_image_hidden_by_inline_important_rules() -> None:
    """No <p> wrapper for p:first-of-type and friends to meet; hiding no author rule overrides."""
    out, _ = run("<body><p>x</p></body>", track_loads=True)
    pixel = out[len("<body><p>x</p>") : -len("</body>")]
    assert pixel.startswith("<img ") and "<p" not in pixel
    style = pixel[pixel.index("style='") + 7 :]
    assert "display:none!important" in style and "visibility:hidden!important" in style
    assert "visibility:none" not in style and "mso-hide:all" in style


@pytest.mark.parametrize(
    ("html", "closed"),
    [
        ('<p>see <a href="https://a.example/">the offer', True),
        ('<p>see <a href="https://a.example/">the offer</a> now', False),
        ('<p>see <a href="https://a.example/">the offer</A > now', False),
        ('<p><area href="https://a.example/">', False),
        ("<p>no link", False),
    ],
)
def test_pixel_closes_a_link_left_open_before_it(html: str, closed: bool) -> None:
    """Appended inside an open <a>, the pixel would be part of the author's link."""
    out, _ = run(html, track_loads=True)
    assert out.endswith(("</a>" if closed else "") + PIXEL)
    assert out.count(PIXEL) == 1


def test_a_base_href_applies_inside_conditional_comments_too() -> None:
    html = (
        '<base href="https://shop.example/en/"><!--[if mso]><v:roundrect href="sale"><![endif]-->'
    )
    assert run(html)[1] == ["https://shop.example/en/sale"]


def test_pixel_at_the_top_closes_no_link() -> None:
    out, _ = run(
        '<body><a href="https://a.example/">x</a></body>', track_loads=True, pixel_position="top"
    )
    assert out == f'<body>{PIXEL}<a href="{CLICK}L000">x</a></body>'
