"""Campaign analytics cells (state/analytics.py) in ``states.db``: exact counts per rule x version
x variant x step x metric, by day (kept ``retention_days``) and by hour (kept
``HOUR_RETENTION_DAYS``).

Counts travel with the states whose processing produced them, so that a checkpoint
holds either both or neither (engine/analytics/tally.py explains the whole scheme):

- A customer's counts since its last checkpoint go in the same chunk of state rows as its
  state, as a row whose id is ``PENDING_PREFIX + customer_id`` (``pending_row``). The
  writers (``engine.embedded.storage.sqlite._write_states``) split those off into
  ``analytics_pending``, in the same transaction as the states: a crash between two steps of a
  checkpoint leaves a customer's newer state with its counts, or neither.
- The row is the customer's cumulative counts since the last completed checkpoint
  (``INSERT OR REPLACE``): a failed round's rows are overwritten by the next round's,
  never added twice.
- A checkpoint's last transaction, the one that writes its replay positions, also folds
  every pending row into ``analytics_day`` / ``analytics_hour`` and deletes them
  (``fold``): in the writer process for a paced checkpoint, so the engine's process
  never decodes the rows (the fold of ~100,000 customers' rows, in the engine's SQLite
  thread, held the outbox's writes for 0.6-2 s: the ingest-to-action p99 of ``nudge run
  --analytics on``). Opening the store folds too (a crash between a checkpoint's steps
  left some: their states are committed, so are they).
- ``analytics_folds`` counts the folds committed, in the fold's transaction: the engine
  reads it with the totals to tell whether the round it still holds in memory is in
  them already (its writer committed, the engine has not yet seen it exit), and after a
  failed writer, whether to keep that round's counts pending (not folded) or drop them
  (folded before the writer failed).

``analytics_day_totals`` rolls each day row up into the six figures the all-rules report
shows (``SUMMARY``: entries, sends, suppressions, holdouts, conversions, revenue cents),
as integer columns updated in the same transaction as the day row, so the report reads
18,250 rows of integers for a year of 50 rules instead of decoding every count. A store
written before the table existed gets it filled from the day rows at its next fold.

Rows are compact: one per (day, rule, version), its body a MessagePack list of
``[variant, step, metric, count]`` (about 8-12 bytes a count; a rule-day of a two-step
rule with two variants and a holdout is ~300-500 bytes).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from operator import itemgetter

import msgspec

from state.analytics import (
    DAY_MS,
    HOUR_MS,
    HOUR_RETENTION_DAYS,
    SUMMARY,
    DayTotals,
    Period,
    pending_cells,
    summary_index,
)

__all__ = [
    "ANALYTICS_SCHEMA",
    "fold",
    "folds",
    "prune",
    "read_day_totals",
    "read_periods",
    "write_pending",
]

_Key = tuple[str, int, str]  # (variant, step, metric)
_Adds = dict[tuple[int, str, int], Counter[_Key]]  # (period, rule, version) -> counts

ANALYTICS_SCHEMA = """
CREATE TABLE IF NOT EXISTS analytics_pending (customer_id TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS analytics_day (
    day INTEGER NOT NULL, rule_id TEXT NOT NULL, version INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (day, rule_id, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS analytics_day_totals (
    day INTEGER NOT NULL, rule_id TEXT NOT NULL, version INTEGER NOT NULL,
    entered INTEGER NOT NULL, sends INTEGER NOT NULL, suppressed INTEGER NOT NULL,
    holdout INTEGER NOT NULL, conversions INTEGER NOT NULL, cents INTEGER NOT NULL,
    PRIMARY KEY (day, rule_id, version)
) WITHOUT ROWID;
-- one row: how many folds committed (a report tells by it whether a round's counts are in)
CREATE TABLE IF NOT EXISTS analytics_folds (
    id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS analytics_hour (
    hour INTEGER NOT NULL, rule_id TEXT NOT NULL, version INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (hour, rule_id, version)
) WITHOUT ROWID;
"""

_enc = msgspec.msgpack.Encoder()
_body = msgspec.msgpack.Decoder(list[tuple[str, int, str, int]])


def _merge(db: sqlite3.Connection, table: str, col: str, adds: _Adds) -> None:
    for (period, rule_id, version), counts in adds.items():
        row = db.execute(
            f"SELECT body FROM {table} WHERE {col} = ? AND rule_id = ? AND version = ?",
            (period, rule_id, version),
        ).fetchone()
        have: Counter[_Key] = Counter()
        if row is not None:
            for var, step, metric, n in _body.decode(row[0]):
                have[(var, step, metric)] += n
        have.update(counts)
        body = _enc.encode(sorted((*k, n) for k, n in have.items() if n))
        db.execute(
            f"INSERT OR REPLACE INTO {table} ({col}, rule_id, version, body) VALUES (?, ?, ?, ?)",
            (period, rule_id, version, body),
        )


def _add_totals(db: sqlite3.Connection, days: _Adds) -> None:
    rows = []
    for (day, rule_id, version), counts in days.items():
        t = [0] * len(SUMMARY)
        for (_, _, metric), n in counts.items():
            i = summary_index(metric)
            if i is not None:
                t[i] += n
        rows.append((day, rule_id, version, *t))
    db.executemany(
        "INSERT INTO analytics_day_totals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (day, rule_id, version) DO UPDATE SET "
        + ", ".join(f"{c} = {c} + excluded.{c}" for c in SUMMARY),
        rows,
    )


def _fill_totals(db: sqlite3.Connection) -> None:
    """A store written before ``analytics_day_totals`` existed: roll its days up."""
    if db.execute("SELECT 1 FROM analytics_day_totals LIMIT 1").fetchone() is not None:
        return
    days: _Adds = {}
    for day, rule_id, version, body in db.execute(
        "SELECT day, rule_id, version, body FROM analytics_day"
    ):
        c = days.setdefault((day, rule_id, version), Counter())
        for var, step, metric, n in _body.decode(body):
            c[(var, step, metric)] += n
    _add_totals(db, days)


def fold(db: sqlite3.Connection) -> int:
    """Inside the caller's transaction: add every pending row to the day, day totals and
    hour tables, delete them, and count the fold (``folds``). Returns how many pending
    rows were folded."""
    _fill_totals(db)
    db.execute(
        "INSERT INTO analytics_folds (id, n) VALUES (0, 1) ON CONFLICT (id) DO UPDATE SET n = n + 1"
    )
    rows = db.execute("SELECT body FROM analytics_pending").fetchall()
    if not rows:
        return 0
    days: _Adds = {}
    hours: _Adds = {}
    # Customers who did the same thing in the same hour have byte-equal rows (a cell
    # appears once a row, in the order the engine counted it): each distinct body is
    # decoded once, its counts times its rows (100,000 rows of a few distinct bodies:
    # the whole fold 0.28-0.39 s -> 0.10-0.12 s).
    for body, times in Counter(map(itemgetter(0), rows)).items():
        for rule_id, version, variant, step, metric, hour, n in pending_cells(body):
            key = (variant, step, metric)
            n *= times
            d = days.get(dk := (hour // 24, rule_id, version))
            if d is None:
                d = days[dk] = Counter()
            d[key] = d.get(key, 0) + n
            h = hours.get(hk := (hour, rule_id, version))
            if h is None:
                h = hours[hk] = Counter()
            h[key] = h.get(key, 0) + n
    _merge(db, "analytics_day", "day", days)
    _add_totals(db, days)
    _merge(db, "analytics_hour", "hour", hours)
    db.execute("DELETE FROM analytics_pending")
    return len(rows)


def folds(db: sqlite3.Connection) -> int:
    """How many folds this store has committed: a report reading it in the same
    transaction as the totals knows whether a checkpoint's counts are in them."""
    row = db.execute("SELECT n FROM analytics_folds WHERE id = 0").fetchone()
    return 0 if row is None else int(row[0])


def prune(db: sqlite3.Connection, now_ms: int, retention_days: float) -> None:
    """Drop days older than ``retention_days`` and hours older than
    ``HOUR_RETENTION_DAYS`` before ``now_ms`` (autocommit: each a range of the key)."""
    day = int((now_ms - retention_days * DAY_MS) // DAY_MS)
    db.execute("DELETE FROM analytics_day WHERE day < ?", (day,))
    db.execute("DELETE FROM analytics_day_totals WHERE day < ?", (day,))
    hour = (now_ms - HOUR_RETENTION_DAYS * DAY_MS) // HOUR_MS
    db.execute("DELETE FROM analytics_hour WHERE hour < ?", (hour,))


def write_pending(db: sqlite3.Connection, rows: Iterable[tuple[str, bytes]]) -> None:
    """Inside the caller's transaction: each customer's cumulative pending counts."""
    db.executemany(
        "INSERT OR REPLACE INTO analytics_pending (customer_id, body) VALUES (?, ?)", rows
    )


def read_periods(
    db: sqlite3.Connection, hourly: bool, first: int, last: int, rule_id: str | None = None
) -> Iterator[Period]:
    """Stored rows of days (or hours) ``first`` to ``last`` inclusive, one rule or all."""
    table, col = ("analytics_hour", "hour") if hourly else ("analytics_day", "day")
    sql = f"SELECT {col}, rule_id, version, body FROM {table} WHERE {col} BETWEEN ? AND ?"
    args: tuple[object, ...] = (first, last)
    if rule_id is not None:
        sql += " AND rule_id = ?"
        args = (first, last, rule_id)
    for period, rid, version, body in db.execute(sql, args).fetchall():
        yield int(period), str(rid), int(version), list(_body.decode(body))


def read_day_totals(db: sqlite3.Connection, first: int, last: int) -> list[DayTotals]:
    """The ``SUMMARY`` figures of every rule and version on days ``first`` to ``last``."""
    sql = "SELECT day, rule_id, version, " + ", ".join(SUMMARY)
    sql += " FROM analytics_day_totals WHERE day BETWEEN ? AND ?"
    return [(r[0], r[1], r[2], r[3:]) for r in db.execute(sql, (first, last))]
