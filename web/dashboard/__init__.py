"""The management dashboard: see opens and clicks, people apart from machines.

Its own Flask app (:func:`create_app`) and its own listener
(``postal-tracking dashboard``, default ``127.0.0.1:5020``), never on the fast
server's sockets; :mod:`.wsgi` hands it to gunicorn. Pages: overview, messages
and a message's timeline, links, tracking domains and their settings, health.
"""

from .app import create_app as create_app

__all__ = ["create_app"]
