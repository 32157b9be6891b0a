"""Click & open tracking for outgoing e-mail, the way Postal does it.

The core package: configuration, the store, message rewriting, certificates
and events. The sibling packages :mod:`postal_tracking_plugin.hooks` (pluggy
hook specifications and host adapters) and :mod:`postal_tracking_plugin.web`
(the Flask tracking app and the gevent fast server) build on it; the core never
imports them.
"""

from .config import Config as Config
from .config import load_config as load_config
from .errors import ConfigError as ConfigError
from .errors import Error as Error
from .errors import StoreError as StoreError

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "Error", "StoreError", "load_config", "__version__"]
