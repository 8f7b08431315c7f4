"""The embedded runtime (``nudge run``): one process, durable on local disk."""

# how the periodic checkpoints are written (engine/embedded/upkeep.py, docs/operations.md)
CHECKPOINT_MODES = ("paced", "inline")
