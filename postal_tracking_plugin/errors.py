"""Errors a user can cause, each printed by the CLI as one line.

Every message names what is wrong (the key, file, server or domain) and how to
fix it. Anything that is not an :class:`Error` is a bug and is reported as one.
"""


class Error(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(Error):
    """The configuration file is missing, unreadable or holds a bad value."""


class StoreError(Error):
    """The store cannot be reached or does not hold what was asked for."""


class NotFound(StoreError, LookupError):
    """A server, domain or tracking domain that was named does not exist."""


class AlreadyExists(StoreError):
    """A server, domain or tracking domain with that name exists already."""


class UsageError(Error):
    """A command-line argument is invalid."""


class PostalOwnsThis(StoreError):
    """``tracking.store: postal``: the change asked for is Postal's to make, in its web interface."""
