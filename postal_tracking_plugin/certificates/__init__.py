"""Certificates for tracking domains: ACME (Let's Encrypt) through certbot.

certbot always runs as a child process (:mod:`._certbot`), with its state
under ``<data_dir>/letsencrypt``; its hooks (:mod:`.certbot_hook`) put HTTP-01
answers and issued certificates into the store, where every fast server
finds them. :func:`run_scheduled_renewal` is what a long-running server calls
on a schedule.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TypeVar

from ..config import Config
from ._account import Account as Account
from ._account import current_account as current_account
from ._account import register as register
from ._deploy import renew_after as renew_after
from ._errors import AcmeError as AcmeError
from ._errors import LockBusy as LockBusy
from ._errors import NoAccount as NoAccount
from ._errors import NotEligible as NotEligible
from ._issue import Issuer as Issuer
from ._issue import Outcome as Outcome
from ._report import DomainReport as DomainReport
from ._report import certificate_report as certificate_report

log = logging.getLogger(__name__)

#: A scheduled renewal run that takes longer than this is stopped.
SCHEDULED_TIMEOUT = 3600.0


def run_scheduled_renewal(config: Config, *, timeout: float = SCHEDULED_TIMEOUT) -> int | None:
    """Issue and renew what is due, as ``postal-tracking certs renew`` does, in a child process.

    For the fast server's timer: certbot takes over logging, locks and signals
    of the process it runs in, so it must not run inside a gevent server; the
    child (``certs renew``) takes the store's renewal lock, so only one node of
    a cluster renews at a time, and the others find it busy and skip. A node
    where ``register-lets-encrypt`` was never run does nothing.

    Never raises: returns the child's exit status (0 when nothing failed), or
    None when nothing was run or it could not be started; failures are logged.
    """
    try:
        if current_account(config) is None:
            log.debug("certificate renewal skipped: no ACME account registered on this node")
            return None
        command = [sys.executable, "-m", "postal_tracking_plugin.cli"]
        if config.source:
            command += ["-c", str(Path(config.source).resolve())]
        command += ["certs", "renew"]
        returncode, output = _run_child(command, timeout)
        for line in output.splitlines():
            if line.strip():
                (log.warning if returncode else log.info)("certs renew: %s", line)
        return returncode
    except Exception:  # a timer must keep running whatever happens
        log.exception("certificate renewal could not run")
        return None


_T = TypeVar("_T")


def _original(module: str, name: str, current: _T) -> _T:
    """``module.name`` as the standard library has it, even after gevent's monkey-patching.

    ``current`` is that name as this process has it (``os.waitpid``): the
    original has its type.
    """
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is not None and gevent_monkey.is_module_patched(module):
        original: _T = gevent_monkey.get_original(module, name)
        return original
    return current


def _run_child(command: list[str], timeout: float) -> tuple[int, str]:
    """Run ``command``, its output in a temporary file; return (exit status, output).

    ``os.posix_spawn`` and a polling ``waitpid`` work the same in a plain
    process, in a gevent greenlet and in a thread of gevent's thread pool
    (where gevent's own ``subprocess`` cannot watch children). The sleeps are
    whatever ``time.sleep`` is, so a greenlet caller yields while it waits.
    """
    waitpid = _original("os", "waitpid", os.waitpid)
    with tempfile.TemporaryFile() as out, open(os.devnull, "rb") as devnull:
        actions = [
            (os.POSIX_SPAWN_DUP2, devnull.fileno(), 0),
            (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
            (os.POSIX_SPAWN_DUP2, out.fileno(), 2),
        ]
        spawn = _original("os", "posix_spawn", os.posix_spawn)
        pid = spawn(command[0], command, dict(os.environ), file_actions=actions)
        deadline = time.monotonic() + timeout
        while True:
            try:
                done, status = waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else's SIGCHLD handler
                returncode = 0
                break
            if done:
                returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                waitpid(pid, 0)
                returncode = 124
                break
            time.sleep(0.2)
        out.seek(0)
        return returncode, out.read().decode("utf-8", errors="replace")


__all__ = [
    "Account",
    "AcmeError",
    "DomainReport",
    "Issuer",
    "LockBusy",
    "NoAccount",
    "NotEligible",
    "Outcome",
    "certificate_report",
    "current_account",
    "register",
    "renew_after",
    "run_scheduled_renewal",
]
