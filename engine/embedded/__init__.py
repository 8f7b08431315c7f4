"""The embedded runtime (``nudge run``): one process, durable on local disk."""
