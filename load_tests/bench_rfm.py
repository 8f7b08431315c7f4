"""Micro-benchmark: RFM boundaries from a large base, exact and sketched, and per-score cost.

Builds one synthetic base of ``--customers`` customers with orders (60 % one order,
days since the last order exponential around 120, revenue lognormal per order), then

- times ``RfmBuilder`` over the whole base exactly (``exact_limit`` above the base: keep
  and sort the revenues) and with the default limit (revenues exact up to 50,000, then a
  DDSketch); recency and frequency are counted per distinct value in both;
- times ``score`` over ``--scores`` customers;
- prints the size of the boundaries as stored (JSON of ``to_dict``) and how many scores
  the sketched boundaries change against the exact ones.

Prints only; the figures go to BENCHMARKS.md by hand.

    python -m load_tests.bench_rfm --customers 1000000
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
import tracemalloc

from engine.intelligence.rfm import (
    DAY_MS,
    EXACT_LIMIT,
    RfmBoundaries,
    RfmBuilder,
    recency_days,
    score,
)
from state.customer import CustomerState

__all__ = ["main"]

NOW = 1_790_000_000_000


def make_base(n: int, seed: int) -> list[CustomerState]:
    rng = random.Random(seed)
    base = []
    for i in range(n):
        orders = 1 if rng.random() < 0.6 else 2 + int(rng.expovariate(0.4))
        st = CustomerState(f"c{i}", NOW - 900 * DAY_MS, NOW)
        st.orders = orders
        st.revenue = round(orders * rng.lognormvariate(4, 0.8), 2)
        st.last_order = NOW - int(rng.expovariate(1 / 120) * DAY_MS)
        st.first_order = st.last_order - orders * DAY_MS
        base.append(st)
    return base


def timed_build(base: list[CustomerState], exact_limit: int) -> tuple[RfmBoundaries, float, int]:
    """Boundaries, seconds (every add plus build) and peak traced bytes of the builder."""
    gc.collect()
    tracemalloc.start()
    t0 = time.perf_counter()
    builder = RfmBuilder(exact_limit=exact_limit)
    for st in base:
        builder.add(st, NOW)
    bounds = builder.build(NOW)
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return bounds, dt, peak


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--scores", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    n = args.customers

    t0 = time.perf_counter()
    base = make_base(n, args.seed)
    print(f"base: {n:,} customers with orders, made in {time.perf_counter() - t0:.1f} s")

    # tracemalloc slows allocation-heavy code: time each build once untraced, too
    for name, limit in (("exact", n + 1), (f"sketch (exact <= {EXACT_LIMIT:,})", EXACT_LIMIT)):
        t0 = time.perf_counter()
        b = RfmBuilder(exact_limit=limit)
        for st in base:
            b.add(st, NOW)
        bounds = b.build(NOW)
        dt = time.perf_counter() - t0
        _, _, peak = timed_build(base, limit)
        print(
            f"build {name:28s} {dt:6.2f} s  {dt / n * 1e9:6.0f} ns/customer  "
            f"builder peak {peak / 1e6:6.1f} MB  exact={bounds.exact}"
        )
        print(f"  recency days {bounds.recency}  orders {bounds.frequency}")
        print(f"  revenue {bounds.monetary}")
        if name == "exact":
            exact = bounds
        else:
            sketched = bounds

    sample = base[: args.scores]
    t0 = time.perf_counter()
    for st in sample:
        score(exact, st, NOW)
    dt = time.perf_counter() - t0
    print(f"score: {dt / len(sample) * 1e9:.0f} ns/call over {len(sample):,} customers")

    differ = far = 0
    acc = sketched.relative_accuracy or 0.0
    for st in sample:
        if score(exact, st, NOW) == score(sketched, st, NOW):
            continue
        differ += 1
        assert st.last_order is not None
        values = (recency_days(st.last_order, NOW), st.orders, st.revenue)
        cuts = (exact.recency, exact.frequency, exact.monetary)
        # integer metrics round to 1, money to cents
        if not any(
            abs(v - k) <= acc * abs(k) + slack
            for v, ks, slack in zip(values, cuts, (1.0, 1.0, 0.01), strict=True)
            for k in ks
        ):
            far += 1
    print(
        f"sketch vs exact: {differ:,} of {len(sample):,} scores differ "
        f"({differ / len(sample):.2%}); {far} of them farther than the relative error "
        f"({acc:.1%}) from an exact cut"
    )
    stored = json.dumps(sketched.to_dict(), separators=(",", ":")).encode()
    print(f"boundaries as stored (JSON): {len(stored)} bytes")


if __name__ == "__main__":
    main()
