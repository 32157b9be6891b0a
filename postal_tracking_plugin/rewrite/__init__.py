"""Message rewriting: tracked links and the open pixel (see the send-pipeline issue)."""
