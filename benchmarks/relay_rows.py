"""Issue 18's rows as scenarios: the relay between a private Postfix and real clients.

Prints, for each row, what the client was answered and how many copies Postfix
delivered into its Maildir. Not a test: it shows whatever the relay importable
as ``postal_tracking_plugin`` does, so the same script measures the code before
a change (put an older tree first on PYTHONPATH) and after it. Needs root and
Debian's postfix and swaks (see tests/postfix_instance.py; nothing leaves
127.0.0.1).

    sudo .venv/bin/python benchmarks/relay_rows.py
"""

from __future__ import annotations

import dataclasses
import email.utils
import shutil
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import trustme
import yaml
from postfix_instance import PostfixInstance

from _support import free_port
from postal_tracking_plugin.config import RelayConfig
from postal_tracking_plugin.config import load_config
from postal_tracking_plugin.hooks import get_plugin_manager
from postal_tracking_plugin.hooks.smtp_relay import SmtpRelay
from postal_tracking_plugin.store import open_store

FIELDS = {f.name for f in dataclasses.fields(RelayConfig)}


def message(mid: str, body: bytes = b"Hello.\r\n", date: str | None = None) -> bytes:
    date = date or email.utils.formatdate()
    return (
        f"From: news@example.com\r\nTo: list@example.net\r\nSubject: rows\r\nDate: {date}\r\n"
        f"Message-ID: <{mid}>\r\n\r\n"
    ).encode() + body


def answer(fn: Any) -> str:
    try:
        refused = fn()
    except smtplib.SMTPRecipientsRefused as exc:
        return "all refused " + str({r: c for r, (c, _) in exc.recipients.items()})
    except smtplib.SMTPResponseException as exc:
        return f"{exc.smtp_code} {exc.smtp_error.decode()[:90]}"
    except (OSError, smtplib.SMTPException) as exc:
        return f"{type(exc).__name__}: {exc}"[:100]
    return "250" + (
        f" (refused at RCPT: { ({r: c for r, (c, _) in refused.items()}) })" if refused else ""
    )


class Bench:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="relay-rows-"))
        relay_port = free_port()
        cert = trustme.CA().issue_cert("upstream.test")
        tls = (self.folder / "cert.pem", self.folder / "key.pem")
        cert.cert_chain_pems[0].write_to_path(str(tls[0]))
        cert.private_key_pem.write_to_path(str(tls[1]))
        self.postfix = PostfixInstance(
            upstream_port=free_port(),
            strict_helo_port=free_port(),
            client_port=free_port(),
            relay_port=relay_port,
            tls_files=tls,
        )
        self.relay_port = relay_port
        (self.folder / "postal.yml").write_text(
            yaml.safe_dump(
                {
                    "fast_server": {"enabled": True, "bind_address": "127.0.0.1"},
                    "tracking": {"data_dir": str(self.folder / "data")},
                }
            )
        )
        self.config = load_config(self.folder / "postal.yml")
        self.store = open_store(self.config)
        self.store.create_schema()
        server = self.store.add_server("Main")
        self.store.add_track_domain(server, "click.example.com", ssl_enabled=False, dns_status="OK")

    def relay(self, **settings: Any) -> SmtpRelay:
        wanted = {
            "server": "Main",
            "listen": "127.0.0.1:0",
            "upstream": f"127.0.0.1:{self.postfix.upstream_port}",
            "helo_name": "relay.example.com",
            **settings,
        }
        relay = RelayConfig(**{k: v for k, v in wanted.items() if k in FIELDS})
        config = dataclasses.replace(
            self.config, tracking=dataclasses.replace(self.config.tracking, relay=relay)
        )
        r = SmtpRelay(config, self.store, get_plugin_manager())
        r.start()
        return r

    def cli_relay(self, **settings: Any) -> tuple[subprocess.Popen[str], int]:
        """``postal-tracking smtp-relay`` in its own process (to measure its memory)."""
        port = free_port()
        relay = {
            "server": "Main",
            "listen": f"127.0.0.1:{port}",
            "upstream": f"127.0.0.1:{self.postfix.upstream_port}",
            **settings,
        }
        path = self.folder / "cli.yml"
        path.write_text(
            yaml.safe_dump(
                {
                    "fast_server": {"enabled": True, "bind_address": "127.0.0.1"},
                    "tracking": {
                        "data_dir": str(self.folder / "data"),
                        "relay": {k: v for k, v in relay.items() if k in FIELDS},
                    },
                }
            )
        )
        exe = shutil.which("postal-tracking", path=str(Path(sys.executable).parent))
        proc = subprocess.Popen(
            [exe or "postal-tracking", "-c", str(path), "smtp-relay"],
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.folder,
        )
        assert proc.stderr is not None
        line = proc.stderr.readline()
        if "listening" not in line:
            raise SystemExit(f"the relay did not start: {line}")
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        return proc, port

    def copies(self, mid: str, settle: float = 1.0) -> dict[str, int]:
        time.sleep(settle)
        out: dict[str, int] = {}
        for m in self.postfix.messages():
            if f"<{mid}>".encode() in m:
                to = next(line for line in m.splitlines() if line.startswith(b"Delivered-To:"))
                key = to.split(b":", 1)[1].strip().decode()
                out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items()))


