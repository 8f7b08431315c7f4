"""Nudge engine: event model, the pure per-customer processor, runtimes and the CLI."""

__version__ = "0.1.0"
