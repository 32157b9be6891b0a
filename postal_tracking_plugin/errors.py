"""Errors a user can cause, each printed by the CLI as one line.

Every message names what is wrong (the key, file, server or domain) and how to
fix it. Anything that is not an :class:`Error` is a bug and is reported as one.
The whole tree lives here (certbot's ``errors.py`` habit); the packages that
raise them re-export their own for the names users already import.
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


class PluginError(Error):
    """A plugin under ``postal.plugins`` cannot be loaded or implements an unknown hook."""


class RelayError(Error):
    """The SMTP relay cannot start (address in use, not configured)."""


class ServerError(Error):
    """The fast server cannot listen (a port in use, an address not this machine's)."""


class TlsError(Error):
    """A certificate or key cannot be loaded."""


class AcmeError(Error):
    """The ACME server, or certbot talking to it, refused or could not be reached."""


class NoAccount(AcmeError):
    """No ACME account is registered yet: ``register-lets-encrypt`` comes first."""


class NotEligible(AcmeError):
    """A certificate was asked for a name that is not a usable tracking domain."""


class LockBusy(AcmeError):
    """Another node or process is issuing or renewing certificates right now."""
