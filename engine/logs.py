"""Logging for every Nudge process (``nudge run``, its checkpoint writer, ``nudge worker``):
one format, and the level from ``NUDGE_LOG_LEVEL`` (any Python level name; default INFO)."""

from __future__ import annotations

import logging

from engine.settings import environment

__all__ = ["configure_logging"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging() -> None:
    logging.basicConfig(level=environment().log_level.upper(), format=_FORMAT)
