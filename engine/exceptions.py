"""Engine exceptions. ``NudgeError`` is the root of every error Nudge raises on purpose."""

from __future__ import annotations

__all__ = ["EventError", "NudgeError"]


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
