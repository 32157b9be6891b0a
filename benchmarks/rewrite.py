"""Benchmark the rewriter against pytracking and Postal's own regexes, in one run.

    python benchmarks/rewrite.py [--corpus DIR] [--rounds N] [--no-mysql]

Prints, over every HTML document of the shared corpus:

(a) this project's pure HTML rewriter (no storage),
(b) pytracking's ``adapt_html`` (lxml parse and re-serialise),
(c) a transliteration of the two regexes of Postal's ``MessageParser``
    (``lib/postal/message_parser.rb``: the ``href=`` substitution, the
    ``+notrack`` substitution and the pixel before ``</body>``),

in documents per second and MB/s, plus rewrite-and-store milliseconds per
50-link message on SQLite and MariaDB, and the peak memory of rewriting a 14 MB
message with a small HTML body and a large attachment. All three (a)-(c) make
their tokens with the same ``random_token`` (Postal also makes one per link).
Figures vary with load: compare the ratios, measured side by side here.

Then the pathological inputs (``--pathological-only`` prints only these): each
piece that once made some part of the rewriter scan to the end of the input and
start again one character later, repeated 10,000 and 40,000 times into one
whole message, through :func:`rewrite`. Linear time shows as a 40k/10k ratio
near 4 (a quadratic scan shows as 16); the worst milliseconds per MB over them
is the figure to compare with the corpus's.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import os
import re
import secrets
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from postal_tracking_plugin.config import Config
from postal_tracking_plugin.config import FastServerConfig
from postal_tracking_plugin.config import parse_config
from postal_tracking_plugin.rewrite import TrackingPlan
from postal_tracking_plugin.rewrite import rewrite
from postal_tracking_plugin.rewrite import rewrite_message
from postal_tracking_plugin.rewrite._html import rewrite_html
from postal_tracking_plugin.rewrite._plan import Tracker
from postal_tracking_plugin.store import open_store
from postal_tracking_plugin.store import random_token

HERE = Path(__file__).resolve().parent
DEFAULT_CORPUS = HERE.parent / "tests" / "corpus" / "html"
PLAN = TrackingPlan("click.example.com", "https", "srvtok")

# -- (c) Postal's MessageParser, transliterated -------------------------------------

_POSTAL_URL = (
    r"(?P<url>(?P<protocol>https?)\:\/\/(?P<domain>[A-Za-z0-9\-\.\:]+)"
    r"(?P<path>\/[A-Za-z0-9\.\/\+\?\&\-\_\%\=\~\:\;\(\)\[\]#]*)?+)"
)
_POSTAL_HREF = re.compile(r"href=([\'\"])" + _POSTAL_URL + r"[\'\"]")
_POSTAL_NOTRACK = re.compile(r"(https?)\+notrack\:\/\/")


def postal_html(part: str, excluded: frozenset[str] = frozenset()) -> str:
    """What Postal's ``parse(part, :html)`` does with clicks and loads on."""
    base = "https://click.example.com"
    links: list[tuple[str, str]] = []

    def link(m: re.Match[str]) -> str:
        if m.group("domain") in excluded:
            return m.group(0)
        token = random_token()
        links.append((token, m.group("url")))
        return f"href='{base}/srvtok/{token}'"

    part = _POSTAL_HREF.sub(link, part)
    part = _POSTAL_NOTRACK.sub(r"\1://", part)
    container = (
        "<p class='ampimg' style='display:none;visibility:none;margin:0;padding:0;line-height:0;'>"
        f"<img src='{base}/img/srvtok/{random_token()}' alt=''></p>"
    )
    if "</body>" in part:
        return part.replace("</body>", container + "</body>")
    return part + container


# -- (a) and (b) --------------------------------------------------------------------


def ours(html: str) -> str:
    return rewrite_html(html, Tracker(PLAN))


def pytracking_html() -> Callable[[str], str] | None:
    try:
        import pytracking.html
    except ImportError:
        return None
    config = {
        "base_click_tracking_url": "https://click.example.com/c/",
        "base_open_tracking_url": "https://click.example.com/o/",
    }

    def adapt(html: str) -> str:
        return pytracking.html.adapt_html(html, {"message": "abcd"}, **config)

    return adapt


