"""The relay between real MTAs: Debian's Postfix as its upstream and as its client, swaks.

One private Postfix for the module (``postfix_instance.py``: its own
configuration, queue and Maildir, 127.0.0.1 high ports, never relays) and one
relay in this process in front of it. Each test marks its messages with its own
Message-ID and counts the copies Postfix delivered into the Maildir. Issue 18's
rows are named in each test's docstring.

Needs root (Postfix's master starts as root) and the ``postfix`` and ``swaks``
packages, which ``.ci/run`` installs; skipped without them, failing under CI.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import smtplib
import subprocess
import time
from collections.abc import Callable
from collections.abc import Iterator
from email import message_from_bytes
from typing import Any

import pytest
import trustme
import yaml
from postfix_instance import POSTFIX
from postfix_instance import PostfixInstance

from _support import free_port
from _support import need
from postal_tracking_plugin.config import Config
from postal_tracking_plugin.config import RelayConfig
from postal_tracking_plugin.config import load_config
from postal_tracking_plugin.hooks import get_plugin_manager
from postal_tracking_plugin.hooks.smtp_relay import SmtpRelay
from postal_tracking_plugin.store import Store
from postal_tracking_plugin.store import open_store

SWAKS = shutil.which("swaks")


@pytest.fixture(scope="module")
def postfix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostfixInstance]:
    need(os.path.exists(POSTFIX), "Debian's postfix package is not installed (see .ci/run)")
    need(os.geteuid() == 0, "a private Postfix instance needs root to start")
    need(SWAKS is not None, "swaks is not installed (see .ci/run)")
    folder = tmp_path_factory.mktemp("postfix-tls")
    authority = trustme.CA()
    cert = authority.issue_cert("upstream.test")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    instance = PostfixInstance(
        upstream_port=free_port(),
        strict_helo_port=free_port(),
        client_port=free_port(),
        relay_port=free_port(),
        tls_files=(cert_file, key_file),
    )
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Config, Store]]:
    folder = tmp_path_factory.mktemp("relay-postfix")
    path = folder / "postal.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "fast_server": {"enabled": True, "bind_address": "127.0.0.1"},
                "tracking": {"data_dir": str(folder / "data")},
            }
        )
    )
    config = load_config(path)
    store = open_store(config)
    store.create_schema()
    server = store.add_server("Main")
    store.add_track_domain(server, "click.example.com", ssl_enabled=False, dns_status="OK")
    yield config, store
    store.close()


def make_relay(config: Config, store: Store, postfix: PostfixInstance, **relay: Any) -> SmtpRelay:
    settings = RelayConfig(
        **{
            "server": "Main",
            "listen": "127.0.0.1:0",
            "upstream": f"127.0.0.1:{postfix.upstream_port}",
            "helo_name": "relay.example.com",
            "upstream_timeout": 10.0,
            **relay,
        }
    )
    config = dataclasses.replace(
        config, tracking=dataclasses.replace(config.tracking, relay=settings)
    )
    r = SmtpRelay(config, store, get_plugin_manager())
    r.start()
    return r


@pytest.fixture(scope="module")
def relay(setting: tuple[Config, Store], postfix: PostfixInstance) -> Iterator[SmtpRelay]:
    """The relay Postfix's content filter sends to (its port fixed in master.cf)."""
    config, store = setting
    r = make_relay(config, store, postfix, listen=f"127.0.0.1:{postfix.relay_port}")
    yield r
    r.stop()


@pytest.fixture
def another_relay(
    setting: tuple[Config, Store], postfix: PostfixInstance
) -> Iterator[Callable[..., SmtpRelay]]:
    started: list[SmtpRelay] = []

    def start(**relay: Any) -> SmtpRelay:
        config, store = setting
        started.append(make_relay(config, store, postfix, **relay))
        return started[-1]

    yield start
    for r in started:
        r.stop()


