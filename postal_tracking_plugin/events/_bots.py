"""Bot and privacy-proxy flags: which clicks and opens a person probably did not make.

Flags, never filters: every event is recorded and counted in Postal's
``clicks``/``loads``; the flag goes into our own ``tracking_events`` table, the
webhook payloads and the tracking-event hook, so ``stats`` can show human-only
figures beside all-event ones.

The reasons, checked in this order (the first that applies is kept):

``head-request``
    A ``HEAD`` probe (link checkers do this; browsers do not). Postal does not
    count these at all; we keep them in ``tracking_events`` only.
a network rule (``bot_networks.txt``)
    ``scanner-network``, ``apple-privacy-proxy``, ...
a user-agent rule (``bot_user_agents.txt``)
    ``scanner-user-agent``, ``apple-privacy-proxy``, ``google-image-proxy``, ...
``no-user-agent``
    No ``User-Agent`` header at all.
``too-fast-after-send``
    Within ``tracking.events.too_fast_seconds`` of the message's timestamp:
    gateways scan on delivery, people read later.
``all-links-at-once``
    One address clicked ``all_links_count`` different links of one message
    (or all of them, if it has fewer) within ``all_links_window`` seconds;
    earlier events of the burst are re-flagged too.

Reasons ending in ``-image-proxy`` (Gmail's and Yahoo's proxies fetch the
pixel when the reader opens the message) keep ``bot`` false: the open is real,
only the address and agent are the proxy's.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from .._hub import cooperate
from .._recorded_event import RecordedEvent
from .._recorded_event import known_id
from ..config import Config
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..store import FlagQueries
    from ..store import Row

log = logging.getLogger("postal_tracking_plugin.events")

_Net = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Events classified, and values in an ``IN`` list, between two yields to the hub.
_STEP = 100


def is_bot_reason(reason: str | None) -> bool:
    """Whether ``reason`` means automated (True) or a reader behind a proxy (False)."""
    return bool(reason) and not str(reason).endswith("-image-proxy")


@dataclass(frozen=True)
class Rules:
    """User-agent and network rules, loaded from the bundled and the operator's files."""

    user_agents: tuple[tuple[str, re.Pattern[str]], ...]
    networks: tuple[tuple[_Net, str], ...]
    _ua_cache: dict[str, str | None] = field(default_factory=dict, compare=False, repr=False)
    _ip_cache: dict[str, str | None] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(
        cls, ua_files: Sequence[str | Path] = (), net_files: Sequence[str | Path] = ()
    ) -> Rules:
        """The bundled rules followed by those in ``ua_files`` / ``net_files``.

        :raises ConfigError: a file is missing or holds a bad rule (named with its line).
        """
        ua_texts = [("bot_user_agents.txt", _bundled("bot_user_agents.txt"))]
        ua_texts += [(str(p), _read(p)) for p in ua_files]
        net_texts = [("bot_networks.txt", _bundled("bot_networks.txt"))]
        net_texts += [(str(p), _read(p)) for p in net_files]
        uas: list[tuple[str, re.Pattern[str]]] = []
        for where, text in ua_texts:
            for lineno, reason, rest in _rules(text):
                try:
                    uas.append((reason, re.compile(rest, re.IGNORECASE)))
                except re.error as exc:
                    raise ConfigError(
                        f"{where} line {lineno}: bad regular expression {rest!r} ({exc}); "
                        f"fix or remove the line"
                    ) from None
        nets: list[tuple[_Net, str]] = []
        for where, text in net_texts:
            for lineno, first, rest in _rules(text):
                try:
                    nets.append((ipaddress.ip_network(first, strict=False), rest.split()[0]))
                except ValueError:
                    raise ConfigError(
                        f"{where} line {lineno}: {first!r} is not an address or CIDR; "
                        f"write one network and a reason per line"
                    ) from None
        return cls(tuple(uas), tuple(nets))

    @classmethod
    def from_config(cls, config: Config) -> Rules:
        ev = config.tracking.events
        return cls.load(
            [config.path(p) for p in ev.bot_user_agents_files],
            [config.path(p) for p in ev.bot_networks_files],
        )

    def network_reason(self, ip: str | None) -> str | None:
        if not ip:
            return None
        cache = self._ip_cache
        if ip in cache:
            return cache[ip]
        found = self._network_reason(ip)
        if len(cache) >= 4096:  # a batch's events come from far fewer addresses
            cache.clear()
        cache[ip] = found
        return found

    def _network_reason(self, ip: str) -> str | None:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        value, version = int(address), address.version
        for net_version, first, mask, reason in self._ranges:
            if version == net_version and value & mask == first:
                return reason
        return None

    @functools.cached_property
    def _ranges(self) -> tuple[tuple[int, int, int, str], ...]:
        """The networks as integers: a mask and compare per rule, not ``ipaddress`` objects."""
        return tuple(
            (n.version, int(n.network_address), int(n.netmask), reason)
            for n, reason in self.networks
        )

    def user_agent_reason(self, user_agent: str | None) -> str | None:
        if not user_agent:
            return None
        cache = self._ua_cache
        if user_agent in cache:
            return cache[user_agent]
        found = None
        for reason, pattern in self.user_agents:
            if pattern.search(user_agent):
                found = reason
                break
        if len(cache) >= 4096:  # the same few hundred agents make most traffic
            cache.clear()
        cache[user_agent] = found
        return found

    def classify(self, method: str | None, ip: str | None, user_agent: str | None) -> str | None:
        """The reason from the request alone (method, address, agent), or None."""
        if (method or "GET").upper() == "HEAD":
            return "head-request"
        reason = self.network_reason(ip) or self.user_agent_reason(user_agent)
        if reason:
            return reason
        if not (user_agent or "").strip():
            return "no-user-agent"
        return None


