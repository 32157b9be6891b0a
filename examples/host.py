"""Usage: python examples/host.py postal.yml SERVER MAIL_FROM RCPT_TO < in.eml > out.eml"""

import sys

from postal_tracking_plugin.config import load_config
from postal_tracking_plugin.hooks import get_plugin_manager
from postal_tracking_plugin.hooks import run_send_pipeline
from postal_tracking_plugin.store import open_store

config_path, server, mail_from, rcpt_to = sys.argv[1:5]
config = load_config(config_path)
store = open_store(config)
pm = get_plugin_manager()  # every plugin under postal.plugins; tracking among them
message = run_send_pipeline(
    pm,
    sys.stdin.buffer.read(),
    mail_from=mail_from,
    rcpt_to=[rcpt_to],
    server=server,
    config=config,
    store=store,
)
sys.stdout.buffer.write(message)  # a real host DKIM-signs and sends it here
store.close()
