"""The all-rules report's day totals (``analytics_day_totals``) equal the roll-up of the
day rows through folds, a store written before the table existed, and pruning; and the
report built from them equals the one built from every decoded count."""

from __future__ import annotations

import sqlite3
from collections import Counter
from typing import Any

from engine.analytics.report import (
    counts_totals,
    day_totals,
    gather,
    rules_summary,
    rules_summary_totals,
)
from engine.embedded.storage.analytics import (
    ANALYTICS_SCHEMA,
    fold,
    prune,
    read_day_totals,
    read_periods,
    write_pending,
)
from state.analytics import DAY_MS, HOUR_MS, Cell, Counted, pending_row

DAY = 20_000


def _db() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.executescript(ANALYTICS_SCHEMA)
    return db


def _cells(k: int) -> Counter[Cell]:
    h = DAY * 24
    return Counter(
        {
            ("r1", 1, "a", -1, "entered", h + k): 3 + k,
            ("r1", 1, "a", 1, "sent:email", h + k): 2,
            ("r1", 1, "b", 3, "suppressed:consent", h + 25): 1,
            ("r1", 2, "holdout", 1, "holdout", h + 1): k,
            ("r2", 1, "", -1, "conversions", h + 30): 1,
            ("r2", 1, "", -1, "revenue_cents", h + 30): 1250 + k,
            ("r2", 1, "", 0, "reached", h + 2): 7,
            ("r2", 1, "", -1, "exited:order_completed", h + 50): 1,
        }
    )


def _counted(k: int) -> list[Counted]:
    return [(*cell, n) for cell, n in _cells(k).items()]


def _report(db: sqlite3.Connection, mem: Counter[Cell]) -> tuple[list[Any], list[Any]]:
    first, last = DAY - 1, DAY + 3
    fast = rules_summary_totals(
        day_totals(read_day_totals(db, first, last), mem, first, last), first, last, ["r3"]
    )
    stored = read_periods(db, False, first, last)
    slow = rules_summary(gather(stored, mem, False, first, last), first, last, ["r3"])
    return fast, slow


def test_totals_follow_folds_and_prunes() -> None:
    db = _db()
    for k in range(3):
        write_pending(db, [pending_row(f"c{k}", _counted(k))])
        fold(db)
    fast, slow = _report(db, _cells(9))
    assert fast == slow
    assert fast[0]["rule_id"] == "r1"
    assert fast[0]["entered"] == 3 + 4 + 5 + 12
    prune(db, (DAY + 1) * DAY_MS + HOUR_MS, 0.01)  # keeps days from DAY + 1
    assert {d for d, _, _, _ in read_day_totals(db, 0, DAY + 9)} == {DAY + 1, DAY + 2}
    fast, slow = _report(db, Counter())
    assert fast == slow


def test_a_store_without_totals_gets_them_at_its_next_fold() -> None:
    db = _db()
    for k in range(2):
        write_pending(db, [pending_row(f"c{k}", _counted(k))])
        fold(db)
    want = read_day_totals(db, 0, DAY + 9)
    db.execute("DELETE FROM analytics_day_totals")  # as written before the table existed
    fold(db)  # nothing pending: fills the totals from the day rows
    assert sorted(read_day_totals(db, 0, DAY + 9)) == sorted(want)
    write_pending(db, [pending_row("c9", _counted(5))])
    fold(db)
    fast, slow = _report(db, Counter())
    assert fast == slow


def test_counts_totals_equal_the_stored_totals() -> None:
    db = _db()
    write_pending(db, [pending_row("c", _counted(1))])
    fold(db)
    counts = gather(read_periods(db, False, 0, DAY + 9), Counter(), False, 0, DAY + 9)
    stored = {(d, r, v): list(t) for d, r, v, t in read_day_totals(db, 0, DAY + 9)}
    assert counts_totals(counts) == stored


def test_equal_rows_fold_once_each() -> None:
    """Customers who did the same in the same hour have byte-equal rows, which the fold
    decodes once: each still counts, and apart from rows that differ."""
    db = _db()
    write_pending(db, [pending_row(f"c{k}", _counted(2)) for k in range(5)])
    write_pending(db, [pending_row("odd", _counted(7))])
    fold(db)
    want: Counter[tuple[int, str, int, str, int, str]] = Counter()
    for k, times in ((2, 5), (7, 1)):
        for (rid, version, variant, step, metric, hour), n in _cells(k).items():
            want[(hour, rid, version, variant, step, metric)] += n * times
    got: Counter[tuple[int, str, int, str, int, str]] = Counter()
    for hour, rid, version, cells in read_periods(db, True, 0, (DAY + 9) * 24):
        for variant, step, metric, n in cells:
            got[(hour, rid, version, variant, step, metric)] += n
    assert got == want
