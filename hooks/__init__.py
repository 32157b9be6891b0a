"""Installed as ``postal_tracking_plugin.hooks``: the pluggy side of the package.

The hook specifications of the send pipeline and of tracking events
(:mod:`.spec`), this package's own implementation of them (:mod:`.tracking`),
the plugin manager hosts use (:func:`get_plugin_manager`) with the call that
runs the send pipeline (:func:`run_send_pipeline`), and host adapters such as
the SMTP sidecar relay (:mod:`.smtp_relay`).

A host mailer, before it signs each message::

    pm = get_plugin_manager()
    data = run_send_pipeline(pm, raw, mail_from=..., rcpt_to=..., server="Main",
                             config=config, store=store)
"""

from ._manager import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
from ._manager import PluginError as PluginError
from ._manager import get_plugin_manager as get_plugin_manager
from ._manager import notify_tracking_event as notify_tracking_event
from ._manager import run_send_pipeline as run_send_pipeline
from .spec import PROJECT_NAME as PROJECT_NAME
from .spec import TrackingEvent as TrackingEvent
from .spec import hookimpl as hookimpl
from .spec import hookspec as hookspec

__all__ = [
    "ENTRY_POINT_GROUP",
    "PROJECT_NAME",
    "PluginError",
    "TrackingEvent",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "notify_tracking_event",
    "run_send_pipeline",
]
