"""Where the segments' cost goes in the core (issue 16): the stock recipes alone (off)
against the recipes plus the segment rule paths (on, with RFM boundaries and a CLV model as
``bench_core --compare --population`` has them), in one process on one trace, alternating:

1. as the engine runs: events and the 400-day timer drain; the segment timers that fired
   (timer outputs on minus off) and the membership changes;
2. the segment timer never scheduled: memberships then change only at events. Not the
   engine's semantics (a lapsed customer would never lapse): a measurement of what
   evaluating segments at events costs alone, so the rest of case 1 is the timers';
3. the extra microseconds per event by event type, one event at a time (segment timer
   off as in 2), and each type's share of the off side's time.

    python -m load_tests.bench_segment_cost --customers 50000 --events 300000 --rounds 2
"""

from __future__ import annotations

import argparse
import gc
import sys
from typing import Any

import orjson

from engine.backtest import BacktestResult, read_trace
from engine.driver import Driver
from engine.intelligence.population import Population
from load_tests.bench_core import (
    median_ratio,
    run_trace,
    time_by_type,
    trace_path,
    trace_population,
    use_population,
)
from rules.ruleset import RECIPES_DIR, load_ruleset
from state.customer import SEGMENT_TIMER
from state.memory import MemoryTimers

__all__ = ["NoSegmentTimer", "main"]


class NoSegmentTimer(MemoryTimers):
    """Timers without the segment timer: scheduling it does nothing (measurement only)."""

    def schedule(self, customer_id: str, rule_id: str, due: int) -> None:
        if rule_id != SEGMENT_TIMER:
            super().schedule(customer_id, rule_id, due)


def _whole(
    lines: list[bytes], sides: dict[str, list[str]], pop: Population, rounds: int
) -> dict[str, Any]:
    """Cases 1 and 2: events/s of events and drain, per side and round."""
    report: dict[str, Any] = {}
    for case, timers in (("as_run", MemoryTimers), ("segment_timer_off", NoSegmentTimer)):
        rates: dict[str, list[int]] = {"off": [], "on": []}
        fired: dict[str, int] = {}
        changes = 0
        for _ in range(rounds):
            for side, rules in sides.items():
                driver, result, elapsed = run_trace(
                    lines, rules, pop if side == "on" else None, timers=timers()
                )
                rates[side].append(round(result.events / elapsed))
                fired[side] = result.errors["timers_fired"]
                if side == "on":
                    changes = result.errors["segment_changes"]
                del driver
                gc.unfreeze()
                gc.collect()
        report[case] = {
            "events_per_s_off": rates["off"],
            "events_per_s_on": rates["on"],
            "on_over_off_median": median_ratio(rates["off"], rates["on"]),
            "segment_timer_fires": fired["on"] - fired["off"],
            "segment_changes": changes,
        }
    return report


def _by_type(
    lines: list[bytes], sides: dict[str, list[str]], pop: Population, rounds: int
) -> dict[str, dict[str, float]]:
    """Case 3: the best of ``rounds`` per side, by event type."""
    events = list(read_trace(lines, BacktestResult()))
    best: dict[str, dict[str, float]] = {"off": {}, "on": {}}
    count: dict[str, int] = {}
    for _ in range(rounds):
        for side, rules in sides.items():
            driver = Driver(load_ruleset(rules), timers=NoSegmentTimer())
            if side == "on":
                use_population(driver, pop)
            spent, count = time_by_type(driver, events)
            mine = best[side]
            for t, s in spent.items():
                mine[t] = min(mine.get(t, s), s)
            del driver
            gc.unfreeze()
            gc.collect()
    total_off = sum(best["off"].values())
    extra = {t: best["on"][t] - best["off"].get(t, 0.0) for t in best["on"]}
    return {
        t: {
            "events": count[t],
            "us_off": round(best["off"].get(t, 0.0) / count[t] * 1e6, 1),
            "us_on": round(best["on"][t] / count[t] * 1e6, 1),
            "extra_pct_of_off": round(100 * extra[t] / total_off, 1),
        }
        for t in sorted(extra, key=extra.__getitem__, reverse=True)
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="where the segments' cost goes in the core")
    p.add_argument("--customers", type=int, default=50_000)
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2, help="off/on pairs of each case")
    p.add_argument("--with", dest="extra", nargs="+", default=["rules/segments"])
    args = p.parse_args(argv)
    with trace_path(args.customers, args.events, args.seed).open("rb") as fh:
        lines = fh.readlines()
    recipes = [str(RECIPES_DIR)]
    sides = {"off": recipes, "on": [*recipes, *args.extra]}
    pop = trace_population(lines)
    report: dict[str, Any] = {"events": len(lines), "with": args.extra, "rounds": args.rounds}
    report.update(_whole(lines, sides, pop, args.rounds))
    report["extra_by_type_segment_timer_off"] = _by_type(lines, sides, pop, args.rounds)
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
