"""The HTML tokenizer of :mod:`._html`: one regular expression, written as commented parts.

The pattern is built here with ``re.VERBOSE``, one commented line per
alternative, and its expanded text (all three variants) is kept in
``tests/golden/rewrite_scanner.txt``: ``tests/test_rewrite_scanner.py`` compares
the two, so every change to the tokenizer shows as a diff of the pattern the
engine runs. After a deliberate change, regenerate the golden copy with
``python tests/test_rewrite_scanner.py --write``.

What it is not: a parser. It splits the text the way the HTML5 tokenizer does
(text, tags and their attributes, comments, raw-text elements) without building
a tree, and it only stops for the few tokens the rewriter acts on.

Each match is a possessive loop over everything that is copied through, then
one token that matters (the named groups). The regex engine pays per turn of
the loop, per alternative it enters and per look-around, far more than per
character, so the choices below are ordered for speed; each choice is named and
says why. No capture groups inside the loop (CPython 3.11's re mishandles them
under possessive repeats), so raw-text elements get one alternative each.

What was measured and left (callgrind, instructions per pass over the
84-document corpus; the scan is about 46 M of the rewriter's 66 M): inside
tags most of the time goes to runs of a negated class such as ``[^>"'=]*+``,
about 40 instructions a character against 4 for a single negated character
(``[^"]*+``). The same class written as positive ranges runs in half that and
cut the scan to 42 M, but a positive class reaching U+10FFFF takes re 3 ms to
compile against 0.09 ms, so a scanner took 350 ms instead of 15 ms to build
in every process that rewrites: reverted. Unrolling the outer loop saved 1 M.

Linear time: every construct copied through needs the terminator the HTML
tokenizer ends it with, and whatever runs unclosed to the end of the input is
the one ``unfinished`` token, so the engine never scans to the end, fails, and
starts again one character later.
"""

from __future__ import annotations

import functools
import re

WS = r"\t\n\f\r "  # HTML's white space, for use inside a character class
END = rf"(?=[{WS}/>])"  # a tag name ends here
# The rest of a tag after its name, up to the ">" that ends it: a quote only
# opens a value right after "=" (so "it's" in an unquoted value is no quote).
# Possessive throughout: it stops only at a ">" or at the end of the input.
TAG_REST = rf"""[^>"'=]*+(?:(?:=[{WS}]*+(?:"[^"]*+"|'[^']*+'|[^{WS}>]*+)|["'])[^>"'=]*+)*+"""
# Attributes all double-quoted (99% of the corpus): read without any look-ahead.
FAST_ATTRS = r"""[^>"'=]*+(?:="[^"]*+"[^>"'=]*+)*+"""
# Raw-text and RCDATA elements: their text runs to their own end tag.
RAW = ("script", "style", "textarea", "title", "xmp", "iframe", "noembed", "noframes")
TRACKED = ("a", "area")  # the elements whose href is tracked
# Comment text up to "-->" or "--!>", unrolled so the engine runs without backtracking.
COMMENT_BODY = r"[^-]*+(?:-(?!-!?>)[^-]*+)*+"
# A conditional comment's text that holds no "href": copied through inside the regex.
NO_HREF_BODY = r"[^-hH]*+(?:(?:-(?!-!?>)|[hH](?![rR][eE][fF]))[^-hH]*+)*+"
# The condition of a downlevel-hidden conditional comment, "[if !mso]" (also "! (mso 12)").
NOT_MSO = rf"[{WS}]*+![{WS}]*+\(?[{WS}]*+[mM][sS][oO](?![a-zA-Z0-9_])[^\]>|&]*+"
# A conditional comment's opening, "<!--[if ...]>" without its "<".
COND_HEAD = r"!--\[if[^\]>]*+\]>"

# First letters of start tags in the order the fast alternatives are tried: the
# commonest in the corpus first (td, tr, table; then every letter that starts
# no special name: div, center, font, ...; span; p; br; img). The rest follow.
COMMON_FIRST = ("t", "", "s", "p", "b", "i")


