"""A private Postfix on loopback for the relay's tests and benchmark; it never relays.

Debian's ``postfix`` package is installed without a configuration (``.ci/run``
preseeds "No configuration" and the packaged instance is never started). Each
:class:`PostfixInstance` has its own ``config_directory``, queue and data
directory in a fresh folder under /tmp (readable by the ``postfix`` user, which
a pytest ``tmp_path`` is not), listens only on 127.0.0.1 high ports, and
delivers ``example.net`` / ``example.org`` into one Maildir through the
``virtual`` transport; every other destination goes to the ``error`` transport,
so nothing can leave the machine.

Two ``smtpd`` services:

- ``upstream_port``: the relay's upstream. ``bob@example.net`` is refused with
  ``550 5.7.1``, ``dana@example.net`` with ``450 4.2.0``; no SMTPUTF8; SIZE 10,240,000;
  STARTTLS offered when a certificate is given; a message from
  ``slow@example.com`` gets its reply to the final dot after 2 s.
- ``strict_helo_port``: the same, but a HELO name that is not a fully qualified
  domain name is refused (``reject_non_fqdn_helo_hostname``).
- ``client_port`` (when ``relay_port`` is given): Postfix as the relay's client.
  Whatever it accepts goes to the relay as an after-queue content filter
  (``relayout:[127.0.0.1]:relay_port``), as a sending MTA would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
#: The user the virtual transport writes the Maildir as (Debian's "nobody").
MAILDIR_UID = 65534


class PostfixInstance:
    def __init__(
        self,
        *,
        upstream_port: int,
        strict_helo_port: int | None = None,
        client_port: int | None = None,
        relay_port: int | None = None,
        tls_files: tuple[Path, Path] | None = None,
    ) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="relay-postfix-"))
        self.base.chmod(0o755)
        self.upstream_port = upstream_port
        self.strict_helo_port = strict_helo_port
        self.client_port = client_port
        self.relay_port = relay_port
        self.etc = self.base / "etc"
        self.maildir = self.base / "mail" / "box"
        self.log_file = self.base / "maillog"
        for name in ("etc", "queue", "data", "mail"):
            (self.base / name).mkdir()
        shutil.chown(self.base / "data", "postfix")
        os.chown(self.base / "mail", MAILDIR_UID, MAILDIR_UID)
        main = {
            "compatibility_level": "3.6",
            "queue_directory": self.base / "queue",
            "data_directory": self.base / "data",
            "maillog_file": self.log_file,
            "maillog_file_prefixes": self.base,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "upstream.test",
            "mydomain": "test",
            "myorigin": "upstream.test",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "mydestination": "",
            "alias_maps": "",
            "alias_database": "",
            "relay_domains": "",
            "virtual_mailbox_domains": "example.net example.org",
            "virtual_mailbox_base": self.base / "mail",
            "virtual_mailbox_maps": "static:box/",
            "virtual_uid_maps": f"static:{MAILDIR_UID}",
            "virtual_gid_maps": f"static:{MAILDIR_UID}",
            "virtual_minimum_uid": "1",
            # Never relay: anything not for the two local test domains fails here.
            "default_transport": "error:5.7.1 this test instance never relays",
            "relay_transport": "error:5.7.1 this test instance never relays",
            "smtputf8_enable": "no",
            "message_size_limit": "10240000",
            "smtpd_helo_required": "yes",
            "smtpd_restriction_classes": "slowdown",
            "slowdown": "sleep 2, permit",
            "smtpd_recipient_restrictions": (
                "check_recipient_access inline:{{bob@example.net = 550 5.7.1 Bob refuses}"
                " {dana@example.net = 450 4.2.0 Dana is busy}}, "
                "permit_mynetworks, reject"
            ),
            "smtpd_end_of_data_restrictions": (
                "check_sender_access inline:{{slow@example.com = slowdown}}"
            ),
            "smtp_tls_security_level": "none",
            "bounce_queue_lifetime": "0",
            "maximal_queue_lifetime": "0",
        }
        if tls_files:
            cert, key = tls_files
            main.update(
                smtpd_tls_security_level="may",
                smtpd_tls_cert_file=cert,
                smtpd_tls_key_file=key,
                smtpd_tls_received_header="yes",
            )
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        services = [
            f"127.0.0.1:{upstream_port} inet n - n - - smtpd",
        ]
        if strict_helo_port:
            services.append(
                f"127.0.0.1:{strict_helo_port} inet n - n - - smtpd"
                " -o smtpd_helo_restrictions=reject_non_fqdn_helo_hostname"
            )
        if client_port and relay_port:
            services += [
                f"127.0.0.1:{client_port} inet n - n - - smtpd"
                f" -o content_filter=relayout:[127.0.0.1]:{relay_port}"
                " -o smtpd_recipient_restrictions=permit_mynetworks,reject"
                " -o smtpd_end_of_data_restrictions=",
                "relayout unix - - n - - smtp -o smtp_helo_name=client.test",
            ]
        services += [
            # name type private unpriv chroot wakeup maxproc command, as in master.cf(5)
            f"{name} {kind} {private} {unpriv} n {wakeup} {limit} {command}"
            for name, kind, private, unpriv, wakeup, limit, command in (
                ("cleanup", "unix", "n", "-", "-", "0", "cleanup"),
                ("qmgr", "unix", "n", "-", "300", "1", "qmgr"),
                ("rewrite", "unix", "-", "-", "-", "-", "trivial-rewrite"),
                ("bounce", "unix", "-", "-", "-", "0", "bounce"),
                ("defer", "unix", "-", "-", "-", "0", "bounce"),
                ("trace", "unix", "-", "-", "-", "0", "bounce"),
                ("verify", "unix", "-", "-", "-", "1", "verify"),
                ("proxymap", "unix", "-", "-", "-", "-", "proxymap"),
                ("smtp", "unix", "-", "-", "-", "-", "smtp"),
                ("relay", "unix", "-", "-", "-", "-", "smtp"),
                ("error", "unix", "-", "-", "-", "-", "error"),
                ("retry", "unix", "-", "-", "-", "-", "error"),
                ("discard", "unix", "-", "-", "-", "-", "discard"),
                ("virtual", "unix", "-", "n", "-", "-", "virtual"),
                ("anvil", "unix", "-", "-", "-", "1", "anvil"),
                ("tlsmgr", "unix", "-", "-", "1000?", "1", "tlsmgr"),
                ("scache", "unix", "-", "-", "-", "1", "scache"),
                ("postlog", "unix-dgram", "n", "-", "-", "1", "postlogd"),
            )
        ]
        (self.etc / "master.cf").write_text("\n".join(services) + "\n")

    def _postfix(self, command: str) -> None:
        done = subprocess.run(
            [POSTFIX, "-c", str(self.etc), command], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            log = self.log_file.read_text() if self.log_file.exists() else ""
            raise RuntimeError(f"postfix {command} failed: {done.stderr}{log[-2000:]}")

    def start(self) -> None:
        self._postfix("start")

    def stop(self) -> None:
        try:
            self._postfix("stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def messages(self) -> list[bytes]:
        new = self.maildir / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []

    def delivered_count(self) -> int:
        new = self.maildir / "new"
        return sum(1 for _ in new.iterdir()) if new.is_dir() else 0

    def wait_for(self, marker: bytes, count: int, timeout: float = 15.0) -> list[bytes]:
        """Messages containing ``marker``, once there are ``count`` of them (or at timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.messages() if marker in m]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def wait_log(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return log
