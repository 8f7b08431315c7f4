"""Oracle vs engine agreement on a (big) generated trace.

Contract: generate a trace with :mod:`load_tests.traffic` (or read ``--trace``), compute the
expected action lines with :mod:`load_tests.oracle`, run ``engine.backtest`` over the same
lines with the stock recipes, and compare the two outputs byte for byte (the engine's
``write_actions`` order). Prints counts and timings; on any difference prints a
:func:`load_tests.diff.diff_actions` report and exits 1. Runs the two sequentially (one core).

    python -m load_tests.agreement --customers 100000 --events 1000000 --seed 1
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import sys
import tempfile
import time
from typing import Any

import orjson

from load_tests.diff import diff_actions
from load_tests.oracle import OracleStats, oracle_lines
from load_tests.traffic import TrafficConfig, generate

__all__ = ["engine_lines", "main"]


def engine_lines(path: str) -> tuple[list[bytes], dict[str, Any]]:
    """The engine's backtest output lines for the trace at ``path``, and its summary."""
    from engine.backtest import backtest, write_actions
    from rules.ruleset import load_ruleset

    with open(path, "rb") as f:
        result = backtest(load_ruleset(), f)
    buf = io.BytesIO()
    write_actions(result, buf)
    return buf.getvalue().splitlines(), result.summary()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m load_tests.agreement",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--trace", help="an existing JSONL trace (else one is generated)")
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--duplicate-share", type=float, default=0.01)
    ap.add_argument("--late-share", type=float, default=0.02)
    ap.add_argument("--late-hours-share", type=float, default=0.1)
    ap.add_argument("--keep", action="store_true", help="keep the generated trace file")
    args = ap.parse_args(argv)
    path = args.trace
    if path is None:
        cfg = TrafficConfig(
            customers=args.customers,
            events=args.events,
            seed=args.seed,
            duplicate_share=args.duplicate_share,
            late_share=args.late_share,
            late_hours_share=args.late_hours_share,
        )
        fd, path = tempfile.mkstemp(prefix="nudge-trace-", suffix=".jsonl")
        t0 = time.perf_counter()
        n = 0
        with os.fdopen(fd, "wb") as f:
            for ev in generate(cfg):
                f.write(orjson.dumps(ev) + b"\n")
                n += 1
        dt = time.perf_counter() - t0
        print(f"traffic: {n} events in {dt:.1f}s ({n / dt:,.0f}/s) -> {path}")
    try:
        t0 = time.perf_counter()
        stats = OracleStats()
        with open(path, "rb") as f:
            expected = oracle_lines(f, stats)
        dt = time.perf_counter() - t0
        print(
            f"oracle: {stats.events} events ({stats.duplicates} duplicates, "
            f"{stats.too_late} too late), {len(expected)} actions in {dt:.1f}s "
            f"({stats.events / dt:,.0f} events/s)"
        )
        gc.collect()
        t0 = time.perf_counter()
        actual, summary = engine_lines(path)
        dt = time.perf_counter() - t0
        print(
            f"engine: {summary['events']} events ({summary['duplicates_ignored']} duplicates,"
            f" {summary['too_late_for_triggers']} too late), {len(actual)} actions in "
            f"{dt:.1f}s ({int(summary['events']) / dt:,.0f} events/s)"
        )
    finally:
        if args.trace is None and not args.keep:
            os.unlink(path)
    if expected == actual:
        print(f"AGREE: {len(expected)} identical action lines")
        return 0
    report = diff_actions((orjson.loads(x) for x in expected), (orjson.loads(x) for x in actual))
    print("DISAGREE (the oracle follows docs/semantics.md):")
    sys.stdout.buffer.write(orjson.dumps(report.summary(), option=orjson.OPT_INDENT_2) + b"\n")
    if report.ok:
        print("(same actions, different line order)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
