"""RFM scores (engine/intelligence/rfm.py): a hand-checked base, exact vs sketch, properties."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.intelligence.rfm import (
    DAY_MS,
    GROUP_LABELS,
    GROUP_TABLE,
    GROUPS,
    BoundariesError,
    RfmBoundaries,
    RfmBuilder,
    group_of,
    needs_refresh,
    next_group_change,
    recency_days,
    score,
)
from state.customer import CustomerState

NOW = 1_790_000_000_000  # 2026-09-21T... UTC, any fixed instant
HOUR = 3_600_000


def customer(cid: str, days: int, orders: int, revenue: float, now: int = NOW) -> CustomerState:
    """A customer whose last order was ``days`` whole days (and one hour) before ``now``."""
    st = CustomerState(cid, now - 900 * DAY_MS, now)
    st.orders = orders
    st.revenue = revenue
    if orders:
        st.first_order = now - 800 * DAY_MS
        st.last_order = now - days * DAY_MS - HOUR
    return st


# --- the hand-checked base -----------------------------------------------------------
# 15 customers: n - 1 = 14, so the cut points are the sorted values at indexes
# floor(k * 14 / 5) = 2, 5, 8, 11 (k = 1..4): five bins of three customers each when the
# values are distinct. A value equal to a cut point falls in the bin below it.
#
# days since last order, sorted: 0 3 7 | 12 20 30 | 45 60 75 | 100 130 160 | 200 300 400
#   cuts (idx 2, 5, 8, 11) = 7, 30, 75, 160
#   R = 5 for <= 7 (7 itself: a tie goes to the more recent score), 4 for 8..30,
#   3 for 31..75, 2 for 76..160, 1 above.
# orders, sorted: 1 1 1 1 1 1 2 2 3 4 5 6 8 10 12
#   cuts = 1 (idx 2), 1 (idx 5), 3 (idx 8), 6 (idx 11)
#   F = 1 + #{cuts < orders}: 1 order -> 1 (all six of them, 40 % of the base: ties
#   score low), 2 -> 3, 3 -> 3 (equal to a cut), 4, 5, 6 -> 4, 8, 10, 12 -> 5; F=2 empty.
# revenue, sorted: 20 25 30 | 45 60 70 | 90 150 200 | 260 350 420 | 600 900 1500
#   cuts = 30, 70, 200, 420; M = 1 + #{cuts < revenue}
# FM = (F + M) // 2, group from the R x FM grid.
HAND = [
    # id,   days, orders, revenue, R, F, M, FM, group
    ("a1", 0, 12, 1500.0, 5, 5, 5, 5, "champions"),
    ("a2", 3, 2, 150.0, 5, 3, 3, 3, "potential_loyalist"),
    ("a3", 7, 1, 45.0, 5, 1, 2, 1, "new"),  # 1.5 floors to 1; 7 days = cut -> R5
    ("b1", 12, 5, 900.0, 4, 4, 5, 4, "champions"),
    ("b2", 20, 1, 25.0, 4, 1, 1, 1, "promising"),
    ("b3", 30, 1, 350.0, 4, 1, 4, 2, "potential_loyalist"),  # big first order
    ("c1", 45, 10, 420.0, 3, 5, 4, 4, "loyal"),  # 420 = cut -> M4
    ("c2", 60, 2, 200.0, 3, 3, 3, 3, "need_attention"),  # 200 = cut -> M3
    ("c3", 75, 1, 30.0, 3, 1, 1, 1, "about_to_sleep"),  # 75 days = cut -> R3
    ("d1", 100, 1, 60.0, 2, 1, 2, 1, "hibernating"),
    ("d2", 130, 4, 90.0, 2, 4, 3, 3, "at_risk"),
    ("d3", 160, 8, 600.0, 2, 5, 5, 5, "cannot_lose"),
    ("e1", 200, 1, 20.0, 1, 1, 1, 1, "lost"),
    ("e2", 300, 6, 260.0, 1, 4, 4, 4, "at_risk"),  # 6 orders = cut -> F4
    ("e3", 400, 3, 70.0, 1, 3, 2, 2, "lost"),  # 3 orders = cut -> F3
]


def hand_base() -> list[CustomerState]:
    return [customer(cid, days, orders, rev) for cid, days, orders, rev, *_ in HAND]


def build(customers: list[CustomerState], now: int = NOW, **kw: int | float) -> RfmBoundaries:
    b = RfmBuilder(**kw)  # type: ignore[arg-type]
    for c in customers:
        b.add(c, now)
    return b.build(now)


def test_hand_checked_boundaries() -> None:
    bounds = build(hand_base())
    assert bounds.recency == (7, 30, 75, 160)
    assert bounds.frequency == (1, 1, 3, 6)
    assert bounds.monetary == (30.0, 70.0, 200.0, 420.0)
    assert (bounds.customers, bounds.computed_at, bounds.exact) == (15, NOW, True)
    # the same order statistic numpy calls "lower"
    q = [0.2, 0.4, 0.6, 0.8]
    days = [d for _, d, *_ in HAND]
    assert list(bounds.recency) == np.quantile(days, q, method="lower").tolist()


@pytest.mark.parametrize("row", HAND, ids=[r[0] for r in HAND])
def test_hand_checked_scores(row: tuple[str, int, int, float, int, int, int, int, str]) -> None:
    cid, days, orders, revenue, r, f, m, fm, group = row
    rfm = score(build(hand_base()), customer(cid, days, orders, revenue), NOW)
    assert rfm is not None
    assert (rfm.r, rfm.f, rfm.m, rfm.fm, rfm.group) == (r, f, m, fm, group)
    assert rfm.score == f"{r}{f}{m}"
    assert rfm.to_dict() == {"r": r, "f": f, "m": m, "score": f"{r}{f}{m}", "group": group}


def test_hand_base_covers_every_group_and_ties() -> None:
    bounds = build(hand_base())
    scored = [score(bounds, c, NOW) for c in hand_base()]
    assert {s.group for s in scored if s} == set(GROUPS)
    fs = Counter(s.f for s in scored if s)
    assert fs == {1: 6, 3: 3, 4: 3, 5: 3}  # one-order ties: all F1, F2 empty


def test_recency_ages_between_refreshes() -> None:
    bounds = build(hand_base())
    a3 = customer("a3", 7, 1, 45.0)
    later = score(bounds, a3, NOW + 30 * DAY_MS)  # 37 days: R3 now
    assert later is not None
    assert later.r == 3
    assert later.group == "about_to_sleep"


# --- the group table -----------------------------------------------------------------
def test_group_table_is_total() -> None:
    cells = [(r, fm) for r in range(1, 6) for fm in range(1, 6)]
    assert sorted(GROUP_TABLE) == cells
    assert all(GROUP_TABLE[c] in GROUPS for c in cells)
    assert set(GROUP_TABLE.values()) == set(GROUPS)  # every group is reachable
    assert len(GROUPS) == 11
    assert set(GROUP_LABELS) == set(GROUPS)
    assert group_of(5, 5) == "champions"
    assert group_of(4, 4) == "champions"
    assert group_of(5, 1) == "new"
    assert group_of(1, 1) == "lost"


@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5))
def test_every_score_has_one_group(r: int, f: int, m: int) -> None:
    assert GROUP_TABLE[(r, (f + m) // 2)] in GROUPS


# --- no orders, empty base -----------------------------------------------------------
def test_no_orders_is_none_and_not_counted() -> None:
    bounds = build(hand_base())
    nobody = customer("x", 0, 0, 0.0)
    assert score(bounds, nobody, NOW) is None
    b = RfmBuilder()
    assert b.add(nobody, NOW) is False
    assert len(b) == 0
    empty = b.build(NOW)
    assert empty.customers == 0
    assert score(empty, customer("a1", 0, 12, 1500.0), NOW) is None


def test_future_last_order_is_zero_days() -> None:
    assert recency_days(NOW + DAY_MS, NOW) == 0
    assert recency_days(NOW - DAY_MS + 1, NOW) == 0
    assert recency_days(NOW - DAY_MS, NOW) == 1


# --- JSON ----------------------------------------------------------------------------
@pytest.mark.parametrize("exact_limit", [50_000, 0])
def test_json_round_trip(exact_limit: int) -> None:
    bounds = build(hand_base(), exact_limit=exact_limit)
    assert bounds.exact is (exact_limit > 0)
    raw = json.loads(json.dumps(bounds.to_dict()))
    assert raw["version"] == 1
    assert RfmBoundaries.from_dict(raw) == bounds


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"version": 2}, "$.version"),
        ({"recency_days": [1, 2, 3]}, "$.recency_days"),
        ({"frequency": [1, 1, 3.5, 6]}, "$.frequency"),
        ({"monetary": [30, 70, "x", 420]}, "$.monetary"),
        ({"monetary": [30, 70, 500, 420]}, "$.monetary"),
        ({"customers": -1}, "$.customers"),
        ({"computed_at": None}, "$.computed_at"),
        ({"exact": 1}, "$.exact"),
    ],
)
def test_from_dict_names_the_bad_field(patch: dict[str, object], field: str) -> None:
    raw = build(hand_base()).to_dict() | patch
    with pytest.raises(BoundariesError) as err:
        RfmBoundaries.from_dict(raw)
    assert err.value.field == field


# --- exact vs sketch -----------------------------------------------------------------
def random_base(n: int, seed: int) -> list[CustomerState]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        orders = 1 if rng.random() < 0.6 else 2 + int(rng.expovariate(0.4))
        days = int(rng.expovariate(1 / 120))
        revenue = round(orders * rng.lognormvariate(4, 0.8), 2)
        out.append(customer(f"c{i}", days, orders, revenue))
    return out


def exact_vs_sketch(n: int, seed: int) -> tuple[float, int]:
    """Share of customers whose R, F or M differs between exact and sketched boundaries;
    asserts each difference is within the sketch's relative error of an exact cut."""
    base = random_base(n, seed)
    exact = build(base, exact_limit=n)
    sketch = build(base, exact_limit=0)
    assert exact.exact
    assert not sketch.exact
    acc = sketch.relative_accuracy
    assert acc is not None
    differing = 0
    for c in base:
        a, b = score(exact, c, NOW), score(sketch, c, NOW)
        assert a is not None
        assert b is not None
        if a == b:
            continue
        differing += 1
        assert (a.r, a.f) == (b.r, b.f)  # exact in both
        assert abs(a.m - b.m) == 1
        # the sketched cut is within acc of the exact one, then rounded to cents
        assert any(abs(c.revenue - k) <= acc * k + 0.01 for k in exact.monetary)
    return differing / n, differing


