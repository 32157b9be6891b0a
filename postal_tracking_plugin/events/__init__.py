"""Click and open events: durable recording, bot flags, webhooks.

The fast server hands each counted click and open to an :class:`EventRecorder`,
which appends it to a local spool before the response goes out and writes it
to the store in batches; see the README's "Events, webhooks and bot flags" and
"Durability" sections, docs/events.md and docs/privacy.md.
"""

from .._recorded_event import HookEvent as HookEvent
from ._bots import Flagger as Flagger
from ._bots import Rules as Rules
from ._bots import is_bot_reason as is_bot_reason
from ._privacy import anonymize_ip as anonymize_ip
from ._privacy import forget as forget
from ._privacy import prune as prune
from ._recorder import EVENT_KEYS as EVENT_KEYS
from ._recorder import EventRecorder as EventRecorder
from ._recorder import TrackingHook as TrackingHook
from ._spool import spool_backlog as spool_backlog

__all__ = [
    "EVENT_KEYS",
    "EventRecorder",
    "HookEvent",
    "Flagger",
    "Rules",
    "TrackingHook",
    "anonymize_ip",
    "forget",
    "is_bot_reason",
    "prune",
    "spool_backlog",
]
