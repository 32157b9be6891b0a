"""What to track in one message (:class:`TrackingPlan`) and the running tally (:class:`Tracker`).

The plan is plain data the caller builds from the store (see
:func:`postal_tracking_plugin.rewrite.plan_for`); the tracker hands out click
URLs and the pixel while the HTML and text rewriters walk the message, and
collects the links to store. Neither does any I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ..store import Link
from ..store import random_token
from ._urls import Exclusions

#: The open pixel; ``{src}`` is its URL. As inert as the web allows (the browser
#: tests in tests/test_rewrite_browser.py compare screenshots with and without it):
#: a bare ``<img>``, not Postal's ``<p class='ampimg'>`` wrapper, so ``p:first-of-type``,
#: ``p:last-of-type`` and ``p {display: block !important}`` never meet it and no
#: block box or clone of an open link comes with it; inline ``!important`` hiding,
#: which no author rule overrides (an inline important declaration beats any
#: stylesheet's); ``visibility:hidden`` (Postal wrote ``none``, which is not CSS);
#: ``mso-hide:all`` for Outlook's Word engine, which ignores ``display:none``; and
#: 1x1 with no height for clients that honour none of these.
PIXEL_HTML = (
    "<img src='{src}' alt='' width='1' height='1' border='0' style='display:none!important;"
    "visibility:hidden!important;mso-hide:all;width:1px;height:1px;max-height:0;"
    "overflow:hidden;margin:0;padding:0;border:0'>"
)

DEFAULT_MAX_LINKS = 1000


@dataclass(frozen=True)
class TrackingPlan:
    """Where tracked links point and which halves of tracking are on.

    :param host: the tracking domain's full name, ``click.example.com``.
    :param scheme: ``https`` when the tracking domain has SSL on and an active
        certificate, else ``http`` (Postal's rule).
    :param server_token: the server's 6-letter token, the first path segment.
    :param excluded_hosts: link hosts never tracked (``*.example.com`` allowed).
    :param pixel_position: ``bottom`` (before ``</body>``, as Postal) or ``top``
        (right after ``<body>``, which survives Gmail's clipping).
    """

    host: str
    scheme: Literal["http", "https"]
    server_token: str
    track_clicks: bool = True
    track_loads: bool = True
    excluded_hosts: tuple[str, ...] = ()
    pixel_position: Literal["bottom", "top"] = "bottom"

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}/"

    @functools.cached_property
    def _parts(self) -> _PlanParts:
        """What every tracker of this plan derives from it, kept on the plan."""
        try:
            return _plan_parts(self)
        except TypeError:  # a plan built with a list of excluded hosts: not hashable
            return _plan_parts.__wrapped__(self)


# The click URL prefix, the tracking host, the excluded hosts (exact names and
# ``.suffix`` endings, as Exclusions reads them), the pixel container up to the
# message token and after it.
_PlanParts = tuple[str, str, frozenset[str], tuple[str, ...], str, str]
_PIXEL_HEAD, _PIXEL_TAIL = PIXEL_HTML.split("{src}")


@functools.lru_cache(maxsize=256)
def _plan_parts(plan: TrackingPlan) -> _PlanParts:
    """The parts of ``plan`` (equal plans, made per message, share them)."""
    excluded = Exclusions(plan.excluded_hosts)
    return (
        f"{plan.base}{plan.server_token}/",
        plan.host.lower().rstrip("."),
        excluded.exact,
        excluded.suffixes,
        f"{_PIXEL_HEAD}{plan.base}img/{plan.server_token}/",
        _PIXEL_TAIL,
    )


class Tracker:
    """Per-message state: links handed out, the pixel, the link limit."""

    def __init__(
        self,
        plan: TrackingPlan | None,
        *,
        new_token: Callable[[], str] = random_token,
        max_links: int = DEFAULT_MAX_LINKS,
    ) -> None:
        self.plan = plan
        self.clicks = plan is not None and plan.track_clicks
        self.loads = plan is not None and plan.track_loads
        self.links: list[Link] = []
        self.warnings: list[str] = []
        self.images = 0
        self.message_token: str | None = new_token() if plan is not None else None
        self._new_token = new_token
        self._max_links = max_links
        self._limited = False
        if plan is not None:
            parts = plan._parts  # the plan's own cache
            self._prefix, self._own_host, self._exact, self._suffixes = parts[:4]
            self._pixel_head, self._pixel_tail = parts[4:]

    def click_url(self, url: str, host: str) -> str | None:
        """The click URL that replaces ``url``, or None to leave it alone."""
        if host == self._own_host or host in self._exact:
            return None
        if self._suffixes and host.endswith(self._suffixes):
            return None
        if len(self.links) >= self._max_links:
            if not self._limited:
                self._limited = True
                self.warnings.append(
                    f"more than {self._max_links} links: the rest are left untracked"
                )
            return None
        token = self._new_token()
        self.links.append(Link(token, url))
        return self._prefix + token

    def take_pixel(self) -> str | None:
        """The pixel container, once per message (the first HTML part asks first)."""
        if not self.loads or self.images:
            return None
        assert self.plan is not None and self.message_token is not None
        self.images = 1
        return self._pixel_head + self.message_token + self._pixel_tail
