"""Run certbot as a child process, with all its state under ``<data_dir>/letsencrypt``.

certbot sets up logging, a lock file and signal handlers for its whole
process, so it never runs inside ours (least of all inside the gevent-patched
fast server): every call here is a fresh interpreter running certbot's own
``main``. ``--config-dir``, ``--work-dir`` and ``--logs-dir`` keep it out of
``/etc/letsencrypt`` and ``/var``, so neither root nor a system certbot is
needed. Its manual authenticator calls :mod:`.certbot_hook`, which puts the
HTTP-01 answer into the store, where every fast server can serve it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..config import Config

#: certbot's entry point; it ships no ``__main__`` module.
_MAIN = "import sys; from certbot.main import main; sys.exit(main())"

#: Longest a single certbot run may take (certbot's own order timeout is 90 s).
DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True)
class CertbotDirs:
    """certbot's three directories, all under ``<data_dir>/letsencrypt``."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def live(self, cert_name: str) -> Path:
        return self.config / "live" / cert_name

    def accounts(self, server: str) -> Path:
        """Where certbot keeps accounts for ``server`` (its own layout: host + path)."""
        parsed = urlparse(server)
        return self.config / "accounts" / (parsed.netloc + parsed.path).lstrip("/")


def certbot_dirs(config: Config) -> CertbotDirs:
    return CertbotDirs(config.data_dir / "letsencrypt")


@dataclass(frozen=True)
class CertbotResult:
    returncode: int
    output: str  # stdout and stderr, interleaved as certbot wrote them

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def child_environment(config: Config) -> dict[str, str]:
    """The environment certbot and its hooks run with.

    ``REQUESTS_CA_BUNDLE`` lets certbot trust a private ACME CA
    (``tracking.acme.ca_bundle``), and ``POSTAL_TRACKING_CONFIG`` tells the
    hooks which store to write to.
    """
    env = dict(os.environ)
    if config.tracking.acme.ca_bundle:
        env["REQUESTS_CA_BUNDLE"] = str(config.path(config.tracking.acme.ca_bundle))
    if config.source:
        env["POSTAL_TRACKING_CONFIG"] = str(Path(config.source).resolve())
    return env


def hook_command(config: Config, action: str) -> str:
    """The shell command certbot runs for ``action`` (``auth``, ``cleanup``, ``deploy``).

    The configuration path is written into the command, not only into the
    environment, because certbot saves hooks in its renewal configuration:
    a plain ``certbot renew`` with these directories still reaches the store.
    """
    parts = [sys.executable, "-m", "postal_tracking_plugin.certificates.certbot_hook"]
    if config.source:
        parts += ["-c", str(Path(config.source).resolve())]
    parts.append(action)
    return shlex.join(parts)


def key_arguments(config: Config) -> list[str]:
    """ECDSA P-256 by default; ``tracking.acme.key_type: rsa`` gives RSA 2048."""
    if config.tracking.acme.key_type == "rsa":
        return ["--key-type", "rsa", "--rsa-key-size", "2048"]
    return ["--key-type", "ecdsa", "--elliptic-curve", "secp256r1"]


def run_certbot(
    config: Config, server: str, args: list[str], *, timeout: float = DEFAULT_TIMEOUT
) -> CertbotResult:
    """Run ``certbot ARGS`` against ``server`` in a child process and collect its output."""
    dirs = certbot_dirs(config)
    for path in (dirs.config, dirs.work, dirs.logs):
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    command = [
        sys.executable,
        "-c",
        _MAIN,
        *args,
        "--config-dir",
        str(dirs.config),
        "--work-dir",
        str(dirs.work),
        "--logs-dir",
        str(dirs.logs),
        "--server",
        server,
        "--non-interactive",
        # certbot sleeps up to 8 minutes before renewing when stdin is not a
        # terminal; our own schedule already spreads renewals out.
        "--no-random-sleep-on-renew",
        # One run per domain per attempt: keep a bounded history (certbot keeps 1000).
        "--max-log-backups",
        "100",
    ]
    try:
        proc = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_environment(config),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else exc.output
        return CertbotResult(124, (out or "") + f"\ncertbot did not finish within {timeout:.0f} s")
    except OSError as exc:
        return CertbotResult(127, f"cannot run certbot with {sys.executable}: {exc}")
    return CertbotResult(proc.returncode, proc.stdout or "")