class Flagger:
    """Sets ``bot``/``bot_reason`` on a batch of events, inside the store transaction."""

    def __init__(
        self,
        rules: Rules,
        *,
        too_fast_seconds: float = 5.0,
        all_links_window: float = 3.0,
        all_links_count: int = 3,
    ) -> None:
        self.rules = rules
        self.too_fast_seconds = too_fast_seconds
        self.all_links_window = all_links_window
        self.all_links_count = all_links_count

    @classmethod
    def from_config(cls, config: Config) -> Flagger:
        ev = config.tracking.events
        return cls(
            Rules.from_config(config),
            too_fast_seconds=ev.too_fast_seconds,
            all_links_window=ev.all_links_window,
            all_links_count=ev.all_links_count,
        )

    def __call__(self, db: FlagQueries, events: list[RecordedEvent]) -> None:
        """Flag ``events``; ``db`` is the store's :class:`FlagQueries` on the open transaction."""
        classify = self.rules.classify
        for i, event in enumerate(events):
            if i and not i % _STEP:
                cooperate()
            _set(
                event,
                classify(event.get("method"), event.get("ip_address"), event.get("user_agent")),
            )
        cooperate()
        # ``messages`` rows are read only for the events whose flag depends on them:
        # the unflagged ones (too fast?) and the bursts that could change something.
        messages: dict[int, Row] = {}
        fetched: set[int] = set()
        if self.too_fast_seconds > 0:
            pending = [
                e for e in events if e["bot_reason"] is None and e.get("message_id") is not None
            ]
            _load_messages(db, messages, fetched, [known_id(e["message_id"]) for e in pending])
            for event in pending:
                message = messages.get(event.get("message_id") or -1)
                if message is None or message["timestamp"] is None:
                    continue
                age = float(event["timestamp"]) - float(message["timestamp"])
                if age < self.too_fast_seconds:
                    _set(event, "too-fast-after-send")
            cooperate()
        self._all_links_at_once(db, events, messages, fetched)

    def _need(self, message: Row | None) -> int:
        """Different links that make a burst: ``all_links_count``, or all of a smaller message's."""
        tracked = int(message["tracked_links"] or 0) if message else 0
        return self.all_links_count if tracked < 2 else min(self.all_links_count, tracked)

    def _all_links_at_once(
        self,
        db: FlagQueries,
        events: list[RecordedEvent],
        messages: dict[int, Row],
        fetched: set[int],
    ) -> None:
        clicks = [
            e
            for e in events
            if e["kind"] == "click" and e.get("message_id") is not None and e.get("link_id")
        ]
        if not clicks:
            return
        window = self.all_links_window
        batch: dict[tuple[int, str], list[RecordedEvent]] = {}
        for e in clicks:
            batch.setdefault((known_id(e["message_id"]), e.get("ip_address") or ""), []).append(e)
        earliest = min(float(e["timestamp"]) for e in clicks) - window
        # First a summary per message of what is already recorded: one row a
        # message, not one per (message, address, link). A (message, address)
        # whose burst can change nothing is left out of the detailed query: no
        # unflagged click of this batch and none recorded before, or fewer
        # different links in all than a burst needs.
        summary = {
            int(r["message_id"]): (int(r["links"]), not int(r["min_bot"] or 0))
            for r in db.click_summary(batch, earliest)
        }
        open_keys = []
        for key, mine in batch.items():
            links_before, unflagged_before = summary.get(key[0], (0, False))
            if unflagged_before or not all(e["bot"] for e in mine):
                open_keys.append((key, links_before + len({known_id(e["link_id"]) for e in mine})))
        _load_messages(db, messages, fetched, sorted({key[0] for key, _n in open_keys}))
        wanted = {key for key, most in open_keys if most >= self._need(messages.get(key[0]))}
        if not wanted:
            return
        # One row per (message, address, link) already recorded, with its last
        # time: bounded by the links of a message, however hard one address
        # hammers them (which is what this check is for).
        earlier = db.click_links(wanted, earliest)
        # Items: (time, link id, event of this batch or None, an earlier row unflagged).
        groups: dict[tuple[int, str], list[tuple[float, int, RecordedEvent | None, bool]]] = {}
        for r in earlier:
            key = (int(r["message_id"]), r["ip_address"] or "")
            if key in wanted:
                groups.setdefault(key, []).append(
                    (float(r["last"]), int(r["link_id"] or 0), None, not int(r["min_bot"]))
                )
        for e in clicks:
            key = (known_id(e["message_id"]), e.get("ip_address") or "")
            if key in wanted:
                groups.setdefault(key, []).append(
                    (float(e["timestamp"]), known_id(e["link_id"]), e, False)
                )
        for (message_id, ip), items in groups.items():
            need = self._need(messages.get(message_id))
            items.sort(key=lambda item: item[0])
            flagged = _in_bursts([(t, link) for t, link, _e, _u in items], window, need)
            reflag_from: float | None = None
            reflag_to = 0.0
            for k in flagged:
                ts, _link, event, unflagged = items[k]
                if event is not None:
                    if not event["bot"]:
                        _set(event, "all-links-at-once", force=True)
                elif unflagged:
                    reflag_from = ts if reflag_from is None else min(reflag_from, ts)
                    reflag_to = max(reflag_to, ts)
            if reflag_from is not None:
                db.flag_clicks(message_id, ip, reflag_from - window, reflag_to, "all-links-at-once")


