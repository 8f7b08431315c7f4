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
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine.intelligence.clv import CLVParams, expected_purchases
from load_tests.clv_synth import TRUE, Synth, TrueParams, simulate

__all__ = ["Group", "holdout_groups", "main", "recovery", "write_plot"]

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
    rec: list[tuple[str, float, float, float]],
    title: str,
) -> Path:
    """Two panels: holdout orders per customer by frequency group, actual vs predicted;
    relative error of each fitted parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = [g for g in groups if g.label != "all"]
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
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="BG/NBD + Gamma-Gamma fit on synthetic customers")
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--calibration-days", type=float, default=365.0)
    ap.add_argument("--holdout-days", type=float, default=180.0)
    ap.add_argument("--out", type=Path, default=Path("clv-holdout.png"), help="PNG plot path")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    data = simulate(
        args.customers,
        seed=args.seed,
        calibration_days=args.calibration_days,
        holdout_days=args.holdout_days,
    )
    simulate_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    import pymc_marketing.clv  # noqa: F401  (timed apart from the fit)

    import_s = time.perf_counter() - t0
    from engine.intelligence.fit import fit

    t0 = time.perf_counter()
    params = fit(data.summaries, fitted_at=0)
    fit_s = time.perf_counter() - t0

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
    print(
        "\n| repeat orders (calibration) | customers | actual holdout orders / customer"
        " | predicted | error |\n|---|---:|---:|---:|---:|"
    )
    for g in groups:
        off = f"{100 * (g.predicted / g.actual - 1):+.1f}%" if g.actual else "-"
        print(f"| {g.label} | {g.customers:,} | {g.actual:.3f} | {g.predicted:.3f} | {off} |")
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


if __name__ == "__main__":
    sys.exit(main())
