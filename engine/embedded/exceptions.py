"""Runtime errors the HTTP layer turns into status codes."""

from __future__ import annotations

from engine.exceptions import NudgeError

__all__ = ["Backpressure", "NotReady"]


class Backpressure(NudgeError):
    """The pipeline is full: retry after ``retry_after`` seconds (HTTP 429)."""

    def __init__(self, retry_after: float, queued: int) -> None:
        super().__init__(f"pipeline full ({queued} events queued); retry in {retry_after:g}s")
        self.retry_after = retry_after
        self.queued = queued


class NotReady(NudgeError):
    """Still recovering or shutting down (HTTP 503)."""