def test_exact_vs_sketch_agree_but_near_cuts() -> None:
    share, differing = exact_vs_sketch(20_000, seed=7)
    # measured: 0.3 % of customers (65 of 20,000, revenue within 0.5 % of a monetary cut)
    assert share < 0.02, (share, differing)


def test_recency_and_frequency_are_always_exact() -> None:
    # counted per distinct value: only monetary is sketched past the limit
    base = random_base(5_000, seed=11)
    exact, sketch = build(base), build(base, exact_limit=0)
    assert (sketch.recency, sketch.frequency) == (exact.recency, exact.frequency)
    assert sketch.monetary != exact.monetary
    hand_exact, hand_sketch = build(hand_base()), build(hand_base(), exact_limit=0)
    assert (hand_sketch.recency, hand_sketch.frequency) == (
        hand_exact.recency,
        hand_exact.frequency,
    )


def test_builder_switches_to_sketch_past_the_limit() -> None:
    b = RfmBuilder(exact_limit=15)
    for c in hand_base():
        b.add(c, NOW)
    assert b.exact
    b.add(customer("z", 5, 2, 100.0), NOW)
    assert not b.exact
    assert len(b) == 16
    assert b.build(NOW).customers == 16


@pytest.mark.parametrize("exact_limit", [50_000, 100, 0])
def test_merge_equals_one_scan_in_any_order(exact_limit: int) -> None:
    base = random_base(400, seed=3)
    whole = build(base, exact_limit=exact_limit)
    shuffled = base[:]
    random.Random(1).shuffle(shuffled)
    parts = [RfmBuilder(exact_limit=exact_limit) for _ in range(3)]
    for i, c in enumerate(shuffled):
        parts[i % 3].add(c, NOW)
    parts[0].merge(parts[1])
    parts[0].merge(parts[2])
    assert parts[0].build(NOW) == whole


