"""Benchmark the fast server beside its baselines, in one run (method: http-bench recipe).

    python benchmarks/fast_server.py [--rounds 3] [--duration 10] [--links 100000] [--only 5,7]

Needs Debian's ``nginx`` and ``wrk`` (``apt-get install -y nginx wrk``) and
MariaDB on 127.0.0.1:3306 (``PTP_MYSQL_*`` as in the tests). The server under
test is pinned to CPU 0 and wrk (one thread, 64 connections) to CPU 1; each
measured run follows a discarded warm-up; rounds interleave the variants and
the medians are printed, with the server's CPU microseconds per request (from
``/proc``), which is the honest figure when wrk, not the server, saturates.

Variants: (1) nginx ``return 307`` (this machine's ceiling); (2) a minimal Flask
app on gevent answering 307 from a dict (the stack's ceiling); (3) the same app
doing what Postal does per click (a PyMySQL SELECT and an autocommit INSERT);
ours: (4) clicks on the SQLite store, (5) on MariaDB, (6) the pixel (MariaDB),
(7) TLS full handshakes, one request per connection, ECDSA P-256, ours vs nginx,
(8) ``--workers 2`` on both cores (MariaDB), (9) (5) with the access log on
(common format, to a file), for its cost. Then the resident memory of each
worker after every one of the links has been clicked. The variants are the
``VARIANTS`` list below, run by one small harness (``run``, ``measure``);
``--help`` lists them and says how to measure the click path (5) before and
after a change.

MariaDB itself is not pinned (it is shared); where it ran is printed.
"""

from __future__ import annotations

import sys

if len(sys.argv) > 1 and sys.argv[1] == "--serve-baseline":
    from gevent import monkey  # the baseline server process: patch first, as ours does

    monkey.patch_all()

import argparse
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import NamedTuple

from _support import MYSQL
from _support import drop_mysql_databases
from _support import free_port

RANDPATH_LUA = """
local paths = {}
function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0) % 100000)
end
function request()
  return wrk.format(nil, paths[math.random(#paths)])
end
"""

