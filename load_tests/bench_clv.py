"""Benchmark: the prediction models' quality and fit time on synthetic customers.

Customers are drawn from known BG/NBD + Gamma-Gamma parameters (``load_tests.clv_synth``)
over a calibration period, the models are fitted on the calibration summaries
(``engine.intelligence.fit``, pymc-marketing MAP), and the report gives

- parameter recovery: true vs fitted, relative error;
- predicted vs actual orders in the holdout period, by calibration frequency group
  (0 .. 6, 7+ repeat orders), from the closed form ``expected_purchases``;
- times: pymc-marketing import, the fit (graph build + PyTensor compile + optimiser; the
  C compile is cached in ``~/.pytensor``, so a first run on a machine is slower), and the
  closed-form predictions per customer;

as Markdown on stdout, and a PNG plot (holdout by group, recovery errors) at ``--out``.

    python -m load_tests.bench_clv --customers 20000 --out clv.png

``--trace`` does the same on a storefront trace (``load_tests.storefront``, made by
``load_tests.bench_core.trace_path`` from ``--customers --events --seed``): each customer's
``order_completed`` events (time, total) are read from the JSON lines, the trace's time span
is split into a calibration period (first 2/3) and a holdout (last 1/3), and the customers
with an order in calibration are summarised at its end, fitted, and compared in the
holdout. There are no true parameters (so no recovery panel), and the trace is a few weeks
of synthetic sessions, not the months of history BTYD models are meant for: expect poor
calibration, and read the table as what the models make of such data.

    python -m load_tests.bench_clv --trace --customers 100000 --events 1000000 --seed 1
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from engine.intelligence.clv import DAY_MS, CLVParams, Summary, expected_purchases
from load_tests.clv_synth import TRUE, Synth, TrueParams, simulate

__all__ = ["Group", "TraceSplit", "holdout_groups", "main", "recovery", "trace_split", "write_plot"]

TOP_GROUP = 7


@dataclass(frozen=True, slots=True)
class Group:
    """Customers with ``label`` repeat orders in the calibration period."""

    label: str
    customers: int
    actual: float  # mean holdout orders
    predicted: float  # mean expected holdout orders


def recovery(true: TrueParams, got: CLVParams) -> list[tuple[str, float, float, float]]:
    """(name, true, fitted, relative error) per parameter."""
    return [(k, v, getattr(got, k), getattr(got, k) / v - 1) for k, v in true.as_dict().items()]


@dataclass(frozen=True, slots=True)
class TraceSplit:
    """A trace's orders split at ``calibration_end`` (epoch ms): ``data`` holds the
    calibration summaries of the customers with an order before it and their holdout order
    counts; ``start`` / ``end`` are the trace's first and last event times."""

    data: Synth
    start: int
    calibration_end: int
    end: int
    events: int
    customers: int  # distinct customers in the trace
    buyers: int  # customers with any order
    orders: int


def _ms(ts: str) -> int:
    return int(datetime.fromisoformat(ts).timestamp() * 1000)


def trace_split(lines: Iterable[bytes], calibration_share: float = 2 / 3) -> TraceSplit:
    """Read a JSONL trace in time order: each customer's ``order_completed`` (time, total),
    the span from the first to the last event, split after ``calibration_share`` of it."""
    orders: dict[str, list[tuple[int, float]]] = {}
    seen: set[str] = set()
    first: int | None = None
    last = ""
    n = 0
    for line in lines:
        if not line.strip():
            continue
        ev = orjson.loads(line)
        n += 1
        last = ev["timestamp"]
        if first is None:
            first = _ms(last)
        cid = ev.get("customer_id")
        if cid is not None:
            seen.add(cid)
        if ev.get("type") == "order_completed" and cid is not None:
            total = float(ev.get("properties", {}).get("total", 0.0))
            orders.setdefault(cid, []).append((_ms(last), total))
    if first is None:
        raise ValueError("empty trace")
    end = _ms(last)
    cut = first + int((end - first) * calibration_share)
    summaries: list[Summary] = []
    holdout: list[int] = []
    for cid in sorted(orders):
        cal = [o for o in orders[cid] if o[0] <= cut]
        if not cal:
            continue
        t0, t1 = min(t for t, _ in cal), max(t for t, _ in cal)
        summaries.append(
            Summary(
                frequency=len(cal) - 1,
                recency=(t1 - t0) / DAY_MS,
                T=(cut - t0) / DAY_MS,
                monetary=sum(v for _, v in cal) / len(cal),
            )
        )
        holdout.append(len(orders[cid]) - len(cal))
    data = Synth(summaries, holdout, (cut - first) / DAY_MS, (end - cut) / DAY_MS)
    return TraceSplit(
        data=data,
        start=first,
        calibration_end=cut,
        end=end,
        events=n,
        customers=len(seen),
        buyers=len(orders),
        orders=sum(len(v) for v in orders.values()),
    )


