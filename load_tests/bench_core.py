"""Benchmark: the core over a synthetic trace on one core, and memory per customer.

Generates (or reads) a JSONL trace, then runs `nudge backtest`'s loop over it in this
process: decode (msgspec), dedup, state update, rule evaluation, timers (drained for 400
days after the last event). Prints events/s on one core and, in a second pass under
tracemalloc, the bytes held per customer state (timers included).

    python -m load_tests.bench_core --customers 100000 --events 1000000
    python -m load_tests.bench_core --by-type 200000   # where the time goes, by event type
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import orjson

from engine.backtest import BacktestResult, read_trace
from engine.driver import Driver
from engine.intelligence.clv import CLVParams
from engine.intelligence.population import Population
from engine.intelligence.rfm import RfmBuilder
from engine.output import Output
from engine.types import Event
from load_tests.clv_synth import TRUE
from load_tests.storefront import StorefrontConfig, storefront
from rules.ruleset import RECIPES_DIR, load_ruleset
from state.memory import MemoryStore, MemoryTimers

__all__ = [
    "main",
    "median_ratio",
    "run_trace",
    "time_by_type",
    "trace_path",
    "trace_population",
    "use_population",
]

_DAY = 86_400_000


def _trace(path: Path, customers: int, events: int, seed: int) -> Path:
    if path.exists():
        return path
    cfg = StorefrontConfig(customers=customers, events=events, seed=seed)
    with path.open("wb") as fh:
        for ev in storefront(cfg):
            fh.write(orjson.dumps(ev) + b"\n")
    return path


def trace_path(customers: int, events: int, seed: int) -> Path:
    """The storefront trace for these parameters in the temp dir, generated if missing."""
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"nudge-trace-{customers}-{events}-{seed}.jsonl"
    return _trace(path, customers, events, seed)


def time_by_type(driver: Driver, events: list[Event]) -> tuple[dict[str, float], dict[str, int]]:
    """``events`` fed to ``driver`` one at a time: seconds and events by event type (timers
    that come due fire inside the next event's ``feed`` and are counted with it)."""
    gc.collect()
    gc.freeze()
    spent: dict[str, float] = {}
    count: dict[str, int] = {}
    clock = time.perf_counter
    for ev in events:
        t0 = clock()
        driver.feed(ev)
        spent[ev.type] = spent.get(ev.type, 0.0) + clock() - t0
        count[ev.type] = count.get(ev.type, 0) + 1
    return spent, count


def _by_type(lines: list[bytes]) -> dict[str, dict[str, float]]:
    """Microseconds per event by event type (:func:`time_by_type`)."""
    spent, count = time_by_type(Driver(load_ruleset()), list(read_trace(lines, BacktestResult())))
    total = sum(spent.values())
    return {
        t: {
            "events": count[t],
            "us_per_event": round(spent[t] / count[t] * 1e6, 1),
            "share_pct": round(100 * spent[t] / total, 1),
        }
        for t in sorted(spent, key=spent.__getitem__, reverse=True)
    }


def run_trace(
    lines: list[bytes],
    rules: list[str] | None = None,
    population: Population | None = None,
    drain_days: int = 400,
    timers: MemoryTimers | None = None,
) -> tuple[Driver, BacktestResult, float]:
    """The trace through a Driver (``timers``: its timer store), then its timers drained
    for ``drain_days``; returns the seconds of both (``result.errors``: 'event_phase_ms',
    the events alone; 'actions'; 'timers_fired'; 'segment_changes')."""
    rs = load_ruleset(rules)
    result = BacktestResult()
    actions = fired = changes = 0

    def collect(out: Output) -> None:
        nonlocal actions, fired, changes
        actions += len(out.actions)
        changes += len(out.segment_changes)
        if out.timer_due is not None:
            fired += 1

    driver = Driver(rs, on_output=collect, timers=timers)
    if population is not None:
        use_population(driver, population)
    gc.collect()
    gc.freeze()  # long-lived state: keep the cyclic GC off the hot path's back
    t0 = time.perf_counter()
    for ev in read_trace(lines, result):
        result.events += 1
        driver.feed(ev)
    elapsed = time.perf_counter() - t0
    driver.drain(driver.clock.now() + drain_days * _DAY)
    elapsed_all = time.perf_counter() - t0
    result.errors["actions"] = actions
    result.errors["timers_fired"] = fired
    result.errors["segment_changes"] = changes
    result.errors["event_phase_ms"] = round(elapsed * 1000)
    return driver, result, elapsed_all if elapsed_all > elapsed else elapsed


def use_population(driver: Driver, population: Population) -> None:
    """Hand ``driver``'s processor ``population`` (RFM, CLV), as a runtime does."""
    rs = driver.processor.ruleset
    driver.processor.population = population
    rs.use_population(population.key(rs.segments_population))


def median_ratio(off: list[int], on: list[int]) -> float:
    """The median of the rounds' on/off ratios (pairs in order), to 3 decimals."""
    ratios = sorted(b / a for a, b in zip(off, on, strict=True))
    return round(ratios[len(ratios) // 2], 3)


def trace_population(lines: list[bytes]) -> Population:
    """RFM boundaries over the trace's customers at its end, and a CLV model (the
    parameters load_tests/clv_synth.py simulates from): what `nudge run` would hold."""
    driver = Driver(load_ruleset())
    for ev in read_trace(lines, BacktestResult()):
        driver.feed(ev)
    builder = RfmBuilder()
    now = driver.clock.now()
    for st in driver.store:
        builder.add(st, now)
    t = TRUE
    clv = CLVParams(
        t.r, t.alpha, t.a, t.b, t.p, t.q, t.v, fitted_at=now, version=1, customers=len(driver.store)
    )
    return Population(builder.build(now), clv)


def _memory(
    lines: list[bytes], rules: list[str] | None = None, population: Population | None = None
) -> dict[str, int]:
    """States and timers held after the events, measured by tracemalloc, once the
    customers idle at the end are compacted (what the runtimes' periodic sweep does):
    otherwise the figure depends on where the driver's last sweep, every 20,000 outputs,
    fell before the end (up to ~450 bytes/customer on the 50k/300k trace)."""
    rs = load_ruleset(rules)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    driver = Driver(rs)
    if population is not None:
        use_population(driver, population)
    res = BacktestResult()
    for ev in read_trace(lines, res):
        driver.feed(ev)
    store = driver.store
    assert isinstance(store, MemoryStore)
    store.compact_idle(driver.clock.now() - driver.idle_ms)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {
        "bytes_per_customer": round(held / max(1, len(driver.store))),
        "pending_timers_at_end": len(driver.timers),
    }


def _compare(
    lines: list[bytes], extra: list[str], rounds: int, population: bool = False
) -> dict[str, Any]:
    """The stock recipes alone (off) and with the ``extra`` rule paths (on; with
    ``population``, also RFM boundaries and a CLV model), alternating off/on ``rounds``
    times in this process: events/s of each round (events and the 400-day timer drain),
    events/s of the events alone, memory of each."""
    recipes = [str(RECIPES_DIR)]
    sides = {"off": recipes, "on": [*recipes, *extra]}
    pops = {"off": None, "on": trace_population(lines) if population else None}
    rates: dict[str, list[int]] = {"off": [], "on": []}
    event_rates: dict[str, list[int]] = {"off": [], "on": []}
    actions: dict[str, int] = {}
    for _ in range(rounds):
        for side, rules in sides.items():
            driver, result, elapsed = run_trace(lines, rules, pops[side])
            rates[side].append(round(result.events / elapsed))
            event_rates[side].append(
                round(result.events * 1000 / max(1, result.errors["event_phase_ms"]))
            )
            actions[side] = result.errors["actions"]
            del driver
            gc.unfreeze()
            gc.collect()
    report: dict[str, Any] = {
        "events": len(lines),
        "with": extra,
        "population": population,
        "rounds": rounds,
    }
    for side, rules in sides.items():
        report[side] = {
            "events_per_s": rates[side],
            "events_per_s_events_alone": event_rates[side],
            "actions": actions[side],
            **_memory(lines, rules, pops[side]),
        }
    for name, got in (("", rates), ("_events_alone", event_rates)):
        report[f"on_over_off_median{name}"] = median_ratio(got["off"], got["on"])
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="core events/s and memory per customer")
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--trace", type=Path, default=None, help="existing JSONL trace to use")
    p.add_argument(
        "--by-type",
        type=int,
        default=0,
        metavar="N",
        help="instead: time the first N events one by one and print us/event by type",
    )
    p.add_argument(
        "--compare",
        metavar="PATH",
        nargs="+",
        help="instead: the recipes alone against the recipes plus the PATHs (e.g."
        " rules/segments rules/intelligence), alternating, events/s and bytes/customer of each",
    )
    p.add_argument(
        "--population",
        action="store_true",
        help="with --compare: the 'on' side also has RFM boundaries and a CLV model",
    )
    p.add_argument("--rounds", type=int, default=3, help="with --compare: off/on pairs")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    path = args.trace or trace_path(args.customers, args.events, args.seed)
    gen_s = time.perf_counter() - t0
    with path.open("rb") as fh:
        lines = fh.readlines()
    if args.compare:
        compared = _compare(lines, args.compare, args.rounds, args.population)
        print(orjson.dumps(compared, option=orjson.OPT_INDENT_2).decode())
        return 0
    if args.by_type:
        by_type = _by_type(lines[: args.by_type])
        print(orjson.dumps(by_type, option=orjson.OPT_INDENT_2).decode())
        return 0

    driver, result, elapsed = run_trace(lines)
    report: dict[str, Any] = {
        "events": result.events,
        "rejected": len(result.rejected),
        "actions": result.errors["actions"],
        "customers": len(driver.store),
        "seconds": round(elapsed, 2),
        "events_per_s_one_core": round(result.events / elapsed),
        "trace_generation_s": round(gen_s, 1),
    }
    del driver
    gc.unfreeze()
    gc.collect()

    report.update(_memory(lines))
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
