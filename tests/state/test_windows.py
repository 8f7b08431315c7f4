"""Window counters: when a count crosses a threshold with no event (the segment timer)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.segments import count_thresholds
from state.windows import (
    count,
    crossings,
    increment,
    next_change_of,
    next_crossing,
    watch,
    watch_thresholds,
)

DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01, a day boundary


def _counters(days: list[int], etype: str = "product_viewed") -> dict[int, int]:
    counters: dict[int, int] = {}
    now = T0 + max(days) * DAY
    for d in days:
        increment(counters, etype, T0 + d * DAY + 1000, now)
    return counters


def test_count_above_zero_turns_when_the_newest_bucket_leaves() -> None:
    counters = _counters([0, 1, 3])
    now = T0 + 3 * DAY + 5000
    spec = watch_thresholds({("product_viewed", "7d"): (0,)})
    # the newest bucket (day 3) leaves the 7-day window at the end of day 3 plus 7 days
    assert next_crossing(counters, spec, now) == T0 + 4 * DAY + 7 * DAY
    # every bucket leaving: the oldest first
    assert next_change_of(counters, watch((("product_viewed", "7d"),)), now) == T0 + 8 * DAY


def test_threshold_two_turns_when_the_count_drops_to_two() -> None:
    counters = _counters([0, 0, 1, 2, 3])  # 5 events; dropping day 0 leaves 3, day 1 leaves 2
    now = T0 + 3 * DAY + 5000
    spec = watch_thresholds({("product_viewed", "7d"): (2,)})
    assert next_crossing(counters, spec, now) == T0 + 2 * DAY + 7 * DAY


def test_types_sharing_a_window_are_kept_apart() -> None:
    counters = _counters([0, 5])
    for d in (1,):
        increment(counters, "order_completed", T0 + d * DAY, T0 + 5 * DAY)
    spec = watch_thresholds({("product_viewed", "7d"): (0,), ("order_completed", "7d"): (0,)})
    # the order (day 1) reaches 0 first; views stay above 0 until day 5's bucket leaves
    assert next_crossing(counters, spec, T0 + 5 * DAY) == T0 + 2 * DAY + 7 * DAY


def test_no_crossing_when_already_at_or_below() -> None:
    counters = _counters([0])
    spec = watch_thresholds({("product_viewed", "7d"): (3,)})
    assert next_crossing(counters, spec, T0 + DAY) is None


def test_thresholds_from_conditions() -> None:
    got = count_thresholds("count('a', '7d') > 0 && count('b', '24h') == 0 && customer.orders > 1")
    assert got == {("a", "7d"): 0, ("b", "24h"): 0}
    assert count_thresholds("count('a', '7d') >= 3 && count('b', '7d') < 2") == {
        ("a", "7d"): 2,
        ("b", "7d"): 1,
    }
    assert count_thresholds("count('a', '7d') == 2") == {("a", "7d"): None}
    assert count_thresholds("count('a', '7d') > 0 || customer.orders > 1") is None


@settings(max_examples=200, deadline=None)
@given(
    days=st.lists(st.integers(0, 20), min_size=1, max_size=12),
    limit=st.integers(0, 6),
    later=st.integers(0, 30 * DAY),
)
def test_crossing_is_the_first_instant_the_count_is_at_or_below(
    days: list[int], limit: int, later: int
) -> None:
    counters = _counters(days)
    now = T0 + max(days) * DAY + 2000 + later
    spec = watch_thresholds({("product_viewed", "7d"): (limit,)})
    due = next_crossing(counters, spec, now)

    def at(t: int) -> int:
        return count(counters, "product_viewed", "7d", t)

    if at(now) <= limit:
        assert due is None
        return
    assert due is not None
    assert due > now
    assert at(due) <= limit < at(due - 1)


@settings(max_examples=200, deadline=None)
@given(
    views=st.lists(st.integers(0, 20), min_size=1, max_size=10),
    orders=st.lists(st.integers(0, 20), min_size=1, max_size=4),
    limits=st.sets(st.integers(0, 4), min_size=1, max_size=3),
    later=st.integers(0, 10 * DAY),
)
def test_crossings_are_every_instant_a_count_crosses_a_threshold(
    views: list[int], orders: list[int], limits: set[int], later: int
) -> None:
    """The first is next_crossing; between two of them no count crosses a threshold
    (checked at every bucket boundary), and at each one some count does."""
    counters = _counters(views)
    for d in orders:
        increment(counters, "order_completed", T0 + d * DAY + 1000, T0 + max(views) * DAY)
    now = T0 + max(views + orders) * DAY + 2000 + later
    ks = tuple(sorted(limits))
    pairs: dict[tuple[str, str], tuple[int, ...] | None] = {
        ("product_viewed", "7d"): ks,
        ("order_completed", "24h"): (0,),
    }
    spec = watch_thresholds(pairs)
    found = crossings(counters, spec, now)
    assert found == sorted(found)
    assert (found[0] if found else None) == next_crossing(counters, spec, now)

    def sides(t: int) -> tuple[bool, ...]:
        v = count(counters, "product_viewed", "7d", t)
        o = count(counters, "order_completed", "24h", t)
        return (*(v <= k for k in ks), o <= 0)

    t = now - now % 3_600_000 + 3_600_000  # every hour boundary up to the last window
    previous = sides(now)
    while t <= now + 40 * DAY:
        side = sides(t)
        assert (side != previous) == (t in found), t
        previous = side
        t += 3_600_000
    assert all(f <= now + 40 * DAY for f in found)
