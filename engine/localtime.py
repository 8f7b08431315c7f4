"""Customer-local time: quiet hours and wait-until-time-of-day, DST-aware (zoneinfo).

Clock changes (docs/semantics.md, "Local time and clock changes"): each local date has
exactly one instant for a time of day HH:MM, :func:`local_instant`:

- on an ordinary date, the instant the customer's clock shows HH:MM;
- on the night the clocks jump over HH:MM (spring forward: 02:30 when 02:00 becomes
  03:00), the instant of the jump, the first valid local time after the gap (03:00
  local; on Lord Howe Island, where 02:00 becomes 02:30, 02:30 local);
- on the night HH:MM happens twice (fall back: 01:30 when 02:00 becomes 01:00), the
  first time (``fold=0``); the second one is not a separate instant.

Put another way: the first instant of that date at which the local clock shows HH:MM or
later. Waits until a time of day and the ends (and starts) of quiet hours use these
instants, so a message is never held a day for a time that does not exist, and never
sent twice in a repeated hour.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["in_range", "local_instant", "next_local", "valid_timezone", "zone"]

_HOUR_MS = 3_600_000
_DAY_MS = 86_400_000
# the next local instant of a time of day is at most 48 h away (a date and the next),
# a quiet-hours window lasts under a day: with one UTC offset all over this span either
# side of an instant, no clock change is near it and wall-clock arithmetic is exact
_NEAR_H = 52


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


def _steady(tz: str, hour: int) -> int | None:
    """The UTC offset (ms) of ``tz`` throughout ``hour`` (epoch hours) +- _NEAR_H hours,
    or None when it may change in that span: the offset of ``hour``'s whole UTC day
    +- _NEAR_H hours (one cache entry a zone and day, :func:`_steady_day`)."""
    return _steady_day(tz, hour // 24)


@lru_cache(maxsize=16_384)
def _steady_day(tz: str, day: int) -> int | None:
    """The UTC offset (ms) of ``tz`` from _NEAR_H hours before UTC day ``day`` (epoch
    days) to _NEAR_H hours after it, or None when it changes in that span (looked at
    every 3 hours: no zone changes its clock and back within 3 hours). Keyed by day, not
    hour: a year of timers in six zones is ~2,200 entries, not ~53,000 (which thrashed
    the cache and cost 36 zone lookups a miss)."""
    z = zone(tz)
    first = day * 24 - _NEAR_H
    offsets = {
        datetime.fromtimestamp((first + h) * 3_600, z).utcoffset()
        for h in range(0, 24 + 2 * _NEAR_H + 3, 3)
    }
    if len(offsets) != 1:
        return None
    (off,) = offsets
    return None if off is None else int(off.total_seconds()) * 1000


def _local(ms: int, tz: str) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=zone(tz))


def local_minute(ms: int, tz: str) -> int:
    t = _local(ms, tz)
    return t.hour * 60 + t.minute


def local_instant(day: date, minute: int, tz: str) -> int:
    """The instant (epoch ms) of local time ``minute`` (after midnight) on ``day`` in
    ``tz``: the wall time itself; its first occurrence when the clocks go back over it;
    the instant they jump when they skip it (see the module docstring)."""
    z = zone(tz)
    wall = datetime.combine(day, time(minute // 60, minute % 60))
    after = wall.replace(tzinfo=z).timestamp()  # fold=0: the earlier of two, if two
    if datetime.fromtimestamp(after, z).replace(tzinfo=None) == wall:
        return int(after) * 1000
    # a gap: fold=0 read it with the offset before the jump (an instant after it), fold=1
    # with the offset after (an instant before it); the jump lies between, at a whole
    # second: the first second whose wall time is ``wall`` or later
    lo = int(wall.replace(tzinfo=z, fold=1).timestamp())
    hi = int(after)
    if lo > hi:
        lo, hi = hi, lo
    while lo < hi:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, z).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid + 1
    return hi * 1000


def next_local(ms: int, tz: str, minute: int) -> int:
    """The first instant strictly after ``ms`` that is :func:`local_instant` of
    ``minute`` for its date: the local clock showing HH:MM, or the jump over it on a
    spring-forward night, or its first occurrence on a fall-back night (so a wait
    started in the repeated hour after the first HH:MM ends on the next date's)."""
    off = _steady(tz, ms // _HOUR_MS)
    if off is not None:  # no clock change near: plain arithmetic on the wall clock
        local = ms + off
        out = local - local % _DAY_MS + minute * 60_000 - off
        return out if out > ms else out + _DAY_MS
    day = _local(ms, tz).date()
    for add in range(4):
        out = local_instant(day + timedelta(days=add), minute, tz)
        if out > ms:
            return out
    raise AssertionError("unreachable: a local time recurs within four days")


def in_range(ms: int, tz: str, span: tuple[int, int]) -> bool:
    """Is ``ms`` inside the local window [start, end) (minutes after midnight; start >
    end wraps midnight; start == end: an empty window)? Each date's window opens at the
    start's :func:`local_instant` and closes at the end's, that date's or, wrapping, the
    next date's. On days without a clock change nearby this is the wall clock's
    ``start <= HH:MM < end``; across one it keeps the instants :func:`next_local` gives
    (after a jump over the end the window is closed; a repeated hour inside the window
    stays inside it)."""
    start, end = span
    if start == end:
        return False
    off = _steady(tz, ms // _HOUR_MS)
    if off is not None:
        m = (ms + off) // 60_000 % 1_440
        return start <= m < end if start < end else (m >= start or m < end)
    # inside iff the next close comes before the next opening; both at one instant (the
    # clocks jumped over both): a window closes and the next opens there when it wraps
    # midnight, an empty window otherwise
    closes, opens = next_local(ms, tz, end), next_local(ms, tz, start)
    return closes < opens or (closes == opens and start > end)
