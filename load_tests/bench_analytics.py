"""Campaign analytics cost: (1) core processing throughput of one partition with
analytics on vs off, on the same trace in the same run (the recipes, a synthetic
storefront trace); (2) the report over a year of stored days for N rules: bytes per
rule-day on disk and the time to build ``/v1/reports/rules`` (from the day totals, as
the HTTP handler does; and from every decoded count, for comparison) and one rule's
report (SQLite read, decode, aggregate).

    python -m load_tests.bench_analytics [--events 200000] [--rules 50] [--days 365]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
from collections import Counter
from pathlib import Path

import msgspec
import orjson

from engine.analytics.report import (
    day_totals,
    gather,
    rule_detail,
    rules_summary,
    rules_summary_totals,
)
from engine.embedded.storage.sqlite import SqliteStore
from engine.events import decode_event
from engine.partition import Partition
from engine.testing import START
from engine.types import Event
from load_tests.traffic import TrafficConfig, generate
from rules.ruleset import RECIPES_DIR, load_ruleset
from state.analytics import DAY_MS

_enc = msgspec.msgpack.Encoder()


def _throughput(events: list[Event], analytics: bool) -> float:
    part = Partition(0, load_ruleset([str(RECIPES_DIR)]), lambda out: None, analytics)
    t0 = time.perf_counter()
    for seq, ev in enumerate(events, 1):
        part.apply(seq, ev.ts, ev)
    return len(events) / (time.perf_counter() - t0)


def _fill(path: Path, rules: int, days: int) -> int:
    store = SqliteStore(path, "NORMAL")
    rng = random.Random(7)
    first = START // DAY_MS - days
    rows = []
    for d in range(first, first + days):
        for r in range(rules):
            cells = []
            for variant in ("a", "b", "holdout"):
                cells += [(variant, -1, "entered", rng.randint(50, 500))]
                cells += [(variant, -1, "conversions", rng.randint(0, 50))]
                cells += [(variant, -1, "revenue_cents", rng.randint(0, 500_000))]
                for step in (0, 2):
                    cells += [(variant, step, "reached", rng.randint(10, 500))]
                cells += [(variant, 1, "sent:email", rng.randint(10, 400))]
                cells += [(variant, 3, "suppressed:consent", rng.randint(0, 40))]
                cells += [(variant, -1, "exited:order_completed", rng.randint(0, 40))]
            rows.append((d, f"rule-{r:02d}", 1, _enc.encode(sorted(cells))))
    store.sdb.executemany("INSERT INTO analytics_day VALUES (?, ?, ?, ?)", rows)
    size = sum(len(r[3]) + len(r[1]) + 16 for r in rows)
    store.close()
    return size // len(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rules", type=int, default=50)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    cfg = TrafficConfig(events=args.events, customers=max(1000, args.events // 20))
    events = [decode_event(orjson.dumps(e)) for e in generate(cfg)]
    off = _throughput(events, False)
    on = _throughput(events, True)
    off2 = _throughput(events, False)  # again: order effects
    base = max(off, off2)
    print(
        f"core throughput, one partition, {len(events)} events: analytics off "
        f"{base:,.0f}/s, on {on:,.0f}/s ({100 * (on / base - 1):+.1f}%)"
    )

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        per_row = _fill(path, args.rules, args.days)
        store = SqliteStore(path, "NORMAL")
        last = START // DAY_MS - 1
        first = last - args.days + 1
        disk = (path / "states.db").stat().st_size
        best_all = best_decoded = best_one = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            totals = store.analytics_day_totals(first, last)
            rules_summary_totals(day_totals(totals, Counter(), first, last), first, last, [])
            best_all = min(best_all, time.perf_counter() - t0)
            t0 = time.perf_counter()  # the same report from every decoded count
            stored = store.analytics_periods(False, first, last)
            counts = gather(stored, Counter(), False, first, last)
            rules_summary(counts, first, last, [])
            best_decoded = min(best_decoded, time.perf_counter() - t0)
            t0 = time.perf_counter()
            stored = store.analytics_periods(False, first, last, "rule-07")
            counts = gather(stored, Counter(), False, first, last, "rule-07")
            rule_detail("rule-07", None, counts, counts, False, first, last)
            best_one = min(best_one, time.perf_counter() - t0)
        store.close()
        with sqlite3.connect(path / "states.db") as db:
            n = db.execute("SELECT COUNT(*) FROM analytics_day").fetchone()[0]
        print(
            f"report over {args.days} days x {args.rules} rules ({n} rule-days, "
            f"~{per_row} B per rule-day, states.db {disk / 1e6:.1f} MB): all rules "
            f"{1000 * best_all:.0f} ms (from decoded counts {1000 * best_decoded:.0f} ms), "
            f"one rule {1000 * best_one:.0f} ms (best of {args.repeat})"
        )


if __name__ == "__main__":
    main()