def message(
    message_id: str, body: bytes = b"Hello.\r\n", sender: str = "news@example.com"
) -> bytes:
    return (
        f"From: {sender}\r\nTo: list@example.net\r\nSubject: relay test\r\n"
        f"Message-ID: <{message_id}>\r\n\r\n"
    ).encode() + body


def copies(postfix: PostfixInstance, message_id: str, expected: int) -> list[bytes]:
    """The copies Postfix delivered: waits for ``expected``, then a moment for any extra."""
    marker = f"<{message_id}>".encode()
    found = postfix.wait_for(marker, expected)
    time.sleep(0.3)
    return postfix.wait_for(marker, len(found) + 1, timeout=0)


def delivered_to(data: bytes) -> bytes:
    return next(line for line in data.splitlines() if line.startswith(b"Delivered-To:"))


def test_row1_smtputf8_recipient_gets_553_and_retries_never_double_the_others(
    relay: SmtpRelay, postfix: PostfixInstance
) -> None:
    """Row 1: before, 451 on every try and 1, 2, 3 copies for those already relayed."""
    rcpts = ["ann@example.net", "jörg@example.net", "cy@example.org"]
    for _ in range(3):
        with smtplib.SMTP(*relay.address, timeout=30) as client:
            refused = client.sendmail("news@example.com", rcpts, message("row1@test"), ["SMTPUTF8"])
        code, text = refused["jörg@example.net"]
        assert (code, text[:6]) == (553, b"5.6.7 ")
    got = copies(postfix, "row1@test", 2)
    assert sorted(delivered_to(m) for m in got) == [
        b"Delivered-To: ann@example.net",
        b"Delivered-To: cy@example.org",
    ]


def test_row2_a_slow_reply_to_the_final_dot_is_waited_for(
    another_relay: Callable[..., SmtpRelay], postfix: PostfixInstance
) -> None:
    """Row 2: Postfix answers the final dot after 2 s; upstream_timeout is 1 s."""
    r = another_relay(upstream_timeout=1.0)
    with smtplib.SMTP(*r.address, timeout=30) as client:
        client.sendmail("slow@example.com", ["ann@example.net"], message("row2@test"))
    assert len(copies(postfix, "row2@test", 1)) == 1


def test_row2_no_reply_within_the_data_done_timeout_is_deferred_as_postfix_does(
    another_relay: Callable[..., SmtpRelay], postfix: PostfixInstance
) -> None:
    """The client is told it may have been delivered; Postfix did queue it."""
    r = another_relay(upstream_timeout=1.0, upstream_data_done_timeout=1.0)
    with (
        smtplib.SMTP(*r.address, timeout=30) as client,
        pytest.raises(smtplib.SMTPDataError) as info,
    ):
        client.sendmail("slow@example.com", ["ann@example.net"], message("row2b@test"))
    assert info.value.smtp_code == 451
    assert b"it may have been delivered" in info.value.smtp_error
    assert len(copies(postfix, "row2b@test", 1)) == 1


