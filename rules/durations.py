"""Durations (``30m``, ``4h``, ``3d``), caps (``1/7d``) and clock times (``21:00``)."""

from __future__ import annotations

import re

__all__ = ["parse_cap", "parse_clock", "parse_duration", "parse_range"]

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
DURATION_PATTERN = r"^[0-9]+(ms|s|m|h|d|w)$"
CAP_PATTERN = r"^[0-9]+/[0-9]+(ms|s|m|h|d|w)$"
CLOCK_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
RANGE_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$"
_DUR = re.compile(DURATION_PATTERN)


def parse_duration(text: str) -> int:
    """Milliseconds in ``text``; ValueError when it is not a duration."""
    m = _DUR.match(text)
    if m is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 4h, 3d)")
    return int(text[: m.start(1)]) * _UNITS[m.group(1)]


def parse_cap(text: str) -> tuple[int, int]:
    """``"2/7d"`` -> (2, period ms)."""
    count, _, period = text.partition("/")
    return int(count), parse_duration(period)


def parse_clock(text: str) -> int:
    """``"21:30"`` -> minutes after midnight."""
    h, m = text.split(":")
    return int(h) * 60 + int(m)


def parse_range(text: str) -> tuple[int, int]:
    """``"21:00-09:00"`` -> (start, end) minutes after midnight; may wrap midnight."""
    a, b = text.split("-")
    return parse_clock(a), parse_clock(b)
