"""The plugin manager hosts use, and the send pipeline they call.

A host does three things: :func:`get_plugin_manager` once at start-up,
:func:`run_send_pipeline` for each outgoing message, then signs and sends what
it returns. Plugins come from the entry-point group ``postal.plugins``, where
this package lists its own tracking plugin, so installing the package is
enough to get tracking.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from email.message import Message
from typing import TYPE_CHECKING

import pluggy

from postal_tracking_plugin.errors import PluginError as PluginError

from . import spec

if TYPE_CHECKING:
    from postal_tracking_plugin.config import Config
    from postal_tracking_plugin.store import Server
    from postal_tracking_plugin.store import Store

log = logging.getLogger("postal_tracking_plugin.hooks")

#: The entry-point group plugins register under (``setup.cfg``:
#: ``[options.entry_points] postal.plugins = name = module``).
ENTRY_POINT_GROUP = "postal.plugins"

#: The name this package's own plugin is registered under, by entry point or by hand.
TRACKING_PLUGIN_NAME = "tracking"


def get_plugin_manager(load_entrypoints: bool = True) -> pluggy.PluginManager:
    """A plugin manager with the ``postal`` hook specifications and the installed plugins.

    Loads every plugin under the entry-point group ``postal.plugins``, then
    makes sure this package's tracking plugin is registered (as
    ``tracking``, its entry-point name, so it is never registered twice),
    even when the package runs from a source tree without installed metadata.
    Finally checks that every ``postal_*`` function of every plugin matches a
    hook specification, so a misspelt hook fails here rather than being
    silently never called.

    :param load_entrypoints: false to skip third-party plugins: the manager
        then holds only this package's tracking plugin, and the host registers
        its own with ``pm.register(plugin, name)``.
    :raises PluginError: a plugin failed to import or has a hook that does not
        exist (the message names it).
    """
    pm = pluggy.PluginManager(spec.PROJECT_NAME)
    pm.add_hookspecs(spec)
    if load_entrypoints:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # any plugin's import error lands here
            raise PluginError(
                f"a plugin under the entry-point group {ENTRY_POINT_GROUP} failed to load "
                f"({type(exc).__name__}: {exc}); fix or uninstall it (pip list shows what is "
                f"installed)"
            ) from exc
    if pm.get_plugin(TRACKING_PLUGIN_NAME) is None and not pm.is_blocked(TRACKING_PLUGIN_NAME):
        from . import tracking

        pm.register(tracking, name=TRACKING_PLUGIN_NAME)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"plugin {exc.plugin!r} implements a hook that does not exist ({exc}); the hooks "
            f"are listed in postal_tracking_plugin.hooks.spec"
        ) from exc
    return pm


def run_send_pipeline(
    pm: pluggy.PluginManager,
    message: bytes | Message,
    *,
    mail_from: str,
    rcpt_to: Sequence[str] | str,
    server: Server | str,
    config: Config,
    store: Store,
) -> bytes:
    """Pass one outgoing message through every plugin's ``postal_rewrite_message``.

    Call it before DKIM signing. The implementations run in pluggy's order
    (last registered first; ``tryfirst`` / ``trylast`` move one), each
    receiving what the one before returned, as
    :func:`~postal_tracking_plugin.hooks.spec.postal_rewrite_message`
    describes. Never raises: a plugin that raises or returns something other
    than bytes or None is logged and skipped, and the message carries on as it
    was before that plugin, so nothing is lost.

    The implementations are called one by one (pluggy calls them all with
    the same arguments, which cannot chain), so pluggy's tracing and
    ``add_hookcall_monitoring`` do not see these calls.

    :param message: the message as bytes, or an :class:`email.message.Message`
        (serialised with its own policy).
    :param rcpt_to: one recipient address or several.
    :returns: the bytes to sign and send.
    """
    data = message.as_bytes() if isinstance(message, Message) else bytes(message)
    recipients = [rcpt_to] if isinstance(rcpt_to, str) else list(rcpt_to)
    context: dict[str, object] = {
        "mail_from": mail_from,
        "rcpt_to": recipients,
        "server": server,
        "config": config,
        "store": store,
    }
    hook = pm.hook.postal_rewrite_message
    for impl in reversed(hook.get_hookimpls()):
        if impl.hookwrapper or impl.wrapper:
            log.warning(
                "plugin %r: wrappers of postal_rewrite_message are not supported; skipped",
                impl.plugin_name,
            )
            continue
        kwargs = {name: data if name == "message" else context[name] for name in impl.argnames}
        try:
            result = impl.function(**kwargs)
        except Exception:  # a plugin's bug must not lose the message
            log.exception(
                "plugin %r raised in postal_rewrite_message; the message is sent as it was "
                "before that plugin",
                impl.plugin_name,
            )
            continue
        if result is None:
            continue
        if isinstance(result, bytes | bytearray | memoryview):
            data = bytes(result)
        else:
            log.error(
                "plugin %r returned %s from postal_rewrite_message, not bytes or None; ignored",
                impl.plugin_name,
                type(result).__name__,
            )
    return data


def notify_tracking_event(pm: pluggy.PluginManager, event: spec.TrackingEvent) -> None:
    """Give one recorded click or open to every plugin's ``postal_tracking_event``.

    What the fast server's event recorder calls (``hook=functools.partial(
    notify_tracking_event, pm)``). Unlike ``pm.hook.postal_tracking_event(event=...)``,
    which stops at the first plugin that raises, every plugin is called: an
    exception is logged with the plugin's name and the event id, and the next
    plugin still gets the event. Never raises.
    """
    for impl in reversed(pm.hook.postal_tracking_event.get_hookimpls()):
        if impl.hookwrapper or impl.wrapper:
            log.warning(
                "plugin %r: wrappers of postal_tracking_event are not supported; skipped",
                impl.plugin_name,
            )
            continue
        kwargs = {"event": event} if "event" in impl.argnames else {}
        try:
            impl.function(**kwargs)
        except Exception:  # one plugin must not keep events from the others
            log.exception(
                "plugin %r raised in postal_tracking_event for event %s",
                impl.plugin_name,
                event.get("event_id"),
            )
