"""The event writer's cost: CPU per event, and how long it holds gevent's hub.

    python benchmarks/writer.py [--events 20000] [--rounds 3] [--baseline REF]
                                [--backends sqlite,mysql] [--scenarios one-address,mix]

Feeds ``--events`` synthetic events through the real ``EventRecorder``: they are
spooled with ``click()``/``open()`` first, then the writer greenlet is started
under gevent's monkey-patching (as in the fast server) and drains them into the
store: dedupe, bot flags, ``clicks``/``loads``/``tracking_events``, ``messages``
times, webhook queueing (Postal mode on MariaDB). Figures, each the median over
``--rounds`` (runs of the variants interleaved):

- CPU µs per event: the process's CPU time (every thread: SQLite's writes run in
  gevent's thread pool) from the writer's start until the store holds every
  event, over the events. A run of its own, without the lateness probe.
- lateness p50/p99/max: a greenlet sleeps 1 ms in a loop and records how late
  it wakes, while the writer drains (a second run): the longest stretch the
  writer holds the hub shows as the max. ``>=5ms`` counts such wake-ups. The
  same probe with nothing to write (``idle``) shows the machine's own noise.
- hold p99/max: the writer greenlet's CPU time (``time.thread_time``) in each
  stretch between two greenlet switches, from a ``greenlet.settrace`` hook in
  the same run: what it holds the hub for, not lengthened when the OS runs
  another process (on SQLite the writes run in gevent's thread pool and take
  the GIL instead: there the lateness tells).

Scenarios, over 1,000 messages of 100 links each (as ``fast_server.py``):
``one-address``, one address and no User-Agent clicking random links at 4,000
clicks/s (what wrk does in the HTTP benchmark: thousands of earlier rows per
batch in the all-links-at-once check); ``mix``, readers on many addresses with
browser agents opening a message and clicking a link or two, Apple's proxy
opening, and link scanners clicking every link of a message at once.

``--baseline REF`` runs the writer of git revision REF (exported with ``git
archive``) beside the working tree's. MariaDB on 127.0.0.1:3306 as root
(``PTP_MYSQL_*`` as in the tests); a fresh database is made and dropped.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "--child":
    # A measured run: the tree under test first on the path, then patch, as the server does.
    sys.path.insert(0, sys.argv[3])
    from gevent import monkey

    monkey.patch_all()

import argparse
import gc
import json
import os
import random
import re
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

TOKEN = "benchw"
MESSAGES = 1000
LINKS = 100
RATE = 4000.0  # events per second of event time
WARMUP = 1000  # events written before the measurement
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
AGENTS = [
    CHROME,
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.2 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0",
]


# -- the measured run (a child process) -------------------------------------------------


def mysql_settings() -> dict[str, str | int]:
    """MariaDB's address and user, as the tests read them (``PTP_MYSQL_*``).

    The one copy is the shared helper's (``benchmarks/_support.py``); imported
    here, not at the top, so that a SQLite run's child loads neither it nor pytest.
    """
    from _support import MYSQL

    return MYSQL


def config_data(backend: str, database: str, data_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = {"tracking": {"data_dir": str(data_dir)}}
    if backend == "mysql":
        data["main_db"] = {**mysql_settings(), "database": database}
        data["message_db"] = {"prefix": database}
        data["tracking"]["store"] = "mysql"
    return data


def events_for(scenario: str, count: int, layout: dict[str, Any]) -> list[dict[str, Any]]:
    """``count`` events, oldest first, at RATE per second, ending 10 s ago."""
    rng = random.Random(7)
    messages: list[int] = layout["messages"]
    links: dict[str, list[int]] = layout["links"]
    start = time.time() - 10 - count / RATE
    out: list[dict[str, Any]] = []
    if scenario == "one-address":
        for i in range(count):
            m = rng.choice(messages)
            out.append(
                {
                    "kind": "click",
                    "message_id": m,
                    "link_id": rng.choice(links[str(m)]),
                    "ip": "127.0.0.1",
                    "ua": None,
                    "ts": start + i / RATE,
                }
            )
        return out
    # mix: sessions whose events spread over a few seconds, merged by time
    t = start
    while len(out) < count:
        t += 1 / RATE * 3
        m = rng.choice(messages)
        roll = rng.random()
        if roll < 0.05:  # a link scanner: every one of 10 links within a second
            ip = f"198.51.100.{rng.randrange(1, 255)}"
            for k in range(10):
                out.append(
                    {
                        "kind": "click",
                        "message_id": m,
                        "link_id": links[str(m)][k],
                        "ip": ip,
                        "ua": CHROME,
                        "ts": t + k * 0.05,
                    }
                )
        elif roll < 0.15:  # Apple's privacy proxy fetching the pixel
            out.append(
                {
                    "kind": "open",
                    "message_id": m,
                    "link_id": None,
                    "ip": f"17.58.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                    "ua": "Mozilla/5.0",
                    "ts": t,
                }
            )
        else:  # a reader: opens, then clicks a link or two
            ip = f"203.0.{rng.randrange(113, 120)}.{rng.randrange(1, 255)}"
            ua = rng.choice(AGENTS)
            out.append(
                {"kind": "open", "message_id": m, "link_id": None, "ip": ip, "ua": ua, "ts": t}
            )
            for k in range(rng.choice((0, 1, 1, 2))):
                out.append(
                    {
                        "kind": "click",
                        "message_id": m,
                        "link_id": rng.choice(links[str(m)]),
                        "ip": ip,
                        "ua": ua,
                        "ts": t + 2 + 5 * k + rng.random(),
                    }
                )
    out.sort(key=lambda e: e["ts"])
    return out[:count]


def reset(backend: str, database: str, template: Path, data_dir: Path) -> None:
    """A store holding the messages and links only."""
    if backend == "sqlite":
        shutil.copytree(template, data_dir)
        return
    import pymysql

    data_dir.mkdir()
    mysql = mysql_settings()
    conn = pymysql.connect(
        host=str(mysql["host"]),
        port=int(mysql["port"]),
        user=str(mysql["username"]),
        password=str(mysql["password"]),
        autocommit=True,
    )
    try:
        with conn.cursor() as cur:
            db = f"`{database}-server-1`"
            for table in ("tracking_events", "clicks", "loads"):
                cur.execute(f"TRUNCATE TABLE {db}.`{table}`")
            cur.execute(f"UPDATE {db}.`messages` SET clicked = NULL, loaded = NULL")
            cur.execute(f"TRUNCATE TABLE `{database}`.`webhook_requests`")
    finally:
        conn.close()


def child(args: list[str]) -> None:
    backend, database, template, workdir, scenario, count, probe = args
    import gevent

    import postal_tracking_plugin
    from postal_tracking_plugin.config import load_config
    from postal_tracking_plugin.events import EventRecorder
    from postal_tracking_plugin.store import open_store

    tree = Path(sys.argv[3]).resolve()
    assert Path(postal_tracking_plugin.__file__).resolve().is_relative_to(tree), (
        postal_tracking_plugin.__file__
    )
    count_n = int(count)
    work = Path(workdir)
    data_dir = work / "data"
    reset(backend, database, Path(template), data_dir)
    cfg = work / "postal.yml"
    cfg.write_text(yaml.safe_dump(config_data(backend, database, data_dir)))
    config = load_config(cfg)
    store = open_store(config)
    layout = json.loads((Path(template).parent / "layout.json").read_text())
    events = events_for(scenario, WARMUP + count_n, layout)
    rec = EventRecorder(config, store)
    # Warm up (connections, schema check, webhook catch-up) outside the measurement.
    spool(rec, events[:WARMUP])
    rec.start()
    if not rec.flush(600):
        raise SystemExit("the writer did not finish the warm-up in 600 s")
    late: list[float] = []
    done = [False]

    def ticker() -> None:
        while not done[0]:
            t0 = time.perf_counter()
            gevent.sleep(0.001)
            late.append(time.perf_counter() - t0 - 0.001)

    probe_on = probe in ("probe", "load")
    idle: list[float] = []
    holds: list[float] = []
    if probe_on:
        # The noise floor: the same probe for 0.5 s while the writer has nothing to do.
        tick = gevent.spawn(ticker)
        gevent.sleep(0.5)
        done[0] = True
        tick.join()
        idle, late, done[0] = sorted(late), [], False
    spool(rec, events[WARMUP:])
    assert rec.spool.appended == WARMUP + count_n
    # As the server does after start-up: what lives on (here the synthetic
    # events) stays out of the collector's full scans.
    gc.collect()
    gc.freeze()
    if probe_on:
        # The writer's CPU time in each stretch it runs between two switches:
        # unlike the probe's lateness, not lengthened by the OS running others.
        import greenlet

        writer_greenlet = rec._runner
        last = [time.thread_time()]

        def trace(event: str, args: Any) -> None:
            if event in ("switch", "throw"):
                now = time.thread_time()
                if args[0] is writer_greenlet:
                    holds.append(now - last[0])
                last[0] = now

        greenlet.settrace(trace)
        tick = gevent.spawn(ticker)
    if probe == "load":
        # Request-like load: 64 greenlets that each work 100 us then sleep 8 ms
        # (about 80% of a core), so the writer competes with them for the hub.
        def request_like() -> None:
            while not done[0]:
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < 0.0001:
                    pass
                gevent.sleep(0.008)

        loaders = [gevent.spawn(request_like) for _ in range(64)]
    toggle = None
    if probe == "cg":
        import ctypes

        toggle = ctypes.CDLL(os.environ["PTP_CALLGRIND_TOGGLE"])
        toggle.ptp_start()
    cpu0, wall0, times0 = time.process_time(), time.perf_counter(), os.times()
    if not rec.flush(600):
        raise SystemExit("the writer did not finish in 600 s")
    cpu1, wall1, times1 = time.process_time(), time.perf_counter(), os.times()
    if toggle is not None:
        toggle.ptp_stop()
    done[0] = True
    if probe_on:
        tick.join()
        greenlet.settrace(None)
    if probe == "load":
        gevent.joinall(loaders)
    rec.stop(10)
    with store.messages(1, readonly=True) as db:
        stored = db.one("SELECT COUNT(*) AS n, SUM(bot) AS bots FROM tracking_events")
    store.close()
    assert int(stored["n"]) == WARMUP + count_n, stored
    late.sort()
    result = {
        "cpu_us": (cpu1 - cpu0) / count_n * 1e6,
        "sys_us": (times1.system - times0.system) / count_n * 1e6,
        "wall_s": wall1 - wall0,
        "bots": int(stored["bots"] or 0),
    }
    if late:
        holds.sort()
        result.update(
            p50=late[len(late) // 2] * 1e3,
            p99=late[int(len(late) * 0.99)] * 1e3,
            max=late[-1] * 1e3,
            over5=sum(1 for x in late if x >= 0.005),
            idle_p99=idle[int(len(idle) * 0.99)] * 1e3,
            idle_max=idle[-1] * 1e3,
            hold_p99=holds[int(len(holds) * 0.99)] * 1e3,
            hold_max=holds[-1] * 1e3,
        )
    print(json.dumps(result))


def spool(rec: Any, events: list[dict[str, Any]]) -> None:
    for e in events:
        if e["kind"] == "click":
            rec.click(
                server_id=1,
                server_token=TOKEN,
                message_id=e["message_id"],
                link_id=e["link_id"],
                url="https://example.com/",
                ip_address=e["ip"],
                user_agent=e["ua"],
                timestamp=e["ts"],
            )
        else:
            rec.open(
                server_id=1,
                server_token=TOKEN,
                message_id=e["message_id"],
                message_token=None,
                ip_address=e["ip"],
                user_agent=e["ua"],
                timestamp=e["ts"],
            )


# -- the driver ----------------------------------------------------------------------


def fill(backend: str, database: str, template: Path) -> dict[str, Any]:
    from postal_tracking_plugin.config import load_config
    from postal_tracking_plugin.store import Link
    from postal_tracking_plugin.store import open_store
    from postal_tracking_plugin.store import random_token

    cfg = template.parent / f"{backend}-fill.yml"
    cfg.write_text(yaml.safe_dump(config_data(backend, database, template)))
    store = open_store(load_config(cfg))
    store.create_schema()
    server = store.add_server("Bench", TOKEN)
    assert server.id == 1
    for m in range(MESSAGES):
        links = [
            Link(random_token(), f"https://example.com/article/{m}/{i}?utm_source=newsletter")
            for i in range(LINKS)
        ]
        store.save_tracked_message(
            server.id,
            {
                "token": random_token(),
                "scope": "outgoing",
                "timestamp": time.time() - 3600,
                "tracked_links": LINKS,
            },
            links,
        )
    with store.messages(server.id, readonly=True) as db:
        rows = db.query("SELECT id, message_id FROM links ORDER BY id")
    store.close()
    layout: dict[str, Any] = {"messages": [], "links": {}}
    for r in rows:
        layout["links"].setdefault(str(r["message_id"]), []).append(int(r["id"]))
    layout["messages"] = sorted(int(m) for m in layout["links"])
    return layout


def export(ref: str, into: Path) -> Path:
    """The package of git revision ``ref``, in ``into``."""
    root = Path(__file__).resolve().parent.parent
    into.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", ref, "postal_tracking_plugin"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


CALLGRIND_TOGGLE = """
#include <valgrind/callgrind.h>
void ptp_start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void ptp_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; }
"""


def callgrind_toggle(work: Path) -> Path:
    """A tiny library that switches callgrind's counting on and off (gcc, valgrind's headers)."""
    source, lib = work / "toggle.c", work / "toggle.so"
    source.write_text(CALLGRIND_TOGGLE)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(lib), str(source)], check=True)
    return lib


def run_child(cmd: list[str], mode: str, toggle: Path | None) -> dict[str, Any]:
    env = None
    if mode == "cg":
        assert toggle is not None
        env = {**os.environ, "PTP_CALLGRIND_TOGGLE": str(toggle)}
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            "--callgrind-out-file=/dev/null",
            *cmd,
        ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if mode == "cg":
        got["instructions"] = int(
            re.search(r"Collected : (\d+)", out.stderr).group(1)  # type: ignore[union-attr]
        )
    return got


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", help="a git revision to compare with")
    parser.add_argument("--backends", default="sqlite,mysql")
    parser.add_argument("--scenarios", default="one-address,mix")
    parser.add_argument(
        "--load",
        action="store_true",
        help="also a run beside 64 request-like greenlets (100 us of work every 8 ms each)",
    )
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="also count the writer's instructions under valgrind (first round only)",
    )
    parser.add_argument("--callgrind-events", type=int, default=3000)
    args = parser.parse_args()
    backends = args.backends.split(",")
    scenarios = args.scenarios.split(",")
    work = Path(tempfile.mkdtemp(prefix="ptp-writer-bench-"))
    here = Path(__file__).resolve().parent.parent
    variants = {"current": here}
    if args.baseline:
        variants = {f"base {args.baseline}": export(args.baseline, work / "base"), **variants}
    database = f"ptp_wbench_{secrets.token_hex(3)}"
    results: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    toggle = callgrind_toggle(work) if args.callgrind else None
    try:
        templates = {}
        for backend in backends:
            template = work / backend / "data"
            template.parent.mkdir()
            print(f"filling {MESSAGES * LINKS:,} links into {backend} ...", flush=True)
            layout = fill(backend, database, template)
            (template.parent / "layout.json").write_text(json.dumps(layout))
            templates[backend] = template
        run = 0
        for rnd in range(args.rounds):
            for backend in backends:
                for scenario in scenarios:
                    names = list(variants)
                    if rnd % 2:
                        names.reverse()
                    for name in names:
                        merged: dict[str, Any] = {}
                        modes = ["cpu", "probe"] + (["load"] if args.load else [])
                        if args.callgrind and rnd == 0:
                            modes.append("cg")
                        for mode in modes:
                            run += 1
                            rundir = work / f"run{run}"
                            rundir.mkdir()
                            got = run_child(
                                [
                                    sys.executable,
                                    __file__,
                                    "--child",
                                    "-",
                                    str(variants[name]),
                                    backend,
                                    database,
                                    str(templates[backend]),
                                    str(rundir),
                                    scenario,
                                    str(args.callgrind_events if mode == "cg" else args.events),
                                    mode,
                                ],
                                mode,
                                toggle,
                            )
                            shutil.rmtree(rundir)
                            if mode == "cpu":
                                merged.update(got)
                            elif mode == "probe":
                                merged.update({k: v for k, v in got.items() if k != "cpu_us"})
                            elif mode == "load":
                                merged.update(
                                    {
                                        "load_rate": args.events / got["wall_s"],
                                        "load_p99": got["p99"],
                                        "load_max": got["max"],
                                        "load_hold_max": got["hold_max"],
                                    }
                                )
                            else:
                                merged["instr"] = got["instructions"] / args.callgrind_events
                        results.setdefault((backend, scenario, name), []).append(merged)
                        print(
                            f"round {rnd + 1} {backend:6} {scenario:11} {name:16} "
                            f"{merged['cpu_us']:6.1f} us/event  late max {merged['max']:6.2f} ms  "
                            f"hold max {merged['hold_max']:6.2f} ms",
                            flush=True,
                        )
    finally:
        if "mysql" in backends:
            from _support import drop_mysql_databases

            drop_mysql_databases(database)
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\n{args.events:,} events per run, medians of {args.rounds} rounds. CPU: process CPU "
        "time per event. late: how late a 1 ms sleep loop woke while the writer drained "
        "(idle: the same before, with nothing to write), ms. hold: the writer greenlet's CPU "
        "time in one stretch between two switches, ms."
    )
    print(
        f"{'backend':7} {'scenario':11} {'variant':16} {'CPU us/ev':>9} {'events/s':>8} "
        f"{'late p50':>8} {'p99':>6} {'max':>6} {'>=5ms':>5} {'idle p99':>8} {'max':>5} "
        f"{'hold p99':>8} {'max':>6}"
    )
    for (backend, scenario, name), runs in results.items():

        def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        print(
            f"{backend:7} {scenario:11} {name:16} {med('cpu_us'):9.1f} "
            f"{args.events / med('wall_s'):8.0f} {med('p50'):8.2f} {med('p99'):6.2f} "
            f"{med('max'):6.2f} {med('over5'):5.0f} {med('idle_p99'):8.2f} {med('idle_max'):5.1f} "
            f"{med('hold_p99'):8.2f} {med('hold_max'):6.2f}"
        )
    if args.load or args.callgrind:
        print(
            "\nload: the writer beside 64 request-like greenlets (~80% of a core): its "
            "events/s, the 1 ms probe's lateness (ms), its longest stretch (CPU ms). "
            "instr: instructions per event counted by callgrind (first round)."
        )
        print(
            f"{'backend':7} {'scenario':11} {'variant':16} {'load ev/s':>9} {'late p99':>8} "
            f"{'max':>6} {'hold max':>8} {'instr/ev':>9}"
        )
        for (backend, scenario, name), runs in results.items():
            loaded = [r for r in runs if "load_rate" in r]
            counted = [r["instr"] for r in runs if "instr" in r]

            def lmed(key: str, loaded: list[dict[str, Any]] = loaded) -> float:
                return statistics.median(r[key] for r in loaded) if loaded else float("nan")

            print(
                f"{backend:7} {scenario:11} {name:16} {lmed('load_rate'):9.0f} "
                f"{lmed('load_p99'):8.2f} {lmed('load_max'):6.2f} {lmed('load_hold_max'):8.2f} "
                f"{(counted[0] if counted else float('nan')):9.0f}"
            )
    print("bots flagged per run (must match across variants):", end="")
    for (backend, scenario, name), runs in results.items():
        print(
            f" {backend}/{scenario}/{name.split()[0]}={sorted({r['bots'] for r in runs})}", end=""
        )
    print()
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[4:])
    else:
        sys.exit(main())
