"""Am I under gevent, and how to run a step without holding its hub.

A leaf module (it imports nothing of this package) shared by the store and the
events: the fast server monkey-patches the process with gevent first thing, the
CLI and the tests do not, and the event writer and webhook queue behave the
same either way through these three functions. Not a scheduler: nothing here
starts greenlets or threads beyond :func:`spawn`'s one.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import ParamSpec
from typing import Protocol
from typing import TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")


class Runner(Protocol):
    """What :func:`spawn` returns, a greenlet or a thread: only ``join`` is used."""

    def join(self, timeout: float | None = None) -> None:
        """Wait until it has finished, at most ``timeout`` seconds."""
        ...


def gevent_patched() -> bool:
    """Whether gevent has monkey-patched this process (the fast server does, first thing)."""
    if "gevent.monkey" not in sys.modules:
        return False
    from gevent import monkey

    return bool(monkey.is_module_patched("socket") or monkey.is_module_patched("threading"))


def cooperate() -> None:
    """Let other greenlets run for a moment, between two steps of a long job.

    Under gevent's monkey-patching ``time.sleep(0)`` yields to the hub; in a
    native thread without a hub (gevent's thread pool, where SQLite writes
    run) it is skipped, since the interpreter switches threads by itself.
    """
    hub_local = sys.modules.get("gevent._hub_local")
    if hub_local is not None and hub_local.get_hub_if_exists() is None:
        return
    time.sleep(0)


def off_hub(func: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """``func(*args, **kwargs)`` in gevent's thread pool when under gevent, else inline.

    For calls that block without a socket to yield on (SQLite): run from a
    greenlet they would stall every request for their duration.
    """
    if gevent_patched():
        import gevent

        return gevent.get_hub().threadpool.apply(func, args, kwargs)
    return func(*args, **kwargs)


def spawn(target: Callable[[], None], name: str) -> Runner:
    """Run ``target`` in a greenlet under gevent, else in a daemon thread; returns it.

    Either has ``join(timeout)``.
    """
    if gevent_patched():
        import gevent

        return gevent.spawn(target)
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
