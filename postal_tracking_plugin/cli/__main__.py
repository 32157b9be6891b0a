"""``python -m postal_tracking_plugin.cli``: the same as ``postal-tracking``."""

import sys

from . import main

sys.exit(main())