def ci(word: str) -> str:
    """``word`` case-insensitively, spelt out: faster than re.IGNORECASE on the hot path."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


def names(words: tuple[str, ...]) -> str:
    """An alternation of tag names, grouped by first letter so most tags fail at once."""
    groups: dict[str, list[str]] = {}
    for word in words:
        groups.setdefault(word[0], []).append(word)
    alternatives = []
    for first, group in sorted(groups.items()):
        rests = sorted((ci(w[1:]) for w in group), key=len, reverse=True)
        alternatives.append(ci(first) + "(?:" + "|".join(rests) + ")")
    return "(?:" + "|".join(alternatives) + ")"


def _not_followed_by(rests: list[str]) -> str:
    """A look-ahead: none of ``rests`` (the rest of a name; ":" as itself) follows."""
    alternatives = [
        ":" if r == ":" else f"{ci(r)}{END}" for r in sorted(rests, key=len, reverse=True)
    ]
    return "(?!" + "|".join(alternatives) + ")"


def _either(choices: list[tuple[str, str]], indent: str) -> str:
    """A verbose alternation: one line per ``(pattern, comment)``."""
    lines = [
        f"{indent}{'|' if i else ' '} {pattern}  # {comment}"
        for i, (pattern, comment) in enumerate(choices)
    ]
    return "(?:\n" + "\n".join(lines) + f"\n{indent[:-2]})"


def pattern(vml: bool, body_start: bool = True) -> str:
    """The scanner's pattern text (``re.VERBOSE``).

    ``vml``: inside a conditional comment, where ``<v:...>`` elements are tracked
    too, ``<body>`` and ``<base>`` mean nothing and comments do not nest.
    ``body_start``: ``<body>`` stops the scan (the pixel goes right after it);
    without it ``<body>`` is copied through. All variants have the same groups,
    numbered alike.
    """
    body = ("body",) if body_start and not vml else ()
    base = () if vml else ("base",)  # <base href>: relative links resolve against it
    stops = f"(?:{names(TRACKED)}|[vV]:[a-zA-Z0-9_-]+)" if vml else names((*TRACKED, *base, *body))
    # Names that are not plain start tags, by first letter (VML: "v:" starts one).
    special: dict[str, list[str]] = {}
    for word in (*TRACKED, *RAW, *base, *body, "plaintext"):
        special.setdefault(word[0], []).append(word[1:])
    if vml:
        special.setdefault("v", []).append(":")
    plain = "".join(c for c in "abcdefghijklmnopqrstuvwxyz" if c not in special)
    plain += plain.upper()

    # A start tag in the common shape, behind its first letter: a special letter
    # needs no look-ahead when its second letter continues no special name.
    fast = {"": (rf"[{plain}]{FAST_ATTRS}>", 'start tag, plain first letter, attributes in ""')}
    # The same rule for any start tag (the look-ahead keeps special names out).
    general = [(rf"[{plain}]{TAG_REST}>", "start tag, plain first letter")]
    for first, rests in special.items():
        letter = f"[{first}{first.upper()}]"
        seconds = {r[0] for r in rests if r}
        seconds_class = "".join(sorted(seconds | {c.upper() for c in seconds}))
        ends = f"{WS}/" if "" in rests else ""  # "a" is a name itself: no name end after it
        which = ", ".join(first + r for r in rests)
        fast[first] = (
            rf"""{letter}[^{seconds_class}{ends}>"'=]{FAST_ATTRS}>""",
            f'start tag at {first}, not {which}, attributes in ""',
        )
        general.append(
            (rf"{letter}{_not_followed_by(rests)}{TAG_REST}>", f"start tag at {first}, not {which}")
        )
    order = {c: i for i, c in enumerate(COMMON_FIRST)}
    fast_choices = [fast[k] for k in sorted(fast, key=lambda k: order.get(k, len(order)))]
    bare = "".join(sorted(c + c.upper() for c in special if "" not in special[c]))

    if vml:
        comments = [(rf"!--(?:-?>|{COMMENT_BODY}--!?>)", "comment (conditional ones do not nest)")]
    else:
        comments = [
            (rf"!--(?!\[if[^\]>]*+\]>)(?:-?>|{COMMENT_BODY}--!?>)", "comment"),
            (rf"!--\[if{NOT_MSO}\]>{COMMENT_BODY}--!?>", "[if !mso]: shown by no client"),
            (rf"{COND_HEAD}{NO_HREF_BODY}--!?>", "conditional comment without href"),
        ]
    raw_text = [
        (
            rf"{ci(name)}{END}{TAG_REST}>[^<]*+(?:<(?!/{ci(name)}{END})[^<]*+)*+(?=</)",
            f"<{name}> and its text",
        )
        for name in RAW
    ]
    copied = [
        (r"""/[ac-zAC-Z][^>"']*+>""", "end tag without quotes (not </b..., which may be </body>)"),
        *fast_choices,
        (rf"[{bare}]>", "<p>, <b>, <i>, <s>, ..."),
        *comments,
        (r"!(?!--)[^>]*+>", "doctype, CDATA, bogus comment"),
        *general,
        (rf"/(?!{ci('body')}{END})[a-zA-Z]{TAG_REST}>", "any other end tag"),
        (r"\?[^>]*+>", "processing instruction: a bogus comment"),
        (r"/>", "</>: nothing"),
        (r"/[^a-zA-Z>][^>]*+>", "</ not before a letter: a bogus comment"),
        *raw_text,
        (r"(?![a-zA-Z/!?])", "a '<' that is text: not before a letter, /, ! or ?"),
    ]
    raw_open = "|".join(
        rf"{ci(name)}{END}{TAG_REST}(?:>[^<]*+(?:<(?!/{ci(name)}{END})[^<]*+)*+)?" for name in RAW
    )
    unfinished = [
        (rf"!--{COMMENT_BODY}", "a comment"),
        (raw_open, "a raw-text element"),
        (rf"{ci('plaintext')}{END}[\s\S]*+", "<plaintext>: all the rest is text"),
        (rf"/?[a-zA-Z]{TAG_REST}", "a tag without its '>': dropped"),
        (r"[!?/][^>]*+", "a bogus comment"),
    ]
    cond = "(?!)" if vml else rf"<!--\[if(?!{NOT_MSO}\]>)[^\]>]*+\]>"
    return (
        "# copied through: text up to a '<', then what the '<' starts\n"
        f"(?:[^<]*+<{_either(copied, '    ')})*+[^<]*+\n"
        "# then the token that matters, or the end\n"
        + _either(
            [
                (
                    rf"(?P<cond>{cond})(?P<condbody>{COMMENT_BODY})(?:--!?>)?",
                    "conditional comment with href (never in VML)",
                ),
                (
                    rf"(?P<tag><(?P<name>{stops}){END}(?P<attrs>{FAST_ATTRS}|{TAG_REST})>)",
                    "<a>, <area>, <base> (VML: <v:...>), <body> at the top",
                ),
                (rf"(?P<endbody></{ci('body')}{END}{TAG_REST}>)", "</body>"),
                (rf"(?P<unfinished><{_either(unfinished, '      ')}\Z)", "left open at the end"),
                (r"<", "a safety net: a '<' none of the above takes (none is known)"),
                (r"\Z", "the end"),
            ],
            "  ",
        )
    )


@functools.cache
def scanner(vml: bool, body_start: bool = True) -> re.Pattern[str]:
    """The compiled scanner, made on first use: each takes about 15 ms to compile,
    and most processes need one (the pixel goes at the bottom, few messages have VML)."""
    return re.compile(pattern(vml, body_start), re.VERBOSE)


# Group numbers, the same in every scanner (the loop has no groups of its own):
# the token alternatives in pattern() in order. Written out, not read from a
# compiled scanner, so that importing the rewriter compiles nothing: every CLI
# command imports it, and few rewrite anything. tests/test_rewrite_scanner.py
# checks them against each compiled variant.
GROUPS = {
    name: number
    for number, name in enumerate(
        ("cond", "condbody", "tag", "name", "attrs", "endbody", "unfinished"), start=1
    )
}
COND, CONDBODY, TAG, NAME, ATTRS, ENDBODY, UNFINISHED = GROUPS.values()
