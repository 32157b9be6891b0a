"""Click and open events: recording, spool, webhooks, bot flags (see the events issue)."""
