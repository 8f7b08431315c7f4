"""Clocks. The core never reads time itself: a clock is injected."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "ScaledClock", "SystemClock", "VirtualClock"]


class Clock(Protocol):
    def now(self) -> int:
        """Current time, epoch milliseconds UTC."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> int:
        return time.time_ns() // 1_000_000


class VirtualClock:
    """A clock tests and backtests move by hand. It never goes backwards."""

    def __init__(self, start: int = 0) -> None:
        self._now = start

    def now(self) -> int:
        return self._now

    def set(self, t: int) -> None:
        """Move to ``t`` if it is later than now."""
        if t > self._now:
            self._now = t

    def advance(self, ms: int) -> int:
        self._now += ms
        return self._now


class ScaledClock:
    """Virtual time running ``speed`` times faster than real time from ``start``."""

    def __init__(self, speed: float, start: int | None = None) -> None:
        self._speed = speed
        self._real0 = time.monotonic_ns() // 1_000_000
        self._virt0 = SystemClock().now() if start is None else start

    def now(self) -> int:
        real = time.monotonic_ns() // 1_000_000 - self._real0
        return self._virt0 + int(real * self._speed)
