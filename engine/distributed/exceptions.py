"""Errors of the distributed runtime."""

from __future__ import annotations

from engine.exceptions import NudgeError

__all__ = ["DistributedError"]


class DistributedError(NudgeError):
    """The distributed runtime cannot start or go on (bad config, broker unreachable)."""
