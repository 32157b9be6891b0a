"""Relay throughput beside Postfix alone: N SMTP clients for S seconds, accepted vs delivered.

Starts a private Postfix on loopback (tests/postfix_instance.py: its own
configuration, queue and Maildir; nothing leaves 127.0.0.1), then runs the
same clients twice in the same run:

1. against Postfix alone (the baseline);
2. against ``postal-tracking smtp-relay`` (the CLI, in its own process) in
   front of that Postfix.

Each client keeps one connection and sends one-recipient messages with a link
(so tracking rewrites each one) and a unique Message-ID. "accepted" counts
the 250 answers to the final dot, "delivered" the files in the Maildir once
Postfix's queue is empty; "doubled" counts Message-IDs delivered more than
once. Needs root and Debian's postfix.

    sudo .venv/bin/python benchmarks/relay_throughput.py --clients 20 --seconds 30
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import yaml
from postfix_instance import PostfixInstance

from _support import free_port
from postal_tracking_plugin.config import load_config
from postal_tracking_plugin.store import open_store

MESSAGE = (
    "From: News <news@example.com>\r\nTo: ann@example.net\r\nSubject: throughput\r\n"
    "Message-ID: <{mid}>\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"
    '\r\n<html><body><p>Read <a href="https://www.example.org/news/{n}">the news</a>.'
    "</p></body></html>\r\n"
)


def clients(port: int, n: int, seconds: float, tag: str) -> tuple[int, int]:
    """(accepted, refused) after ``seconds`` of ``n`` clients sending as fast as answered."""
    accepted = [0] * n
    refused = [0] * n
    stop = time.monotonic() + seconds

    def run(i: int) -> None:
        count = 0
        while time.monotonic() < stop:
            try:
                with smtplib.SMTP(
                    "127.0.0.1", port, local_hostname="client.example.com", timeout=60
                ) as c:
                    while time.monotonic() < stop:
                        count += 1
                        mid = f"{tag}-{i}-{count}@bench"
                        data = MESSAGE.format(mid=mid, n=count).encode()
                        try:
                            c.sendmail("news@example.com", ["ann@example.net"], data)
                            accepted[i] += 1
                        except smtplib.SMTPResponseException:
                            refused[i] += 1
            except (OSError, smtplib.SMTPException):
                refused[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(accepted), sum(refused)


def drained(postfix: PostfixInstance, tag: str, quiet: float = 3.0) -> tuple[int, int]:
    """(delivered, doubled) for ``tag`` once the Maildir stops growing for ``quiet`` s."""
    last, since = -1, time.monotonic()
    while True:
        now = postfix.delivered_count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > quiet:
            break
        time.sleep(0.2)
    ids: collections.Counter[str] = collections.Counter()
    pattern = re.compile(rb"^Message-ID: <(" + re.escape(tag.encode()) + rb"-[^>]+)>", re.M)
    new = postfix.maildir / "new"
    for path in new.iterdir():
        found = pattern.search(path.read_bytes())
        if found:
            ids[found.group(1).decode()] += 1
    return sum(ids.values()), sum(1 for c in ids.values() if c > 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    postfix = PostfixInstance(upstream_port=free_port())
    relay_port = free_port()
    (folder / "postal.yml").write_text(
        yaml.safe_dump(
            {
                "fast_server": {"enabled": True, "bind_address": "127.0.0.1"},
                "tracking": {
                    "data_dir": str(folder / "data"),
                    "relay": {
                        "server": "Main",
                        "listen": f"127.0.0.1:{relay_port}",
                        "upstream": f"127.0.0.1:{postfix.upstream_port}",
                    },
                },
            }
        )
    )
    store = open_store(load_config(folder / "postal.yml"))
    store.create_schema()
    server = store.add_server("Main")
    store.add_track_domain(server, "click.example.com", ssl_enabled=False, dns_status="OK")
    store.close()
    postfix.start()
    relay = None
    try:
        accepted, refused = clients(postfix.upstream_port, args.clients, args.seconds, "alone")
        delivered, doubled = drained(postfix, "alone")
        print(
            f"Postfix alone:      {args.clients} clients, {args.seconds:g} s: "
            f"{accepted} accepted ({accepted / args.seconds:.0f} msg/s), {refused} refused, "
            f"{delivered} delivered, {doubled} doubled",
            flush=True,
        )

        exe = shutil.which("postal-tracking", path=str(Path(sys.executable).parent))
        relay = subprocess.Popen(
            [exe or "postal-tracking", "-c", str(folder / "postal.yml"), "smtp-relay"],
            stderr=subprocess.PIPE,
            text=True,
            cwd=folder,
            env=os.environ,
        )
        assert relay.stderr is not None
        line = relay.stderr.readline()
        if "listening" not in line:
            raise SystemExit(f"the relay did not start: {line}{relay.stderr.read()}")
        threading.Thread(target=relay.stderr.read, daemon=True).start()
        accepted, refused = clients(relay_port, args.clients, args.seconds, "relayed")
        delivered, doubled = drained(postfix, "relayed")
        print(
            f"through the relay:  {args.clients} clients, {args.seconds:g} s: "
            f"{accepted} accepted ({accepted / args.seconds:.0f} msg/s), {refused} refused, "
            f"{delivered} delivered, {doubled} doubled",
            flush=True,
        )
    finally:
        if relay is not None:
            relay.terminate()
            relay.wait(60)
        postfix.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
