"""Click and open events: durable recording, bot flags, webhooks.

The fast server hands each counted click and open to an :class:`EventRecorder`,
which appends it to a local spool before the response goes out and writes it
to the store in batches; see the README's "Events, webhooks and bot flags" and
"Durability" sections.
"""

from ._bots import Flagger as Flagger
from ._bots import Rules as Rules
from ._bots import is_bot_reason as is_bot_reason
from ._recorder import EVENT_KEYS as EVENT_KEYS
from ._recorder import EventRecorder as EventRecorder
from ._spool import spool_backlog as spool_backlog

__all__ = ["EVENT_KEYS", "EventRecorder", "Flagger", "Rules", "is_bot_reason", "spool_backlog"]
