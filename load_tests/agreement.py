"""Oracle vs engine agreement on a (big) generated trace.

Contract: generate a trace with :mod:`load_tests.traffic` (or read ``--trace``), compute the
expected action lines with :mod:`load_tests.oracle`, run ``engine.backtest`` over the same
lines with the stock recipes, and compare the two outputs byte for byte (the engine's
``write_actions`` order). Prints counts and timings; on any difference prints a
:func:`load_tests.diff.diff_actions` report and exits 1. Runs the two sequentially (one core).

``--segments``: instead, the membership timeline of the seven stock segments, from
:mod:`load_tests.oracle_segments` and from the core running ``rules/recipes`` +
``rules/segments`` over the trace the way ``engine.backtest`` does (clock moved to each
event, timers fired at their due time, a 400-day drain), each change a
(time, customer, segment, entered|exited) line; prints entries and exits per segment on
both sides, the number of differing lines and the first differences; exit 1 on any.

    python -m load_tests.agreement --customers 100000 --events 1000000 --seed 1
    python -m load_tests.agreement --customers 100000 --events 1000000 --segments
    # clock changes in the trace, storefront opt-outs, attributed feedback, re-sent orders
    python -m load_tests.agreement --events 1000000 --start 2026-03-08T00:00:00Z \
        --days 31 --zones dst --unsubscribe-share 0.02 --attributed-share 0.5 \
        --retry-share 0.05
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from load_tests.diff import diff_actions
from load_tests.oracle import OracleStats, oracle_lines
from load_tests.oracle_segments import Change, SegmentStats, change_line, segment_changes
from load_tests.traffic import (
    DEFAULT_START,
    DST_TIMEZONES,
    TIMEZONES,
    TrafficConfig,
    generate,
)

__all__ = ["compare_segments", "engine_lines", "engine_segment_changes", "main"]

SEGMENTS_DIR = Path(__file__).resolve().parent.parent / "rules" / "segments"


def engine_lines(path: str) -> tuple[list[bytes], dict[str, Any]]:
    """The engine's backtest output lines for the trace at ``path``, and its summary."""
    from engine.backtest import backtest, write_actions
    from rules.ruleset import load_ruleset

    with open(path, "rb") as f:
        result = backtest(load_ruleset(), f)
    buf = io.BytesIO()
    write_actions(result, buf)
    return buf.getvalue().splitlines(), result.summary()


def engine_segment_changes(lines: Any) -> tuple[list[Change], dict[str, int]]:
    """The core's segment membership changes over the trace ``lines`` (rules/recipes +
    rules/segments), sorted like the oracle's, and counts (events, duplicates, errors).
    The loop is ``engine.backtest``'s, with an output handler that keeps
    ``Output.segment_changes``."""
    from engine.backtest import DRAIN_DAYS, BacktestResult, read_trace
    from engine.driver import Driver
    from engine.output import Output
    from rules.ruleset import RECIPES_DIR, load_ruleset

    rs = load_ruleset([RECIPES_DIR, SEGMENTS_DIR])
    changes: list[Change] = []
    errors = 0

    def collect(out: Output) -> None:
        nonlocal errors
        errors += len(out.errors)
        for cid, seg, entered, at in out.segment_changes:
            changes.append((at, cid, seg, "entered" if entered else "exited"))

    driver = Driver(rs, on_output=collect)
    result = BacktestResult()
    last = None
    for ev in read_trace(lines, result):
        result.events += 1
        if last is None:
            driver.clock.set(ev.ts)
        if driver.feed(ev).duplicate:
            result.duplicates += 1
        last = driver.clock.now()
    if last is not None:
        driver.drain(last + DRAIN_DAYS * 86_400_000)
    changes.sort()
    counts = {
        "events": result.events,
        "duplicates": result.duplicates,
        "rejected": len(result.rejected),
        "errors": errors,
    }
    return changes, counts


def _per_segment(changes: list[Change]) -> dict[str, list[int]]:
    """segment -> [entries, exits]"""
    tally: dict[str, list[int]] = {}
    for _, _, seg, kind in changes:
        tally.setdefault(seg, [0, 0])[kind == "exited"] += 1
    return dict(sorted(tally.items()))


