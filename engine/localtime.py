"""Customer-local time: quiet hours and wait-until-time-of-day, DST-aware (zoneinfo)."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["in_range", "next_local", "valid_timezone", "zone"]


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def valid_timezone(name: object) -> bool:
    if not isinstance(name, str) or not name or len(name) > 64:
        return False
    try:
        zone(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _local(ms: int, tz: str) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=zone(tz))


def local_minute(ms: int, tz: str) -> int:
    t = _local(ms, tz)
    return t.hour * 60 + t.minute


def in_range(ms: int, tz: str, span: tuple[int, int]) -> bool:
    """Is local time at ``ms`` inside [start, end) minutes after midnight (may wrap)?"""
    start, end = span
    m = local_minute(ms, tz)
    return start <= m < end if start < end else (m >= start or m < end)


def next_local(ms: int, tz: str, minute: int) -> int:
    """The first instant strictly after ``ms`` whose local time is ``minute`` after midnight."""
    t = _local(ms, tz)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    for add in range(3):
        cand = (day + timedelta(days=add, minutes=minute)).replace(tzinfo=zone(tz))
        out = int(cand.timestamp() * 1000)
        if out > ms:
            return out
    raise AssertionError("unreachable: a local time recurs within three days")
