"""Errors of certificate management, re-exported from :mod:`postal_tracking_plugin.errors`."""

from __future__ import annotations

from ..errors import AcmeError as AcmeError
from ..errors import LockBusy as LockBusy
from ..errors import NoAccount as NoAccount
from ..errors import NotEligible as NotEligible