def test_needs_refresh() -> None:
    bounds = build(hand_base())
    assert needs_refresh(None, NOW)
    assert not needs_refresh(bounds, NOW + DAY_MS - 1)
    assert needs_refresh(bounds, NOW + DAY_MS)
    assert needs_refresh(bounds, NOW + HOUR, every_ms=HOUR)


# --- properties ----------------------------------------------------------------------
cut_ints = st.lists(st.integers(0, 1000), min_size=4, max_size=4).map(sorted)
cut_money = st.lists(st.floats(0, 1e5, allow_nan=False), min_size=4, max_size=4).map(sorted)


@st.composite
def boundaries(draw: st.DrawFn) -> RfmBoundaries:
    r, f, m = draw(cut_ints), draw(cut_ints), draw(cut_money)
    return RfmBoundaries(
        recency=(r[0], r[1], r[2], r[3]),
        frequency=(f[0], f[1], f[2], f[3]),
        monetary=(m[0], m[1], m[2], m[3]),
        customers=draw(st.integers(1, 10**7)),
        computed_at=NOW,
        exact=True,
    )


@given(
    boundaries(),
    st.integers(0, 1200),
    st.integers(0, 200),
    st.integers(1, 1200),
    st.integers(0, 200),
    st.floats(0, 2e5, allow_nan=False),
    st.floats(0, 1e5, allow_nan=False),
)
def test_scores_are_monotone(
    bounds: RfmBoundaries,
    days: int,
    more_days: int,
    orders: int,
    more_orders: int,
    revenue: float,
    more_revenue: float,
) -> None:
    base = score(bounds, customer("p", days, orders, revenue), NOW)
    older = score(bounds, customer("p", days + more_days, orders, revenue), NOW)
    busier = score(bounds, customer("p", days, orders + more_orders, revenue), NOW)
    richer = score(bounds, customer("p", days, orders, revenue + more_revenue), NOW)
    assert base is not None
    assert older is not None
    assert busier is not None
    assert richer is not None
    assert all(1 <= s <= 5 for s in (base.r, base.f, base.m))
    assert older.r <= base.r
    assert (older.f, older.m) == (base.f, base.m)
    assert busier.f >= base.f
    assert richer.m >= base.m