def compare_segments(
    expected: list[Change], actual: list[Change], first: int = 10
) -> dict[str, Any]:
    """Per-segment entries/exits on both sides, how many lines differ (oracle only +
    engine only, as multisets) and the first ``first`` differing lines in time order."""
    exp, act = Counter(expected), Counter(actual)
    missing = exp - act  # the oracle has them, the engine not
    extra = act - exp
    diffs = sorted(
        [(ch, "oracle only") for ch in missing.elements()]
        + [(ch, "engine only") for ch in extra.elements()]
    )
    oracle_tally, engine_tally = _per_segment(expected), _per_segment(actual)
    return {
        "agree": not diffs,
        "changes": {"oracle": len(expected), "engine": len(actual)},
        "by_segment": {
            seg: {
                "oracle": dict(
                    zip(("entered", "exited"), oracle_tally.get(seg, [0, 0]), strict=True)
                ),
                "engine": dict(
                    zip(("entered", "exited"), engine_tally.get(seg, [0, 0]), strict=True)
                ),
            }
            for seg in sorted(set(oracle_tally) | set(engine_tally))
        },
        "differing_lines": len(diffs),
        "oracle_only": sum(missing.values()),
        "engine_only": sum(extra.values()),
        "customers_differing": len({ch[1] for ch, _ in diffs}),
        "first_differences": [
            {"side": side, **orjson.loads(change_line(ch))} for ch, side in diffs[:first]
        ],
    }


def run_segments(path: str) -> int:
    """The ``--segments`` mode over the trace at ``path``: 0 when both agree."""
    t0 = time.perf_counter()
    stats = SegmentStats()
    with open(path, "rb") as f:
        expected = segment_changes(f, stats)
    dt = time.perf_counter() - t0
    print(
        f"oracle: {stats.events} events ({stats.duplicates} duplicates, {stats.late} late, "
        f"{stats.not_counted} bucket counts past retention), {stats.timers} re-evaluations,"
        f" {len(expected)} changes in {dt:.1f}s ({stats.events / dt:,.0f} events/s); "
        f"customers excluded: 0"
    )
    gc.collect()
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        actual, counts = engine_segment_changes(f)
    dt = time.perf_counter() - t0
    print(
        f"engine: {counts['events']} events ({counts['duplicates']} duplicates, "
        f"{counts['rejected']} rejected, {counts['errors']} expression errors), "
        f"{len(actual)} changes in {dt:.1f}s ({counts['events'] / dt:,.0f} events/s)"
    )
    report = compare_segments(expected, actual)
    print(f"{'segment':<20} {'oracle in':>10} {'out':>10} {'engine in':>10} {'out':>10}")
    for seg, sides in report["by_segment"].items():
        o, e = sides["oracle"], sides["engine"]
        print(
            f"{seg:<20} {o['entered']:>10,} {o['exited']:>10,} "
            f"{e['entered']:>10,} {e['exited']:>10,}"
        )
    if report["agree"]:
        print(f"AGREE: {len(expected)} identical segment change lines")
        return 0
    print(
        f"DISAGREE: {report['differing_lines']} differing lines ({report['oracle_only']} "
        f"oracle only, {report['engine_only']} engine only) over "
        f"{report['customers_differing']} customers; first differences:"
    )
    for d in report["first_differences"]:
        sys.stdout.buffer.write(orjson.dumps(d) + b"\n")
    return 1


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
    ap.add_argument(
        "--start",
        default=None,
        help="trace start, RFC 3339 (default 2026-01-05Z; 2026-03-08T00:00:00Z spans the "
        "spring-forward nights of New York and Paris and the autumn one of Sydney)",
    )
    ap.add_argument("--days", type=float, default=28.0)
    ap.add_argument(
        "--zones",
        choices=("stock", "dst"),
        default="stock",
        help="customer time zones: the generator's, or those plus Australia/Lord_Howe "
        "(a 30-minute DST shift)",
    )
    ap.add_argument(
        "--unsubscribe-share",
        type=float,
        default=0.0,
        help="share of sessions followed by a storefront opt-out (email_unsubscribed, ...)",
    )
    ap.add_argument(
        "--attributed-share",
        type=float,
        default=0.0,
        help="share of opens and clicks naming the rule and template they are about",
    )
    ap.add_argument(
        "--retry-share",
        type=float,
        default=0.0,
        help="share of orders and refunds re-sent later under new event ids",
    )
    ap.add_argument("--keep", action="store_true", help="keep the generated trace file")
    ap.add_argument(
        "--segments",
        action="store_true",
        help="compare the stock segments' membership changes instead of the actions",
    )
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
            start=(
                DEFAULT_START
                if args.start is None
                else int(datetime.fromisoformat(args.start).astimezone(UTC).timestamp() * 1000)
            ),
            days=args.days,
            timezones=DST_TIMEZONES if args.zones == "dst" else TIMEZONES,
            unsubscribe_share=args.unsubscribe_share,
            attributed_share=args.attributed_share,
            retry_share=args.retry_share,
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
    if args.segments:
        try:
            return run_segments(path)
        finally:
            if args.trace is None and not args.keep:
                os.unlink(path)
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
