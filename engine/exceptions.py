"""Engine exceptions. ``NudgeError`` is the root of every error Nudge raises on purpose."""

from __future__ import annotations

__all__ = ["Backpressure", "EventError", "NotReady", "NudgeError", "StorageUnavailable"]


class NudgeError(Exception):
    """Root of Nudge's exceptions."""


class EventError(NudgeError):
    """An event that cannot be accepted. ``field`` is a JSON path such as
    ``$.timestamp`` or ``$.properties.price``; ``reason`` is a short machine-readable
    word used as a metric label (``invalid_json``, ``invalid_field``, ``missing_field``)."""

    def __init__(self, message: str, *, field: str = "$", reason: str = "invalid_field") -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.reason = reason

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "reason": self.reason, "message": self.message}


class Backpressure(NudgeError):
    """The pipeline is full: retry after ``retry_after`` seconds (HTTP 429)."""

    def __init__(self, retry_after: float, queued: int) -> None:
        super().__init__(f"pipeline full ({queued} events queued); retry in {retry_after:g}s")
        self.retry_after = retry_after
        self.queued = queued


class NotReady(NudgeError):
    """Still recovering or shutting down (HTTP 503)."""


class StorageUnavailable(NudgeError):
    """A write to the data directory failed: ``cause`` is ``disk_full`` (ENOSPC, SQLite's
    "database or disk is full": HTTP 507) or ``io`` (any other I/O error: HTTP 503).
    Nothing of the request was acknowledged; retry after ``retry_after`` seconds."""

    def __init__(self, store: str, cause: str, detail: str, retry_after: float = 5.0) -> None:
        what = "disk full" if cause == "disk_full" else "I/O error"
        super().__init__(f"{store}: {what} ({detail}); retry in {retry_after:g}s")
        self.store = store
        self.cause = cause
        self.detail = detail
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return 507 if self.cause == "disk_full" else 503
