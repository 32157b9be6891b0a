"""Installed as ``postal_tracking_plugin.web``: the tracking web side.

The Flask tracking app (an application factory, usable under any WSGI server)
and the gevent fast server that serves it on the tracking IP with per-SNI TLS.
"""
