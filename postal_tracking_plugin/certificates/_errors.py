"""Errors of certificate management a user can cause or fix, each one line."""

from __future__ import annotations

from ..errors import Error


class AcmeError(Error):
    """The ACME server, or certbot talking to it, refused or could not be reached."""


class NoAccount(AcmeError):
    """No ACME account is registered yet: ``register-lets-encrypt`` comes first."""


class NotEligible(AcmeError):
    """A certificate was asked for a name that is not a usable tracking domain."""


class LockBusy(AcmeError):
    """Another node or process is issuing or renewing certificates right now."""