def what_each_tracks(docs: list[str]) -> list[str]:
    """Lines saying what (a), (b) and (c) change in the corpus, beside speed."""
    from urllib.parse import urlsplit

    import lxml.html

    ours_links = 0
    for doc in docs:
        tracker = Tracker(PLAN)
        rewrite_html(doc, tracker)
        ours_links += len(tracker.links)
    postal_links = sum(len(_POSTAL_HREF.findall(doc)) for doc in docs)
    base_tags = [
        len(re.findall(r"(?i)<base\b[^>]*click\.example\.com", postal_html(doc))) for doc in docs
    ]
    py_links = py_hostless = 0
    for doc in docs:
        try:
            root = lxml.html.fromstring(doc)
        except Exception:  # noqa: BLE001 - pytracking fails on the same document
            continue
        for element, attribute, link, _pos in root.iterlinks():
            if (
                element.tag == "a"
                and attribute == "href"
                and link.startswith(("http://", "https://", "//"))
            ):
                py_links += 1
                if not urlsplit(link).hostname:
                    py_hostless += 1
    return [
        f"  (a) tracks {ours_links} links (relative ones resolved against <base href>); "
        f"never the <base href> itself, host-less or placeholder URLs",
        f"  (b) tracks {py_links} links, {py_hostless} of them host-less (http:// placeholders), "
        f"and re-serialises every document",
        f"  (c) tracks {postal_links} links and rewrites {sum(base_tags)} <base href> tags "
        f"(in {sum(1 for n in base_tags if n)} documents); "
        f"misses unquoted, HREF, spaced and special-character links",
    ]


# -- measuring -----------------------------------------------------------------------


def _one_pass(fn: Callable[[str], str], docs: list[str]) -> tuple[float, int]:
    failures = 0
    start = time.perf_counter()
    for doc in docs:
        try:
            fn(doc)
        except Exception:  # noqa: BLE001 - a baseline failing on a document is a finding
            failures += 1
    return time.perf_counter() - start, failures


