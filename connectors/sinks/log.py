"""A sink that logs each action: for development and as the default route."""

from __future__ import annotations

import logging

import orjson

from connectors.sinks.base import action_payload
from engine.types import Action

__all__ = ["LogSink"]

logger = logging.getLogger(__name__)


class LogSink:
    """Logs one line per action on the ``connectors.sinks.log`` logger.

    The message is ``action <json payload>``; the payload is also attached to the record as
    ``extra={"action": {...}, "sink": name}`` for structured handlers. Never fails (a
    record dropped by logging configuration still counts as delivered).
    """

    def __init__(self, name: str = "log", *, level: int = logging.INFO) -> None:
        self.name = name
        self.level = level

    async def start(self) -> None:
        """Nothing to open."""

    async def send(self, action: Action) -> None:
        """Log ``action``; returns once the record was handed to logging."""
        payload = action_payload(action)
        if logger.isEnabledFor(self.level):
            line = orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS).decode()
            logger.log(self.level, "action %s", line, extra={"action": payload, "sink": self.name})

    async def close(self) -> None:
        """Nothing to close."""