def test_row3_postfix_as_the_client_bounces_only_the_refused_recipient(
    relay: SmtpRelay, postfix: PostfixInstance
) -> None:
    """Row 3: before, 554 5.0.0 after DATA and Postfix bounced all three."""
    assert SWAKS is not None
    done = subprocess.run(
        [
            SWAKS,
            "--server",
            f"127.0.0.1:{postfix.client_port}",
            "--from",
            "news@example.com",
            "--to",
            "ann@example.net,bob@example.net,cy@example.org",
            "--header",
            "Message-ID: <row3@test>",
            "--body",
            "three recipients",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout
    got = copies(postfix, "row3@test", 2)
    assert sorted(delivered_to(m) for m in got) == [
        b"Delivered-To: ann@example.net",
        b"Delivered-To: cy@example.org",
    ]
    log = postfix.wait_log("to=<bob@example.net>, relay=127.0.0.1")
    [bob] = [line for line in log.splitlines() if "to=<bob@example.net>, relay=127.0.0.1" in line]
    assert "status=bounced" in bob
    assert "said: 550 5.7.1 <bob@example.net>: Recipient address rejected: Bob refuses" in bob
    assert "(in reply to RCPT TO command)" in bob
    sent = [
        line
        for line in log.splitlines()
        if "relay=127.0.0.1[127.0.0.1]" in line and "status=sent" in line
    ]
    assert {line.split("to=<")[1].split(">")[0] for line in sent} >= {
        "ann@example.net",
        "cy@example.org",
    }


def test_row4_long_lines_and_bare_lf_reach_postfix(
    relay: SmtpRelay, postfix: PostfixInstance
) -> None:
    """Row 4: before, 500 Line too long for a 5,000-byte line or a bare-LF message over 1 KB."""
    long_line = b"y" * 5000
    body = long_line + b"\n" + b"\n".join(b"bare LF line %d" % i for i in range(100)) + b"\r\n"
    with smtplib.SMTP(*relay.address, timeout=30) as client:
        client.sendmail("news@example.com", ["ann@example.net"], message("row4@test", body))
    [got] = copies(postfix, "row4@test", 1)
    assert long_line in got
    assert b"bare LF line 99" in got


def test_row5_helo_name_is_what_postfix_sees(
    relay: SmtpRelay, another_relay: Callable[..., SmtpRelay], postfix: PostfixInstance
) -> None:
    """Row 5: Postfix with reject_non_fqdn_helo_hostname refused the host name "vm"."""
    strict = f"127.0.0.1:{postfix.strict_helo_port}"
    fqdn = another_relay(upstream=strict)
    with smtplib.SMTP(*fqdn.address, timeout=30) as client:
        client.sendmail("news@example.com", ["ann@example.net"], message("row5@test"))
    [got] = copies(postfix, "row5@test", 1)
    assert b"from relay.example.com (localhost [127.0.0.1])" in got
    bare = another_relay(upstream=strict, helo_name="relay")
    with smtplib.SMTP(*bare.address, timeout=30) as client:
        client.ehlo()
        client.mail("news@example.com")
        code, text = client.rcpt("ann@example.net")
    assert (code, text) == (
        504,
        b"5.5.2 <relay>: Helo command rejected: need fully-qualified hostname",
    )


def test_row6_auth_with_swaks(
    another_relay: Callable[..., SmtpRelay], postfix: PostfixInstance
) -> None:
    """Row 6: a right password relays; a wrong one is refused after its delay."""
    assert SWAKS is not None
    r = another_relay(auth_users={"app": "s3cret"})
    host, port = r.address

    def swaks(password: str, message_id: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                SWAKS,
                "--server",
                f"{host}:{port}",
                "--from",
                "news@example.com",
                "--to",
                "ann@example.net",
                "--auth",
                "PLAIN",
                "--auth-user",
                "app",
                "--auth-password",
                password,
                "--header",
                f"Message-ID: <{message_id}>",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )

    wrong = swaks("wrong", "row6-wrong@test")
    assert wrong.returncode != 0
    assert "535 5.7.8 Authentication credentials invalid" in wrong.stdout
    right = swaks("s3cret", "row6@test")
    assert right.returncode == 0, right.stdout
    [got] = copies(postfix, "row6@test", 1)
    assert b"with ESMTPA" in got  # the relay's Received line


def test_row9_size_and_opportunistic_starttls_from_postfix(
    relay: SmtpRelay, postfix: PostfixInstance
) -> None:
    """Rows 8-9: SIZE was always 32 MiB; upstream_tls none never used the STARTTLS offered."""
    with smtplib.SMTP(*relay.address, timeout=30) as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "10240000"  # Postfix's message_size_limit
        client.sendmail("news@example.com", ["ann@example.net"], message("row9@test"))
    [got] = copies(postfix, "row9@test", 1)
    received = message_from_bytes(got).get_all("Received")[0]  # Postfix's own, on top
    assert "(using TLSv1" in received
    assert "with ESMTPS" in received
