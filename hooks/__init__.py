"""Installed as ``postal_tracking_plugin.hooks``: the pluggy side of the package.

The hook specifications of the send pipeline and of tracking events
(:mod:`.spec`), this package's own implementation of them (:mod:`.tracking`),
the plugin manager hosts use (:func:`get_plugin_manager`), and host adapters
such as the SMTP sidecar relay.
"""