def throughput(
    fns: dict[str, Callable[[str], str]], docs: list[str], rounds: int
) -> dict[str, tuple[float, float, int]]:
    """Median and best seconds per pass over ``docs`` for each function, and documents that raised.

    Rounds are interleaved (a, b, c, a, b, c, ...) so that a change in the
    machine's load during the run affects every implementation alike.
    """
    failures = {name: _one_pass(fn, docs)[1] for name, fn in fns.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(_one_pass(fn, docs)[0])
    return {
        name: (statistics.median(times[name]), min(times[name]), failures[name]) for name in fns
    }


def fifty_link_message() -> bytes:
    links = "\n".join(
        f'<p><a href="https://www.example.com/article/{i}?utm_source=news&amp;utm_medium=email">'
        f"Article {i}</a></p>"
        for i in range(50)
    )
    return (
        (
            "From: News <news@example.com>\r\nTo: reader@example.org\r\nSubject: Fifty links\r\n"
            "Message-ID: <bench@example.com>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/html; charset=utf-8\r\n\r\n"
            f"<html><body>{links}</body></html>\r\n"
        )
        .replace("\n", "\r\n")
        .replace("\r\r\n", "\r\n")
        .encode()
    )


def store_ms(config: Config, count: int) -> float:
    store = open_store(config)
    try:
        store.create_schema()
        server = store.add_server("Bench", "benchs")
        store.add_track_domain(server, "click.example.com", dns_status="OK")
        raw = fifty_link_message()
        config = dataclasses.replace(
            config, fast_server=FastServerConfig(enabled=True, bind_address=("127.0.0.1",))
        )
        times = []
        for _ in range(count):
            start = time.perf_counter()
            result = rewrite_message(raw, config=config, store=store, server=server)
            times.append(time.perf_counter() - start)
            assert result.tracked and result.tracked_links == 50, result.reason
        return statistics.median(times) * 1000
    finally:
        store.close()


def mysql_ms(count: int) -> float | str:
    try:
        import pymysql

        conn = pymysql.connect(
            host="127.0.0.1", port=3306, user="root", password="", connect_timeout=3
        )
    except Exception as exc:  # noqa: BLE001
        return f"n/a ({exc})"
    database = f"ptp_bench_{secrets.token_hex(4)}"
    text = (
        f"main_db: {{host: 127.0.0.1, port: 3306, username: root, password: '', "
        f"database: {database}}}\nmessage_db: {{prefix: {database}}}\ntracking: {{store: mysql}}\n"
    )
    try:
        return store_ms(parse_config(text), count)
    finally:
        with conn.cursor() as cursor:
            cursor.execute("SHOW DATABASES")
            for (name,) in cursor.fetchall():
                if name == database or name.startswith(database + "-"):
                    cursor.execute(f"DROP DATABASE `{name}`")
        conn.close()


def big_message(size: int) -> tuple[bytes, bytes]:
    """A message of about ``size`` bytes: small HTML body, one large attachment."""
    html = (
        "<html><body>"
        + "".join(f'<p><a href="https://www.example.com/{i}">link {i}</a></p>' for i in range(20))
        + "</body></html>"
    )
    head = (
        "From: news@example.com\r\nTo: r@example.org\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="BIG"\r\n\r\n--BIG\r\n'
        "Content-Type: text/html; charset=utf-8\r\n\r\n" + html + "\r\n--BIG\r\n"
        "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="data.bin"\r\n\r\n'
    ).encode()
    tail = b"\r\n--BIG--\r\n"
    payload_len = (size - len(head) - len(tail)) * 57 // 78
    attachment = base64.encodebytes(os.urandom(payload_len)).replace(b"\n", b"\r\n")
    return head + attachment + tail, attachment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--messages", type=int, default=100, help="rewrite+store runs per backend")
    parser.add_argument("--no-mysql", action="store_true")
    parser.add_argument(
        "--pathological-only",
        action="store_true",
        help="print only the pathological inputs' section",
    )
    parser.add_argument(
        "--limit",
        type=float,
        default=60.0,
        help="seconds after which a pathological run is stopped",
    )
    args = parser.parse_args(argv)
    if args.pathological_only:
        pathological(args.limit)
        return 0

    paths = sorted(args.corpus.glob("*.html"))
    if not paths:
        print(f"no .html files in {args.corpus}", file=sys.stderr)
        return 1
    docs = [p.read_bytes().decode("utf-8", "surrogateescape") for p in paths]
    total_mb = sum(len(p.read_bytes()) for p in paths) / 1e6

    fns: dict[str, Callable[[str], str]] = {"(a) this rewriter (rewrite_html)": ours}
    adapt = pytracking_html()
    if adapt is not None:
        fns["(b) pytracking adapt_html"] = adapt
    fns["(c) Postal's regexes"] = postal_html
    measured = throughput(fns, docs, args.rounds)
    rows: list[tuple[str, float, float, int]] = [(name, *measured[name]) for name in fns]

    # the whole message path: MIME walk, QP decode/re-encode, per corpus document
    messages = [
        (
            b"From: news@example.com\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable"
            b"\r\n\r\n"
        )
        + _qp(doc)
        for doc in docs
    ]
    start_all = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for raw in messages:
            rewrite(raw, PLAN)
        start_all.append(time.perf_counter() - start)
    rows.append(
        ("(a') rewrite(): whole message, QP part", statistics.median(start_all), min(start_all), 0)
    )

    median_a, best_a = rows[0][1], rows[0][2]
    print(
        f"corpus: {len(docs)} documents, {total_mb:.2f} MB ({args.corpus}); "
        f"{args.rounds} interleaved rounds, median and best"
    )
    print(
        f"{'implementation':40} {'docs/s':>7} {'MB/s':>6} {'ms/doc':>6} {'(a) is':>7}"
        f" | {'best MB/s':>9} {'(a) is':>7} | failed"
    )
    for name, median, best, failed in rows:
        print(
            f"{name:40} {len(docs) / median:7.0f} {total_mb / median:6.1f} "
            f"{median / len(docs) * 1000:6.3f} {median / median_a:6.2f}x"
            f" | {total_mb / best:9.1f} {best / best_a:6.2f}x | {failed:6d}"
        )

    print("\nwhat each changes in the corpus:")
    print("\n".join(what_each_tracks(docs)))

    with tempfile.TemporaryDirectory() as tmp:
        sqlite = store_ms(parse_config(f"tracking: {{data_dir: {tmp}}}\n"), args.messages)
    print(f"\nrewrite + store, one 50-link message (median of {args.messages}):")
    print(f"  SQLite   {sqlite:7.2f} ms")
    if not args.no_mysql:
        ms = mysql_ms(args.messages)
        print(f"  MariaDB  {ms:7.2f} ms" if isinstance(ms, float) else f"  MariaDB  {ms}")

    size = 14 * 1024 * 1024 - 1024
    raw, attachment = big_message(size)
    tracemalloc.start()
    result = rewrite(raw, PLAN)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    identical = attachment in result.data and result.data.count(attachment) == 1
    print(
        f"\n{len(raw) / 2**20:.1f} MiB message (20 links, {len(attachment) / 2**20:.1f} MiB "
        f"base64 attachment): {len(result.links)} links tracked"
    )
    print(
        f"  peak allocated while rewriting: {peak / 2**20:.1f} MiB "
        f"({peak / len(raw):.2f}x the message; with the input itself "
        f"{(peak + len(raw)) / len(raw):.2f}x)"
    )
    print(f"  attachment bytes identical: {'yes' if identical else 'NO'}")
    print()
    pathological(args.limit)
    return 0


# -- pathological inputs ------------------------------------------------------------

# (what it attacks, part subtype, piece repeated)
PATHOLOGICAL: list[tuple[str, str, str]] = [
    ("start tag <a never closed", "html", "<a "),
    ("start tag <a, quoted value never closed", "html", '<a href="https://a.example/'),
    ("other start tag never closed", "html", "<p "),
    ("raw-text start tag never closed", "html", "<style "),
    ("end tag never closed", "html", "</p "),
    ("</body never closed", "html", "</body "),
    ("conditional comment opener", "html", "<!--[if"),
    ("conditional comments nested, with href", "html", "<!--[if mso]>href "),
    ("comment never closed", "html", "<!-- <a href=x>"),
    (
        "opt-out links beside +notrack text",
        "html",
        '<a data-no-track href="https://a.example/">https+notrack://b.example/</a> ',
    ),
    ("tracked links, 1000-link limit", "html", '<a href="https://a.example/">x</a>'),
    ("text URL then closing brackets", "plain", ")"),
    ("200-octet lines (the 998-octet line check)", "plain", "x" * 200 + "\n"),
]


def _pathological_message(subtype: str, piece: str, count: int) -> bytes:
    if subtype == "plain" and piece == ")":
        body = "see https://a.example/x" + ")" * count + " ok"
    elif subtype == "plain":
        body = "https://a.example/\n" + piece * count
    else:
        body = piece * count
    return (
        "From: a@example.com\nTo: b@example.org\nSubject: x\nMIME-Version: 1.0\n"
        f"Content-Type: text/{subtype}; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n" + body
    ).encode("utf-8")


def _time_rewrite(raw: bytes) -> tuple[float, str]:
    """Best seconds of up to 20 runs (fewer once they took 0.5 s), and how it ended."""
    best = float("inf")
    outcome = "ok"
    spent = time.perf_counter()
    for _ in range(20):
        start = time.perf_counter()
        try:
            result = rewrite(raw, PLAN)
            outcome = result.untouched or "ok"
        except Exception as exc:  # noqa: BLE001 - a crash is a finding too
            outcome = f"raised {type(exc).__name__}"
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() - spent > 0.5:
            break
    return best, outcome


def _time_in_child(raw: bytes, limit: float) -> tuple[float, str]:
    """:func:`_time_rewrite` in a forked child stopped after ``limit`` seconds (then inf)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.SimpleQueue()
    child = context.Process(target=lambda: queue.put(_time_rewrite(raw)))
    child.start()
    child.join(limit)
    if child.is_alive():
        child.kill()
        child.join()
        return float("inf"), f"stopped after {limit:.0f} s"
    return queue.get()


def pathological(limit: float = 60.0) -> None:
    """Print each pathological input's time at 10,000 and 40,000 repetitions.

    Each run is stopped after ``limit`` seconds (shown as inf), so that a quadratic
    rewriter still finishes the table.
    """
    print("pathological inputs, whole message through rewrite(), best of up to 20 runs:")
    print(f"  {'input':44} {'10k ms':>8} {'40k ms':>9} {'ratio':>6} {'40k MB':>7} {'ms/MB':>7}")
    worst = (0.0, "")
    for name, subtype, piece in PATHOLOGICAL:
        small, _ = _time_in_child(_pathological_message(subtype, piece, 10_000), limit)
        raw = _pathological_message(subtype, piece, 40_000)
        large, outcome = _time_in_child(raw, limit)
        per_mb = large * 1000 / (len(raw) / 1e6)
        worst = max(worst, (per_mb, name))
        note = "" if outcome == "ok" else f"  ({outcome[:40]})"
        print(
            f"  {name:44} {small * 1000:8.1f} {large * 1000:9.1f} {large / small:6.1f}"
            f" {len(raw) / 1e6:7.2f} {per_mb:7.0f}{note}"
        )
    print(f"  worst: {worst[0]:.0f} ms per MB ({worst[1]})")


def _qp(text: str) -> bytes:
    import binascii

    data = text.encode("utf-8", "surrogateescape").replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return binascii.b2a_qp(data, istext=True)


if __name__ == "__main__":
    sys.exit(main())
