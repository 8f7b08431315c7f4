"""The timer heap (state/memory.py) against a plain dict model: whatever the sequence of
schedules, re-schedules, cancels and pops, timers come up at their due time, in
(due, customer, rule) order, exactly once; and re-scheduling a timer later does not grow
the heap."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from state.memory import MemoryTimers

_KEYS = [(f"c{i}", r) for i in range(4) for r in ("a", "b")]

_op = st.one_of(
    st.tuples(st.just("schedule"), st.sampled_from(_KEYS), st.integers(0, 60)),
    st.tuples(st.just("cancel"), st.sampled_from(_KEYS), st.just(0)),
    st.tuples(st.just("pop"), st.just(_KEYS[0]), st.integers(0, 60)),
    st.tuples(st.just("next"), st.just(_KEYS[0]), st.just(0)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_op, max_size=80), st.sampled_from([None, {"b": 0, "a": 1}, {"b": 0}]))
def test_matches_a_dict_model(
    ops: list[tuple[str, tuple[str, str], int]], ranks: dict[str, int] | None
) -> None:
    """With ``ranks`` (the rule set's priority order), a customer's timers due at the
    same instant come up in rank order (ids without a rank last), then rule id."""
    timers = MemoryTimers()
    rank: dict[str, int] = {}
    if ranks is not None:
        timers.order(ranks)
        rank = ranks
    last = max(rank.values(), default=-1) + 1
    model: dict[tuple[str, str], int] = {}
    for i, (op, key, t) in enumerate(ops):
        if ranks is not None and i == len(ops) // 2:
            rank = {"a": 0}  # a deploy changes the order mid-sequence: the heap follows
            last = 1
            timers.order(rank)
        if op == "schedule":
            timers.schedule(*key, t)
            model[key] = t
        elif op == "cancel":
            timers.cancel(*key)
            model.pop(key, None)
        elif op == "pop":
            while True:
                due = [(d, c, rank.get(r, last), r) for (c, r), d in model.items() if d <= t]
                first = min(due) if due else None
                expected = None if first is None else (first[0], first[1], first[3])
                assert timers.pop_due(t) == expected
                if expected is None:
                    break
                del model[expected[1], expected[2]]
        else:
            assert timers.next_due() == (min(model.values()) if model else None)
        assert len(timers) == len(model)
        assert timers.pending() == sorted((d, c, r) for (c, r), d in model.items())


def test_rescheduling_later_keeps_one_heap_entry() -> None:
    timers = MemoryTimers()
    for i in range(10_000):
        timers.schedule("c1", "browse", 1_000 + i)  # a flow restarted on every event
    assert len(timers._heap) == 1
    assert timers.pop_due(10_998) is None
    assert timers.pop_due(10_999) == (10_999, "c1", "browse")
    assert timers.next_due() is None


def test_rescheduling_earlier_fires_at_the_earlier_time_once() -> None:
    timers = MemoryTimers()
    timers.schedule("c1", "r", 500)
    timers.schedule("c1", "r", 100)
    assert timers.pop_due(100) == (100, "c1", "r")
    assert timers.pop_due(1_000) is None


def test_cancel_then_reschedule_later_keeps_one_heap_entry() -> None:
    """A flow ended and started again (cancel, then a later schedule) reuses the entry
    still queued for it; the cancelled time does not fire."""
    timers = MemoryTimers()
    timers.schedule("c1", "r", 100)
    timers.cancel("c1", "r")
    assert len(timers) == 0
    timers.schedule("c1", "r", 300)
    assert len(timers) == 1
    assert len(timers._heap) == 1
    assert timers.pop_due(299) is None
    assert timers.pop_due(300) == (300, "c1", "r")
    assert len(timers) == 0
    assert timers.pending() == []


def test_rebuild_keeps_pending_timers_only() -> None:
    """A deploy's reordering rebuilds the heap from the pending timers: cancelled ones
    are gone, moved ones come up once at their new time."""
    timers = MemoryTimers()
    timers.schedule("c1", "a", 100)
    timers.schedule("c1", "b", 100)
    timers.schedule("c2", "a", 50)
    timers.cancel("c2", "a")
    timers.schedule("c1", "a", 400)  # later: its entry at 100 stays queued
    timers.order({"b": 0, "a": 1})
    assert len(timers._heap) == 2
    assert timers.pending() == [(100, "c1", "b"), (400, "c1", "a")]
    assert timers.pop_due(1_000) == (100, "c1", "b")
    assert timers.pop_due(1_000) == (400, "c1", "a")
    assert timers.pop_due(1_000) is None