def holdout_groups(params: CLVParams, data: Synth) -> list[Group]:
    """Mean actual vs predicted holdout orders by calibration frequency (7+ pooled)."""
    acc: dict[int, list[float]] = {}
    for s, h in zip(data.summaries, data.holdout, strict=True):
        row = acc.setdefault(min(s.frequency, TOP_GROUP), [0, 0.0, 0.0])
        row[0] += 1
        row[1] += h
        row[2] += expected_purchases(params, s, data.holdout_days)
    out = []
    for k in sorted(acc):
        n, actual, pred = acc[k]
        label = f"{k}+" if k == TOP_GROUP else str(k)
        out.append(Group(label, int(n), actual / n, pred / n))
    total_n = sum(g.customers for g in out)
    out.append(
        Group(
            "all",
            total_n,
            sum(g.actual * g.customers for g in out) / total_n,
            sum(g.predicted * g.customers for g in out) / total_n,
        )
    )
    return out


def write_plot(
    out: Path,
    groups: list[Group],
    rec: list[tuple[str, float, float, float]] | None,
    title: str,
) -> Path:
    """Two panels: holdout orders per customer by frequency group, actual vs predicted;
    relative error of each fitted parameter. The first only when ``rec`` is None (no true
    parameters to recover)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = [g for g in groups if g.label != "all"]
    if rec is None:
        fig, left = plt.subplots(figsize=(8, 4.8))
    else:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), width_ratios=[3, 2])
    xs = range(len(by))
    width = 0.38
    left.bar([x - width / 2 for x in xs], [g.actual for g in by], width, label="actual")
    left.bar([x + width / 2 for x in xs], [g.predicted for g in by], width, label="predicted")
    left.set_xticks(list(xs), [f"{g.label}\nn={g.customers:,}" for g in by], fontsize=8)
    left.set_xlabel("repeat orders in the calibration period (n: customers)")
    left.set_ylabel("orders per customer in the holdout period")
    left.set_title("Holdout orders by calibration frequency")
    left.legend()
    left.grid(axis="y", alpha=0.3)
    if rec is not None:
        _recovery_panel(right, rec)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _recovery_panel(right: Any, rec: list[tuple[str, float, float, float]]) -> None:
    names = [f"{r[0]}: {r[2]:.3g} (true {r[1]:g})" for r in rec]
    errs = [100 * r[3] for r in rec]
    colors = ["tab:green" if abs(e) <= 10 else "tab:orange" for e in errs]
    ys = range(len(rec))
    right.barh(list(ys), errs, color=colors)
    right.set_yticks(list(ys), names, fontsize=8)
    right.axvline(0, color="black", linewidth=0.8)
    right.invert_yaxis()
    right.set_xlabel("fitted / true - 1 (%)")
    right.set_title("Parameter recovery")
    lim = max(10.0, max(abs(e) for e in errs) * 1.5)
    right.set_xlim(-lim, lim)
    for y, e in zip(ys, errs, strict=True):
        right.annotate(f"{e:+.1f}%", (e, y), xytext=(3 if e >= 0 else -3, 0),
                       textcoords="offset points", va="center",
                       ha="left" if e >= 0 else "right", fontsize=8)  # fmt: skip
    right.grid(axis="x", alpha=0.3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="BG/NBD + Gamma-Gamma fit on synthetic customers")
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--calibration-days", type=float, default=365.0)
    ap.add_argument("--holdout-days", type=float, default=180.0)
    ap.add_argument("--out", type=Path, default=Path("clv-holdout.png"), help="PNG plot path")
    ap.add_argument(
        "--trace",
        action="store_true",
        help="fit on a storefront trace (bench_core.trace_path of --customers --events --seed)"
        " instead of simulated customers",
    )
    ap.add_argument("--events", type=int, default=1_000_000, help="trace events (--trace)")
    args = ap.parse_args(argv)
    if args.trace:
        return _main_trace(args)

    t0 = time.perf_counter()
    data = simulate(
        args.customers,
        seed=args.seed,
        calibration_days=args.calibration_days,
        holdout_days=args.holdout_days,
    )
    simulate_s = time.perf_counter() - t0

    params, import_s, fit_s = _fit_timed(data.summaries)

    t0 = time.perf_counter()
    groups = holdout_groups(params, data)
    predict_us = (time.perf_counter() - t0) / args.customers * 1e6

    rec = recovery(TRUE, params)
    repeat = sum(1 for s in data.summaries if s.frequency > 0)
    print(f"## CLV models on {args.customers:,} synthetic customers (seed {args.seed})\n")
    print(
        f"calibration {args.calibration_days:g} days, holdout {args.holdout_days:g} days; "
        f"{repeat:,} repeat buyers (Gamma-Gamma fitted on these)\n"
    )
    print("| parameter | true | fitted | error |\n|---|---:|---:|---:|")
    for name, true, got, err in rec:
        print(f"| {name} | {true:g} | {got:.4g} | {100 * err:+.1f}% |")
    _print_groups(groups)
    print(
        f"\n| step | time |\n|---|---:|\n"
        f"| simulate | {simulate_s:.2f} s |\n"
        f"| import pymc_marketing.clv | {import_s:.2f} s |\n"
        f"| fit (BG/NBD + Gamma-Gamma, MAP) | {fit_s:.2f} s |\n"
        f"| closed-form expected orders | {predict_us:.1f} us / customer |"
    )
    title = (
        f"BG/NBD + Gamma-Gamma on {args.customers:,} synthetic customers: calibration "
        f"{args.calibration_days:g} d, holdout {args.holdout_days:g} d, fit {fit_s:.1f} s"
    )
    path = write_plot(args.out, groups, rec, title)
    print(f"\nplot: {path}")
    return 0


def _fit_timed(summaries: list[Summary]) -> tuple[CLVParams, float, float]:
    t0 = time.perf_counter()
    import pymc_marketing.clv  # noqa: F401  (timed apart from the fit)

    import_s = time.perf_counter() - t0
    from engine.intelligence.fit import fit

    t0 = time.perf_counter()
    params = fit(summaries, fitted_at=0)
    return params, import_s, time.perf_counter() - t0


def _print_groups(groups: list[Group]) -> None:
    print(
        "\n| repeat orders (calibration) | customers | actual holdout orders / customer"
        " | predicted | error |\n|---|---:|---:|---:|---:|"
    )
    for g in groups:
        off = f"{100 * (g.predicted / g.actual - 1):+.1f}%" if g.actual else "-"
        print(f"| {g.label} | {g.customers:,} | {g.actual:.3f} | {g.predicted:.3f} | {off} |")


def _main_trace(args: argparse.Namespace) -> int:
    from load_tests.bench_core import trace_path

    t0 = time.perf_counter()
    path = trace_path(args.customers, args.events, args.seed)
    trace_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with path.open("rb") as fh:
        split = trace_split(fh)
    read_s = time.perf_counter() - t0
    data = split.data
    params, import_s, fit_s = _fit_timed(data.summaries)
    t0 = time.perf_counter()
    groups = holdout_groups(params, data)
    predict_us = (time.perf_counter() - t0) / max(1, len(data.summaries)) * 1e6

    def day(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")

    repeat = sum(1 for s in data.summaries if s.frequency > 0)
    print(
        f"## CLV models on a storefront trace: {args.customers:,} customers, "
        f"{args.events:,} events, seed {args.seed}\n"
    )
    print(
        f"{path.name}: {split.events:,} events, {split.customers:,} customers, "
        f"{split.buyers:,} buyers, {split.orders:,} orders, "
        f"{day(split.start)} .. {day(split.end)} UTC\n"
    )
    print(
        f"calibration {data.calibration_days:.1f} days (until {day(split.calibration_end)}), "
        f"holdout {data.holdout_days:.1f} days; {len(data.summaries):,} customers with an "
        f"order in calibration, {repeat:,} of them repeat buyers (Gamma-Gamma fitted on "
        "these)\n"
    )
    print(
        "A few weeks of synthetic storefront sessions (load_tests/storefront.py), not the "
        "months of purchase history BG/NBD and Gamma-Gamma are meant for: no true "
        "parameters to recover, and poor calibration is to be expected.\n"
    )
    print("| parameter | fitted |\n|---|---:|")
    for k in ("r", "alpha", "a", "b", "p", "q", "v"):
        print(f"| {k} | {getattr(params, k):.4g} |")
    _print_groups(groups)
    print(
        f"\n| step | time |\n|---|---:|\n"
        f"| trace (generate if missing) | {trace_s:.2f} s |\n"
        f"| read orders from the trace | {read_s:.2f} s |\n"
        f"| import pymc_marketing.clv | {import_s:.2f} s |\n"
        f"| fit (BG/NBD + Gamma-Gamma, MAP) | {fit_s:.2f} s |\n"
        f"| closed-form expected orders | {predict_us:.1f} us / customer |"
    )
    title = (
        f"BG/NBD + Gamma-Gamma on a storefront trace ({args.events:,} events, "
        f"{len(data.summaries):,} buyers)\ncalibration {data.calibration_days:.1f} d, "
        f"holdout {data.holdout_days:.1f} d, fit {fit_s:.1f} s"
    )
    out = write_plot(args.out, groups, None, title)
    print(f"\nplot: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