populations = st.lists(
    st.tuples(st.integers(0, 60), st.integers(1, 6), st.integers(0, 500)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=60)
@given(populations)
def test_exact_cuts_and_tie_shares(rows: list[tuple[int, int, int]]) -> None:
    base = [customer(f"c{i}", d, o, float(v)) for i, (d, o, v) in enumerate(rows)]
    bounds = build(base)
    n = len(rows)
    for cuts, values in zip(
        (bounds.recency, bounds.frequency, bounds.monetary), zip(*rows, strict=True), strict=True
    ):
        s = sorted(values)
        assert list(cuts) == [s[k * (n - 1) // 5] for k in (1, 2, 3, 4)]
    # ties never inflate the top: fewer than n - floor(k(n-1)/5) customers above F=k, M=k
    scored = [score(bounds, c, NOW) for c in base]
    for k in (1, 2, 3, 4):
        limit = n - k * (n - 1) // 5 - 1
        assert sum(1 for s in scored if s and s.f > k) <= limit
        assert sum(1 for s in scored if s and s.m > k) <= limit
    # and scoring does not depend on the order customers were fed in
    assert build(base[::-1]) == bounds


@settings(max_examples=80)
@given(boundaries(), st.integers(0, 1100), st.integers(1, 50), st.floats(0, 1e5, allow_nan=False))
def test_next_group_change_is_the_first_day_the_group_differs(
    bounds: RfmBoundaries, days: int, orders: int, revenue: float
) -> None:
    # the days since the last order, so R, change only at last + n days: scanning those
    # instants finds the first one in another group (or none before R is 1 for good)
    st_ = customer("p", days, orders, revenue)
    now = NOW + 5 * HOUR
    first = score(bounds, st_, now)
    assert first is not None
    assert st_.last_order is not None
    expected = None
    for n in range(days + 1, max(bounds.recency) + 3):
        at = st_.last_order + n * DAY_MS
        got = score(bounds, st_, at)
        if at > now and got is not None and got.group != first.group:
            expected = at
            break
    assert next_group_change(bounds, st_, now) == expected
