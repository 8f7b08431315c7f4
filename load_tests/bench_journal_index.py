"""Benchmark: the event loop's cost of keeping the erase's journal index current, per
journal row, read back and decoded (a row the group commit did not hand over: at start,
or noted late) against noted after its commit (engine/embedded/storage/journal_index.py).

Rows of 100 product views of distinct customers, as ``bench_ingest`` sends them; each
trial journals them into a fresh store and indexes them both ways, alternating.

    python -m load_tests.bench_journal_index --rows 2500 --trials 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import orjson

from engine.embedded.storage.sqlite import SqliteStore
from engine.types import Event

__all__ = ["main"]

_events = msgspec.json.Decoder(list[Event])


def _rows(n: int, customers: int) -> list[tuple[int, bytes]]:
    rows = []
    for r in range(n):
        events = [
            {
                "event_id": f"e{r}-{i}",
                "type": "product_viewed",
                "customer_id": f"c{(r * 100 + i) % customers}",
                "timestamp": "2026-12-04T10:00:00Z",
                "properties": {"product_id": f"p{i % 50}", "price": 19.5},
            }
            for i in range(100)
        ]
        rows.append((100, orjson.dumps(events)))
    return rows


def _once(rows: list[tuple[int, bytes]], noted: bool) -> tuple[float, int]:
    """Seconds to index ``rows`` (after journaling them), and how many were read back."""
    events = [_events.decode(body) for _, body in rows] if noted else []
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp), synchronous="NORMAL")
        first = store.append(1, rows)
        t0 = time.perf_counter()
        if noted:
            store.journal_index.note(first, events)
        read = store.refresh_index()
        took = time.perf_counter() - t0
        store.close()
    return took, read


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2500)
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument("--trials", type=int, default=3)
    args = p.parse_args(argv)
    rows = _rows(args.rows, args.customers)
    read_us, noted_us = [], []
    for _ in range(args.trials):
        took, n = _once(rows, noted=False)
        assert n == args.rows
        read_us.append(took / args.rows * 1e6)
        took, n = _once(rows, noted=True)
        assert n == 0
        noted_us.append(took / args.rows * 1e6)
    out = {
        "rows": args.rows,
        "events_per_row": 100,
        "read_us_per_row": [round(x, 1) for x in read_us],
        "noted_us_per_row": [round(x, 1) for x in noted_us],
        "ratio_median": round(statistics.median(noted_us) / statistics.median(read_us), 3),
    }
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
