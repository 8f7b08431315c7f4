"""Logging for every Nudge process (``nudge run``, its checkpoint writer, ``nudge worker``):
one format, and the level from ``NUDGE_LOG_LEVEL`` (any Python level name; default INFO)."""

from __future__ import annotations

import logging

__all__ = ["configure_logging"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: str | None = None) -> None:
    """``level``: given by the caller (the checkpoint writer, handed its engine's), else
    read from the environment."""
    if level is None:
        from engine.settings import environment  # pydantic-settings: ~0.2 s to import

        level = environment().log_level
    logging.basicConfig(level=level.upper(), format=_FORMAT)
