"""Sliding-window event counters in bounded memory.

Each counted event increments three buckets: a 5-minute bucket (serves the 1h window), an
hour bucket (24h) and a day bucket (7d, 30d, 90d). Buckets live in one ``dict[int, int]``
per customer keyed by ``type_code << 26 | granularity << 24 | bucket_index``, so a
customer's counters cost a few dict slots, not a list of events. A window's start is
rounded down to its bucket, so a count may include up to one bucket more than the exact
window (at most 5 minutes for 1h, 1 hour for 24h, 1 day for the day windows). Buckets older
than their retention are pruned when the dict grows.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

__all__ = [
    "WINDOWS",
    "Counters",
    "Thresholds",
    "WindowSpec",
    "count",
    "counted_change",
    "counter",
    "crossings",
    "increment",
    "next_change_of",
    "next_crossing",
    "type_code",
    "watch",
    "watch_thresholds",
]

Counters = dict[int, int]

_MIN5 = 300_000
_HOUR = 3_600_000
_DAY = 86_400_000
# granularity -> (bucket size ms, retention ms)
_GRANS = ((0, _MIN5, _HOUR + _MIN5), (1, _HOUR, _DAY + _HOUR), (2, _DAY, 91 * _DAY))
WINDOWS: dict[str, tuple[int, int]] = {
    "1h": (0, _HOUR),
    "24h": (1, _DAY),
    "7d": (2, 7 * _DAY),
    "30d": (2, 30 * _DAY),
    "90d": (2, 90 * _DAY),
}
_PRUNE_AT = 40
_codes: dict[str, int] = {}


def type_code(event_type: str) -> int:
    """A stable 32-bit code for an event type (stable across processes: crc32, not hash())."""
    code = _codes.get(event_type)
    if code is None:
        code = _codes[event_type] = zlib.crc32(event_type.encode())
    return code


def increment(counters: Counters, event_type: str, ts: int, now: int) -> None:
    """Count one event of ``event_type`` at event time ``ts``. Events older than a bucket's
    retention (relative to ``now``) are not counted in it."""
    base = type_code(event_type) << 26
    for gran, size, retention in _GRANS:
        if now - ts < retention:
            key = base | gran << 24 | (ts // size)
            counters[key] = counters.get(key, 0) + 1
    if len(counters) > _PRUNE_AT:
        prune(counters, now)


def prune(counters: Counters, now: int) -> None:
    """Drop buckets past their retention."""
    limits = [(now - retention) // size for _, size, retention in _GRANS]
    dead = [k for k in counters if (k & 0xFFFFFF) < limits[(k >> 24) & 3]]
    for k in dead:
        del counters[k]


def counter(event_type: str, window: str) -> Callable[[Counters | None, int], int]:
    """:func:`count` for one (type, window) worked out once: ``fn(counters, now)`` (also
    segment conditions' count terms, evaluated straight on the state: rules/segments.py).
    The window's buckets are one range of keys (the prefix's top bits, then the index)."""
    gran, length = WINDOWS[window]
    top = (type_code(event_type) << 2 | gran) << 24
    hi = top | 0xFFFFFF
    size = _GRANS[gran][1]

    def fn(counters: Counters | None, now: int) -> int:
        if not counters:
            return 0
        first = (now - length) // size
        lo = top | (first if first > 0 else 0)
        n = 0
        for k in counters:  # a loop, not sum(genexpr): ~2x faster on ~10 buckets
            if lo <= k <= hi:
                n += counters[k]
        return n

    return fn


_counters: dict[tuple[str, str], Callable[[Counters | None, int], int]] = {}


def count(counters: Counters, event_type: str, window: str, now: int) -> int:
    """Events of ``event_type`` in the sliding ``window`` ending at ``now``."""
    fn = _counters.get((event_type, window))
    if fn is None:
        fn = _counters[event_type, window] = counter(event_type, window)
    return fn(counters, now)


WindowSpec = dict[int, tuple[tuple[int, int], ...]]
"""Counter key prefix -> the (window length, bucket size) pairs watched under it."""


def watch(pairs: tuple[tuple[str, str], ...]) -> WindowSpec:
    """The :data:`WindowSpec` of (event type, window) pairs, for :func:`next_change_of`."""
    spec: dict[int, list[tuple[int, int]]] = {}
    for event_type, window in pairs:
        gran, length = WINDOWS[window]
        spec.setdefault(type_code(event_type) << 2 | gran, []).append((length, _GRANS[gran][1]))
    return {k: tuple(v) for k, v in spec.items()}


Thresholds = dict[int, tuple[tuple[int, int, tuple[int, ...] | None], ...]]
"""Counter key prefix -> (window length, bucket size, thresholds) watched under it: with
thresholds ``ks``, only the instants the window's count drops to ``k`` or below for some
``k`` in ``ks`` matter (``count(t, w) > 0`` turns only when the count reaches 0); None:
every instant a bucket leaves the window does."""


def watch_thresholds(pairs: dict[tuple[str, str], tuple[int, ...] | None]) -> Thresholds:
    """The :data:`Thresholds` of (event type, window) -> thresholds, for
    :func:`next_crossing`."""
    spec: dict[int, list[tuple[int, int, tuple[int, ...] | None]]] = {}
    for (event_type, window), ks in sorted(pairs.items()):
        gran, length = WINDOWS[window]
        spec.setdefault(type_code(event_type) << 2 | gran, []).append((length, _GRANS[gran][1], ks))
    return {k: tuple(v) for k, v in spec.items()}


_Held = dict[tuple[int, int, int, tuple[int, ...]], list[tuple[int, int]]]


def _watched(counters: Counters, spec: Thresholds, now: int) -> tuple[list[int], _Held]:
    """The counted buckets ``spec`` watches, still in their windows at ``now``: the
    instants they leave, for spans without thresholds; by (prefix, window length, bucket
    size, thresholds) as (bucket index, count), for spans with them."""
    leaves: list[int] = []
    held: _Held = {}
    for k, v in counters.items():
        prefix = k >> 24
        spans = spec.get(prefix)
        if spans is None or not v:
            continue
        index = k & 0xFFFFFF
        for length, size, ks in spans:
            if index < (now - length) // size:
                continue
            if ks is None:
                leaves.append((index + 1) * size + length)
            else:
                held.setdefault((prefix, length, size, ks), []).append((index, v))
    return leaves, held


def next_crossing(counters: Counters, spec: Thresholds, now: int) -> int | None:
    """When the first of the counts ``spec`` watches next crosses one of its thresholds
    if no event arrives (None: none will): for thresholds ``ks``, the earliest instant
    the count, now above some ``k``, drops to ``k`` (the buckets leave oldest first: the
    instant the last bucket that keeps it above ``k`` leaves); without thresholds, the
    earliest instant a counted bucket leaves (as :func:`next_change_of`)."""
    leaves, held = _watched(counters, spec, now)
    due = min(leaves, default=None)
    for (_, length, size, ks), buckets in held.items():
        total = sum(v for _, v in buckets)
        buckets.sort()  # oldest first: the order they leave in
        for limit in ks:
            if total <= limit:
                continue
            left = total
            for index, v in buckets:
                left -= v
                if left <= limit:
                    at = (index + 1) * size + length
                    if due is None or at < due:
                        due = at
                    break
    return due


def crossings(counters: Counters, spec: Thresholds, now: int) -> list[int]:
    """Every instant after ``now``, in order, at which one of the counts ``spec`` watches
    crosses one of its thresholds if no event arrives (without thresholds: every instant
    a counted bucket leaves), once per count and threshold crossing then (an instant
    several counts cross at is there several times); the first is :func:`next_crossing`.
    Between two of them (and after the last) every watched count stays on the same side
    of all its thresholds."""
    out, held = _watched(counters, spec, now)
    for (_, length, size, ks), buckets in held.items():
        total = sum(v for _, v in buckets)
        buckets.sort()
        for limit in ks:
            left = total
            for index, v in buckets:
                if left <= limit:
                    break
                left -= v
                if left <= limit:
                    out.append((index + 1) * size + length)
    out.sort()
    return out


def next_change_of(counters: Counters, spec: WindowSpec, now: int) -> int | None:
    """When the first of the counts ``spec`` watches next changes if no event arrives
    (None: all are 0 and stay so): the earliest instant a counted bucket leaves its
    window (the bucket's end plus the window length), in one pass over the counters."""
    due: int | None = None
    for k, v in counters.items():
        spans = spec.get(k >> 24)
        if spans is None or not v:
            continue
        index = k & 0xFFFFFF
        for length, size in spans:
            if index >= (now - length) // size:
                at = (index + 1) * size + length
                if due is None or at < due:
                    due = at
    return due


def counted_change(spec: WindowSpec, event_type: str, ts: int, now: int) -> int | None:
    """When the bucket one event of ``event_type`` at ``ts`` was counted in leaves the
    earliest window ``spec`` watches for the type (None: none, or already gone). With the
    instant before the event, the minimum of the two is :func:`next_change_of` after it:
    the event's bucket is the only one that changed."""
    code = type_code(event_type) << 2
    due: int | None = None
    for gran, size, _ in _GRANS:
        for length, _size in spec.get(code | gran, ()):
            at = (ts // size + 1) * size + length
            if at > now and (due is None or at < due):
                due = at
    return due