SEQPATH_LUA = """
local paths = {}
local i = 0
function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
end
function request()
  i = i + 1
  if i > #paths then i = 1 end
  return wrk.format(nil, paths[i])
end
"""

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx_error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/ngx/body;
    proxy_temp_path {dir}/ngx/proxy;
    fastcgi_temp_path {dir}/ngx/fastcgi;
    uwsgi_temp_path {dir}/ngx/uwsgi;
    scgi_temp_path {dir}/ngx/scgi;
    server {{
        listen 127.0.0.1:{http};
        location / {{ return 307 https://example.com/x; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate {dir}/ecdsa.crt;
        ssl_certificate_key {dir}/ecdsa.key;
        ssl_session_tickets off;
        ssl_session_cache off;
        location / {{ return 307 https://example.com/x; }}
    }}
}}
"""


# -- the baseline apps (run as: fast_server.py --serve-baseline KIND PORT DIR) ----------


def serve_baseline(kind: str, port: int, workdir: Path) -> None:
    import gc
    import queue

    import pymysql
    from flask import Flask
    from flask import abort
    from flask import redirect
    from gevent.pywsgi import WSGIHandler
    from gevent.pywsgi import WSGIServer

    app = Flask(__name__)
    if kind == "dict":
        links = {}
        for line in (workdir / "links.tsv").read_text().splitlines():
            token, url = line.split("\t", 1)
            links[token] = url
        gc.freeze()

        @app.route("/<server>/<token>")
        def click(server: str, token: str) -> Any:
            url = links.get(token)
            if url is None:
                abort(404)
            return redirect(url, 307)

    else:  # "postal": a SELECT and an autocommit INSERT per click, before the 307
        database = (workdir / "mysql_db").read_text().strip()
        pool: queue.Queue[Any] = queue.Queue()
        for _ in range(16):
            pool.put(
                pymysql.connect(
                    host=MYSQL["host"],
                    port=MYSQL["port"],
                    user=MYSQL["username"],
                    password=MYSQL["password"],
                    database=database,
                    autocommit=True,
                )
            )

        @app.route("/<server>/<token>")
        def click(server: str, token: str) -> Any:
            from flask import request

            conn = pool.get()
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT id, message_id, url FROM links WHERE token = %s", (token,))
                    row = cur.fetchone()
                    if row is None:
                        abort(404)
                    cur.execute(
                        "INSERT INTO clicks (message_id, link_id, ip_address, user_agent, timestamp) "
                        "VALUES (%s, %s, %s, %s, %s)",
                        (
                            row[1],
                            row[0],
                            request.remote_addr,
                            request.user_agent.string,
                            time.time(),
                        ),
                    )
            finally:
                pool.put(conn)
            return redirect(row[2], 307)

    class Handler(WSGIHandler):
        def handle(self) -> None:  # the recipe's fix: no delayed-ACK stall
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle()

    WSGIServer(("127.0.0.1", port), app, handler_class=Handler, log=None).serve_forever()


# -- helpers --------------------------------------------------------------------------


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def tree(pid: int) -> list[int]:
    """``pid`` and its children (the workers of a pre-forked server)."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                pids.append(int(entry))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def database_pids() -> list[int]:
    """MariaDB's server process (shared, not ours: only read, for its CPU time)."""
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() in ("mariadbd", "mysqld"):
                pids.append(int(comm.parent.name))
        except OSError:
            continue
    return pids


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wrk(
    url: str,
    duration: float,
    paths: Path | None,
    *,
    close: bool = False,
    cpus: str = "1",
    workdir: Path,
    script: str = "rand.lua",
) -> dict[str, float]:
    cmd = ["taskset", "-c", cpus, "wrk", "-t1", "-c64", f"-d{int(duration)}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    if paths is not None:
        cmd += ["-s", str(workdir / script), url, "--", str(paths)]
    else:
        cmd.append(url)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the only child reaped here
    wrk_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    p99 = _ms(re.search(r"99%\s+([\d.]+\w+)", out)[1])  # type: ignore[index]
    total = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    err = sum(int(x) for x in errors.groups()) if errors else 0
    return {
        "rps": rps,
        "p99": p99,
        "requests": total,
        "non3xx": int(bad[1]) if bad else 0,
        "errors": err,
        "wrk_us": wrk_cpu / max(total, 1) * 1e6,
    }


def _ms(text: str) -> float:
    value = float(re.match(r"[\d.]+", text)[0])  # type: ignore[index]
    unit = text[len(re.match(r"[\d.]+", text)[0]) :]  # type: ignore[index]
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


# -- the data ---------------------------------------------------------------------------


def make_certificate(workdir: Path) -> None:
    """The ECDSA P-256 pair both servers use (the same maker as ``init``'s default)."""
    from postal_tracking_plugin.default_certificate import self_signed_certificate

    cert_pem, key_pem = self_signed_certificate("bench.example", days=30)
    (workdir / "ecdsa.crt").write_bytes(cert_pem)
    (workdir / "ecdsa.key").write_bytes(key_pem)


def write_config(
    workdir: Path,
    name: str,
    store: str,
    database: str,
    http: int,
    https: int,
    access_log: str | None = None,
) -> Path:
    import yaml

    data: dict[str, Any] = {
        "fast_server": {
            "enabled": True,
            "bind_address": "127.0.0.1",
            "port": http,
            "ssl_port": https,
            "default_tls_certificate_path": str(workdir / "ecdsa.crt"),
            "default_private_key_path": str(workdir / "ecdsa.key"),
        },
        "tracking": {"data_dir": str(workdir / f"data-{name}"), "store": store},
    }
    if access_log:
        data["tracking"]["log"] = {
            "access_log": access_log,
            "access_log_path": str(workdir / f"access-{name}.log"),
        }
    if store == "mysql":
        data["main_db"] = {**MYSQL, "database": database}
        data["message_db"] = {"prefix": database}
    path = workdir / f"{name}.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def fill(
    config_path: Path, count: int, token: str
) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """``count`` links over count/100 messages; returns click paths, pixel paths, (token, url)."""
    from postal_tracking_plugin.config import load_config
    from postal_tracking_plugin.store import Link
    from postal_tracking_plugin.store import open_store
    from postal_tracking_plugin.store import random_token

    store = open_store(load_config(config_path))
    store.create_schema()
    server = store.add_server("Bench", token)
    clicks, pixels, pairs = [], [], []
    for m in range(count // 100):
        message = random_token()
        links = [
            Link(random_token(), f"https://example.com/article/{m}/{i}?utm_source=newsletter")
            for i in range(100)
        ]
        store.save_tracked_message(
            server.id,
            {"token": message, "scope": "outgoing", "timestamp": time.time(), "tracked_links": 100},
            links,
        )
        clicks += [f"/{token}/{link.token}" for link in links]
        pairs += [(link.token, link.url) for link in links]
        pixels.append(f"/img/{token}/{message}")
    store.close()
    return clicks, pixels, pairs


# -- the run ----------------------------------------------------------------------------


class Server:
    def __init__(self, cmd: list[str], port: int, *, cpus: str | None = "0", log: Path) -> None:
        self.port = port
        full = (["taskset", "-c", cpus] if cpus else []) + cmd
        with log.open("ab") as err:
            self.proc = subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=err)
        wait_port(port, self.proc)
        time.sleep(0.5)

    def pids(self) -> list[int]:
        return tree(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def measure(
    server: Server,
    url: str,
    paths: Path | None,
    args: argparse.Namespace,
    workdir: Path,
    *,
    close: bool = False,
    wrk_cpus: str = "1",
) -> dict[str, float]:
    wrk(url, args.warmup, paths, close=close, cpus=wrk_cpus, workdir=workdir)
    settle(server)  # the warm-up's events are written before the measured run starts
    pids, db_pids = server.pids(), database_pids()
    before, db_before = cpu_seconds(pids), cpu_seconds(db_pids)
    result = wrk(url, args.duration, paths, close=close, cpus=wrk_cpus, workdir=workdir)
    used = cpu_seconds(server.pids()) - before
    result["cpu_us"] = used / max(result["requests"], 1) * 1e6
    result["db_us"] = (cpu_seconds(db_pids) - db_before) / max(result["requests"], 1) * 1e6
    # Our server writes events after answering: wait until it is idle again
    # and count that CPU too, so no work is left for the next variant and the
    # deferred writing is not free.
    result["drain_s"] = settle(server)
    result["cpu_all_us"] = (cpu_seconds(server.pids()) - before) / max(result["requests"], 1) * 1e6
    return result


def settle(server: Server, idle_share: float = 0.03, timeout: float = 120.0) -> float:
    """Wait until the server's processes use under ``idle_share`` of a core for 1 s.

    Returns the seconds waited (0 for a server with nothing left to do).
    """
    start = time.monotonic()
    last = cpu_seconds(server.pids())
    quiet = 0
    while time.monotonic() - start < timeout:
        time.sleep(0.25)
        now = cpu_seconds(server.pids())
        quiet = quiet + 1 if now - last < idle_share * 0.25 else 0
        last = now
        if quiet >= 4:
            return max(0.0, time.monotonic() - start - 1.0)
    return time.monotonic() - start


# -- the variants -----------------------------------------------------------------------


@dataclass
class Setup:
    """What the variants run against: the work directory, ports and configurations."""

    workdir: Path
    log: Path
    ports: dict[str, int]
    configs: dict[str, Path] = field(default_factory=dict)

    def nginx(self) -> list[str]:
        return ["nginx", "-c", str(self.workdir / "nginx.conf")]

    def baseline(self, kind: str) -> list[str]:
        """This script again, serving a baseline app (see ``serve_baseline``)."""
        me = str(Path(__file__).resolve())
        return [
            sys.executable,
            me,
            "--serve-baseline",
            kind,
            str(self.ports[kind]),
            str(self.workdir),
        ]

    def ours(self, config: str, *extra: str, workers: int = 1) -> list[str]:
        """The fast server as ``fast-server`` runs it, on one of the configurations."""
        return [
            sys.executable, "-m", "postal_tracking_plugin.web",
            "-c", str(self.configs[config]), "--workers", str(workers), *extra,
        ]  # fmt: skip


@dataclass(frozen=True)
class Variant:
    """One server under one load: what ``--only`` selects and the report prints.

    ``key`` is what a result is filed under; ``--only`` takes the number before
    any letter, so ``--only 7`` runs 7a and 7b. ``tls`` sends every request on
    a new HTTPS connection (a full handshake each, wrk's ``Connection: close``).
    """

    key: str
    name: str  # in the per-round lines
    column: str  # in the table of medians (40 columns)
    command: Callable[[Setup], list[str]]
    port: str  # the key into Setup.ports the server listens on
    paths: str = "my_paths.txt"  # the request paths wrk picks from at random
    tls: bool = False
    cpus: str = "0"  # where the server is pinned
    wrk_cpus: str = "1"  # where wrk is pinned

    @property
    def number(self) -> int:
        return int(self.key.rstrip("ab"))


VARIANTS = [
    Variant("1", "nginx return 307", "(1) nginx return 307",
            Setup.nginx, port="ngx"),
    Variant("2", "Flask on gevent, dict, 307", "(2) Flask+gevent, dict",
            lambda s: s.baseline("dict"), port="dict"),
    Variant("3", "Flask + SELECT + INSERT (Postal)", "(3) Flask+SELECT+INSERT (Postal)",
            lambda s: s.baseline("postal"), port="postal"),
    Variant("4", "ours: click, SQLite", "(4) ours: click, SQLite",
            lambda s: s.ours("sqlite"), port="sq", paths="sq_paths.txt"),
    Variant("5", "ours: click, MariaDB", "(5) ours: click, MariaDB",
            lambda s: s.ours("mysql"), port="my"),
    Variant("6", "ours: pixel, MariaDB", "(6) ours: pixel, MariaDB",
            lambda s: s.ours("mysql"), port="my", paths="px_paths.txt"),
    Variant("7a", "TLS handshake/conn, ECDSA: nginx", "(7) TLS new conn ECDSA: nginx",
            Setup.nginx, port="ngxs", tls=True),
    Variant("7b", "TLS handshake/conn, ECDSA: ours", "(7) TLS new conn ECDSA: ours",
            lambda s: s.ours("mysql", "--no-tls-resumption"), port="mys", tls=True),
    Variant("8", "ours: click, MariaDB, --workers 2", "(8) ours: click, MariaDB, 2 workers",
            lambda s: s.ours("w2", workers=2), port="w2", cpus="0,1", wrk_cpus="0,1"),
    Variant("9", "ours: click, MariaDB, access log on", "(9) ours: click, MariaDB, access log",
            lambda s: s.ours("log"), port="lg"),
]  # fmt: skip


class OurConfig(NamedTuple):
    """A postal.yml the fast server variants run on (``Setup.ours(name)``)."""

    store: str
    http: str  # the keys into Setup.ports
    https: str
    access_log: str | None = None


CONFIGS = {
    "sqlite": OurConfig("sqlite", "sq", "sqs"),
    "mysql": OurConfig("mysql", "my", "mys"),
    "w2": OurConfig("mysql", "w2", "w2s"),
    "log": OurConfig("mysql", "lg", "lgs", access_log="common"),
}

HOW_TO = """\
variants (--only takes their numbers; 7 runs both halves):
{variants}

The click path (variant 5, a click on the MariaDB store), before and after a change:
  python benchmarks/fast_server.py --only 5
on each tree (say: a clean checkout of main, then your worktree; the server is
`python -m postal_tracking_plugin.web` of the tree the venv installed, so use
each tree's own .venv). Compare 'CPU us/req' (the server's CPU per request,
steadier than req/s on a shared machine). For a quick look:
  python benchmarks/fast_server.py --only 5 --rounds 1 --duration 3 --links 10000

Needs Debian's nginx and wrk (apt-get install -y nginx wrk) and MariaDB on
127.0.0.1:3306 (PTP_MYSQL_* as in the tests).
"""


def select(only: str | None) -> list[Variant]:
    """The variants ``--only`` names, in the list's order (all without it)."""
    if not only:
        return list(VARIANTS)
    wanted = set()
    for part in only.split(","):
        try:
            wanted.add(int(part))
        except ValueError:
            raise SystemExit(f"--only takes variant numbers (1-9), not {part!r}") from None
    unknown = wanted - {v.number for v in VARIANTS}
    if unknown:
        raise SystemExit(f"--only: no variant {sorted(unknown)}; see --help for the list")
    return [v for v in VARIANTS if v.number in wanted]


def main() -> int:
    variants_help = "\n".join(f"  {v.key:3} {v.name}" for v in VARIANTS)
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=HOW_TO.format(variants=variants_help),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are printed (3)")
    parser.add_argument(
        "--duration", type=float, default=10, help="seconds of each measured run (10)"
    )
    parser.add_argument(
        "--warmup", type=float, default=3, help="seconds of the discarded warm-up before it (3)"
    )
    parser.add_argument(
        "--links", type=int, default=100_000, help="links filled into each store (100000)"
    )
    parser.add_argument("--only", help="comma-separated variant numbers to run (default all)")
    args = parser.parse_args()
    plan = select(args.only)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up (servers, database) on kill
    for tool in ("nginx", "wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install -y nginx wrk")

    workdir = Path(tempfile.mkdtemp(prefix="ptp-bench-"))
    (workdir / "rand.lua").write_text(RANDPATH_LUA)
    (workdir / "seq.lua").write_text(SEQPATH_LUA)
    (workdir / "ngx").mkdir()
    make_certificate(workdir)
    database = f"ptp_bench_{secrets.token_hex(3)}"
    token = "benchx"
    print(
        f"work directory {workdir}; filling {args.links:,} links into SQLite and MariaDB ...",
        flush=True,
    )
    keys = {v.port for v in VARIANTS} | {k for c in CONFIGS.values() for k in (c.http, c.https)}
    ports: dict[str, int] = {}
    while len(set(ports.values())) < len(keys):  # free_port picks at random: no two alike
        ports = {k: free_port() for k in sorted(keys)}
    setup = Setup(workdir, workdir / "servers.log", ports)
    for name, c in CONFIGS.items():
        setup.configs[name] = write_config(
            workdir, name, c.store, database, ports[c.http], ports[c.https], access_log=c.access_log
        )
    clicks, pixels, pairs = fill(setup.configs["sqlite"], args.links, token)
    m_clicks, m_pixels, m_pairs = fill(setup.configs["mysql"], args.links, token)
    (workdir / "sq_paths.txt").write_text("\n".join(clicks) + "\n")
    (workdir / "my_paths.txt").write_text("\n".join(m_clicks) + "\n")
    (workdir / "px_paths.txt").write_text("\n".join(m_pixels) + "\n")
    (workdir / "links.tsv").write_text("\n".join(f"{t}\t{u}" for t, u in m_pairs) + "\n")
    (workdir / "mysql_db").write_text(f"{database}-server-1")
    (workdir / "nginx.conf").write_text(
        NGINX_CONF.format(dir=workdir, http=ports["ngx"], https=ports["ngxs"])
    )

    results: dict[str, list[dict[str, float]]] = {v.key: [] for v in plan}
    try:
        for r in range(args.rounds):
            for variant in plan:
                res = run(variant, setup, args)
                results[variant.key].append(res)
                print(
                    f"round {r + 1} ({variant.key}) {variant.name}: {res['rps']:,.0f} req/s, "
                    f"p99 {res['p99']:.1f} ms, "
                    f"{res['cpu_us']:.0f} us CPU/req ({res['cpu_all_us']:.0f} with writing, "
                    f"{res['drain_s']:.1f} s after the run), wrk {res['wrk_us']:.0f} us CPU/req, "
                    f"MariaDB {res['db_us']:.0f} us CPU/req, non-3xx {res['non3xx']}, "
                    f"errors {res['errors']}",
                    flush=True,
                )
        rss = memory_after_all_links(setup, args)
    finally:
        drop_mysql_databases(database)
    report(results, rss, args)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def run(variant: Variant, setup: Setup, args: argparse.Namespace) -> dict[str, float]:
    """Start the variant's server, measure it under wrk, stop it."""
    port = setup.ports[variant.port]
    server = Server(variant.command(setup), port, cpus=variant.cpus, log=setup.log)
    try:
        url = f"{'https' if variant.tls else 'http'}://127.0.0.1:{port}"
        paths = setup.workdir / variant.paths
        return measure(
            server, url, paths, args, setup.workdir, close=variant.tls, wrk_cpus=variant.wrk_cpus
        )
    finally:
        server.stop()


def memory_after_all_links(setup: Setup, args: argparse.Namespace) -> list[float]:
    """Click every link once (sequential paths), then read each worker's resident memory."""
    workdir, cfg, port = setup.workdir, setup.configs["mysql"], setup.ports["my"]
    server = Server(setup.ours("mysql"), port, log=setup.log)
    try:
        count = args.links
        cmd = [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            "-c1",
            "-d600s",
            "-s",
            str(workdir / "seq.lua"),
            f"http://127.0.0.1:{port}",
            "--",
            str(workdir / "my_paths.txt"),
        ]
        from postal_tracking_plugin.config import load_config
        from postal_tracking_plugin.store import open_store

        store = open_store(load_config(cfg))
        with store.messages(1, readonly=True) as db:
            start = db.one("SELECT COALESCE(MAX(id), 0) AS n FROM clicks")["n"]
        # one connection walks the list in order; stop once every link has been clicked here
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            time.sleep(2)
            with store.messages(1, readonly=True) as db:
                done = db.one(
                    "SELECT COUNT(DISTINCT link_id) AS n FROM clicks WHERE id > %s", (start,)
                )["n"]
            if done >= count:
                break
        proc.send_signal(signal.SIGINT)
        proc.wait()
        store.close()
        return [rss_mb(pid) for pid in server.pids()]
    finally:
        server.stop()


def report(
    results: dict[str, list[dict[str, float]]], rss: list[float], args: argparse.Namespace
) -> None:
    names = {v.key: v.column for v in VARIANTS}
    med: dict[str, dict[str, float]] = {}
    print(
        f"\nmedians of {args.rounds} round(s), {args.duration:g} s each, 64 connections, "
        f"server on CPU 0, wrk on CPU 1 ((8): both on 0-1); MariaDB unpinned\n"
    )
    print(
        f"{'variant':40} {'req/s':>10} {'p99 ms':>8} {'CPU us/req':>11} {'+writing':>9} "
        f"{'after s':>8} {'wrk us':>7} {'db us':>6} {'non-3xx':>8} {'errors':>7}"
    )
    for key, runs in results.items():
        if not runs:
            continue
        m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        med[key] = m
        print(
            f"{names[key]:40} {m['rps']:>10,.0f} {m['p99']:>8.1f} {m['cpu_us']:>11.0f} "
            f"{m['cpu_all_us']:>9.0f} {m['drain_s']:>8.1f} {m['wrk_us']:>7.0f} {m['db_us']:>6.0f} {m['non3xx']:>8.0f} {m['errors']:>7.0f}"
        )
    print(
        "\nCPU us/req: the server's CPU during the run; +writing: including the events it"
        "\nwrote after the run ended ('after s' seconds until it was idle again); wrk us: the"
        "\nload generator's CPU per request; db us: MariaDB's, during the run (any variant's"
        "\nqueries, and whatever else was using it). Where wrk's core is the limit, req/s measures wrk:"
        "\nwith TLS it also spins while it waits for a handshake (it polls a connecting socket"
        "\nfor writability), so its CPU per connection grows with the server's handshake latency."
    )
    print()

    def ratio(a: str, b: str, label: str, goal: str) -> None:
        if a in med and b in med:
            print(f"{label:44} {med[a]['rps'] / med[b]['rps']:6.2f}x   (goal {goal})")

    ratio("5", "2", "(5) ours MariaDB / (2) Flask dict", ">= 1.0")
    ratio("5", "3", "(5) ours MariaDB / (3) Postal's design", ">= 3.0")
    ratio("4", "2", "(4) ours SQLite / (2) Flask dict", "")
    ratio("6", "2", "(6) pixel / (2) Flask dict", ">= 1.0")
    ratio("6", "3", "(6) pixel / (3) Postal's design", ">= 3.0")
    ratio("7b", "7a", "(7) TLS handshakes ours / nginx", ">= 0.9")
    if "7a" in med and "7b" in med:
        # wrk needs more CPU per handshake than either server, so its core sets
        # the req/s above; what one core of each server can do is 1 s / its CPU.
        nginx_cap, ours_cap = (1e6 / med[k]["cpu_us"] for k in ("7a", "7b"))
        print(
            f"{'(7) by CPU: nginx us / ours us per handshake':44} "
            f"{med['7a']['cpu_us']:.0f} / {med['7b']['cpu_us']:.0f}"
        )
        print(
            f"{'(7) per core (1 s / CPU): ours / nginx':44} {ours_cap / nginx_cap:6.2f}x   "
            f"({ours_cap:,.0f} / {nginx_cap:,.0f} handshakes/s; wrk's core: "
            f"{1e6 / med['7b']['wrk_us']:,.0f} / {1e6 / med['7a']['wrk_us']:,.0f})"
        )
    ratio("8", "5", "(8) two workers / (5) one", ">= 1.7")
    if "5" in med and "8" in med:
        # In (8) wrk and MariaDB share the two cores with the workers, so req/s
        # cannot double; the CPU per request says whether a worker got slower.
        print(
            f"{'(8) by CPU: us per request, one / two workers':44} "
            f"{med['5']['cpu_us']:.0f} / {med['8']['cpu_us']:.0f} (wrk {med['8']['wrk_us']:.0f} us/req "
            f"on the same cores)"
        )
        # The most two cores can serve when every request also costs wrk's and
        # MariaDB's CPU on them: 2 s of CPU a second over the three per request.
        per_request = med["8"]["cpu_us"] + med["8"]["wrk_us"] + med["8"]["db_us"]
        print(
            f"{'(8) ceiling of this machine for that ratio':44} "
            f"{2e6 / per_request / med['5']['rps']:6.2f}x   (the run used "
            f"{per_request * med['8']['rps'] / 1e6:.2f} of 2 cores: workers, wrk, MariaDB)"
        )
    if "5" in med and "9" in med:
        print(
            f"{'(9) access log (common, to a file) costs':44} "
            f"{med['9']['cpu_us'] - med['5']['cpu_us']:+.0f} us CPU per request"
        )
    ratio("1", "5", "(1) nginx / (5) ours", "the machine's ceiling")
    print(
        f"\nresident memory per worker after {args.links:,} distinct links clicked: "
        + ", ".join(f"{x:.1f} MB" for x in rss)
        + " (goal <= 100 MB)"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-baseline":
        serve_baseline(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
    else:
        sys.exit(main())