def _in_bursts(items: list[tuple[float, int]], window: float, need: int) -> set[int]:
    """Indexes of ``(time, link)`` items (sorted by time) inside any span of ``window``
    seconds that holds ``need`` different links; one pass with a sliding window."""
    count = len(items)
    links: dict[int, int] = {}
    cover = [0] * (count + 1)
    j = 0
    for i in range(count):
        while j < count and items[j][0] <= items[i][0] + window:
            links[items[j][1]] = links.get(items[j][1], 0) + 1
            j += 1
        if len(links) >= need:
            cover[i] += 1
            cover[j] -= 1
        link = items[i][1]
        links[link] -= 1
        if not links[link]:
            del links[link]
    flagged = set()
    running = 0
    for i in range(count):
        running += cover[i]
        if running > 0:
            flagged.add(i)
    return flagged


def _set(event: RecordedEvent, reason: str | None, *, force: bool = False) -> None:
    if reason is None:
        event.setdefault("bot", False)
        event.setdefault("bot_reason", None)
        return
    if force or not event.get("bot_reason"):
        event["bot_reason"] = reason
        event["bot"] = is_bot_reason(reason)


def _load_messages(
    db: FlagQueries, messages: dict[int, Row], fetched: set[int], ids: Iterable[int]
) -> None:
    """Add the ``messages`` rows (id, timestamp, tracked_links) of ``ids`` not read yet."""
    missing = sorted({m for m in ids if m not in fetched})
    if not missing:
        return
    fetched.update(missing)
    messages.update(db.messages_for_flags(missing))


def _rules(text: str) -> Iterable[tuple[int, str, str]]:
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        first, _, rest = line.partition(" ")
        if "\t" in first:
            first, _, more = first.partition("\t")
            rest = f"{more} {rest}"
        rest = rest.strip()
        if not rest:
            continue
        yield lineno, first, rest


def _bundled(name: str) -> str:
    return resources.files("postal_tracking_plugin").joinpath("data", name).read_text("utf-8")


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read bot rules file {path}: {exc.strerror or exc}; fix the path in "
            f"tracking.events.bot_user_agents_files / bot_networks_files"
        ) from None