def row(n: str, scenario: str, answers: list[str], copies: Any) -> None:
    print(f"row {n}: {scenario}")
    for a in answers:
        print(f"    client: {a}")
    print(f"    copies delivered: {copies}")
    sys.stdout.flush()


def main() -> None:
    b = Bench()
    b.postfix.start()
    try:
        r = b.relay()
        addr = r.address

        def send(
            rcpts: list[str],
            data: bytes,
            sender: str = "news@example.com",
            options: tuple[str, ...] = (),
            to: tuple[str, int] = addr,
        ) -> str:
            def go() -> Any:
                with smtplib.SMTP(*to, timeout=700) as c:
                    return c.sendmail(sender, rcpts, data, list(options))

            return answer(go)

        rc = ["ann@example.net", "jörg@example.net", "cy@example.org"]
        answers = [send(rc, message("row1@rows"), options=("SMTPUTF8",)) for _ in range(3)]
        row(
            "1",
            "SMTPUTF8 recipient jörg, upstream without SMTPUTF8; 3 tries",
            answers,
            b.copies("row1@rows"),
        )

        slow = b.relay(upstream_timeout=1.0)
        answers = [
            send(
                ["ann@example.net"],
                message("row2@rows"),
                sender="slow@example.com",
                to=slow.address,
            )
            for _ in range(3)
        ]
        row(
            "2",
            "reply to the final dot after 2 s, upstream_timeout 1 s; 3 tries",
            answers,
            b.copies("row2@rows", 3),
        )
        slow.stop()

        rcpts = ["ann@example.net", "bob@example.net", "cy@example.org"]
        answers = [send(rcpts, message("row3a@rows"))]
        row("3", "smtplib to ann, bob (upstream: 550 5.7.1), cy", answers, b.copies("row3a@rows"))
        relay_mta = b.relay(listen=f"127.0.0.1:{b.relay_port}")
        done = subprocess.run(
            [
                "swaks",
                "--server",
                f"127.0.0.1:{b.postfix.client_port}",
                "--from",
                "news@example.com",
                "--to",
                ",".join(rcpts),
                "--header",
                "Message-ID: <row3@rows>",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        time.sleep(3)
        statuses = [
            line.split("postfix/")[1][:60] + " ... " + line.split("status=")[1][:150]
            for line in b.postfix.log().splitlines()
            if f"relay=127.0.0.1[127.0.0.1]:{b.relay_port}" in line
        ]
        row(
            "3",
            "Postfix as the client (content filter to the relay), swaks to ann, bob, cy",
            [f"swaks exit {done.returncode}", *statuses],
            b.copies("row3@rows"),
        )
        relay_mta.stop()

        long = b"x" * 5000 + b"\r\n"
        bare = b"\n".join(b"bare LF line %d" % i for i in range(100)) + b"\r\n"
        row(
            "4",
            "a 5,000-byte line; a 2 KB bare-LF message",
            [
                send(["ann@example.net"], message("row4a@rows", long)),
                send(["ann@example.net"], message("row4b@rows", bare)),
            ],
            {**b.copies("row4a@rows", 0.5), **{"bare LF": b.copies("row4b@rows")}},
        )

        strict = f"127.0.0.1:{b.postfix.strict_helo_port}"
        default = b.relay(helo_name=None, upstream=strict)
        named = b.relay(upstream=strict)
        row(
            "5",
            "upstream rejects non-FQDN HELO; helo_name unset, then relay.example.com",
            [
                send(["ann@example.net"], message("row5a@rows"), to=default.address),
                send(["ann@example.net"], message("row5b@rows"), to=named.address),
            ],
            {"unset": b.copies("row5a@rows", 0.5), "set": b.copies("row5b@rows")},
        )
        default.stop()
        named.stop()

        outside = b.relay(auth_users={"app": "s3cret"}, allowed_networks=["10.0.0.0/8"])
        answers = []
        with smtplib.SMTP(*outside.address, timeout=30) as c:
            c.ehlo()
            answers.append(
                "outside allowed_networks, right password: "
                + str(c.docmd("AUTH", "PLAIN AGFwcABzM2NyZXQ="))
            )
        inside = b.relay(auth_users={"app": "s3cret"})
        started = time.monotonic()
        replies = []
        try:
            with smtplib.SMTP(*inside.address, timeout=30) as c:
                c.ehlo()
                for _ in range(50):
                    replies.append(c.docmd("AUTH", "PLAIN AGFwcAB3cm9uZw==")[0])
        except smtplib.SMTPServerDisconnected:
            replies.append("disconnected")
        answers.append(
            f"50 wrong passwords in one session: {replies} in {time.monotonic() - started:.1f} s"
        )
        row("6", "AUTH from outside allowed_networks; wrong passwords", answers, "-")
        outside.stop()
        inside.stop()

        old = email.utils.formatdate(time.time() - 60)
        answers = [send(["ann@example.net", "dana@example.net"], message("row7@rows", date=old))]
        answers.append(send(["ann@example.net", "dana@example.net"], message("row7@rows")))
        row(
            "7b",
            "ann and dana (upstream 450 for dana); the retry re-rendered (new Date)",
            answers,
            b.copies("row7@rows"),
        )

        body = (b"z" * 998 + b"\r\n") * 9_000  # 9 MB, under Postfix's 10 MB
        proc, port = b.cli_relay(max_buffered_messages=2)
        try:
            threads = [
                threading.Thread(
                    target=send,
                    args=(["ann@example.net"], message(f"row8-{i}@rows", body)),
                    kwargs={"to": ("127.0.0.1", port)},
                )
                for i in range(10)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak = next(line for line in status.splitlines() if line.startswith("VmHWM"))
        finally:
            proc.terminate()
            proc.wait(60)
        row(
            "8",
            "10 clients at once, 9 MB each (max_buffered_messages 2 where it exists)",
            [f"the relay process's peak RSS: {peak.split(':')[1].strip()}"],
            sum(sum(b.copies(f"row8-{i}@rows", 0).values()) for i in range(10)),
        )

        with smtplib.SMTP(*addr, timeout=30) as c:
            c.ehlo()
            size = c.esmtp_features.get("size")
            c.sendmail("news@example.com", ["ann@example.net"], message("row9@rows"), ["SMTPUTF8"])
        time.sleep(1)
        [got] = [m for m in b.postfix.messages() if b"<row9@rows>" in m]
        received = [line for line in got.split(b"\nReceived:")[1:3]]
        row(
            "9",
            "SIZE advertised (Postfix: 10240000); Received lines of an SMTPUTF8 message",
            [
                f"SIZE {size}",
                *(x[:160].decode(errors="replace").replace("\n", " ") for x in received),
            ],
            "-",
        )
        r.stop()
    finally:
        b.postfix.stop()
        b.store.close()
        shutil.rmtree(b.folder, ignore_errors=True)


if __name__ == "__main__":
    main()
