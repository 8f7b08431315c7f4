"""Experiment statistics: a hand-computed case, and a property test against the textbook
formulas computed independently here (standard library only)."""

from __future__ import annotations

import math
from statistics import NormalDist

from hypothesis import given
from hypothesis import strategies as st

from engine.analytics.stats import lift, sample_size, srm, verdict


def test_hand_computed_case() -> None:
    # A: 100 of 1000 (10%), B: 130 of 1000 (13%). diff 3 pts;
    # se = sqrt(.1*.9/1000 + .13*.87/1000) = sqrt(0.0000900 + 0.0001131) = 0.014251
    # CI = 3 +- 1.959964 * 1.4251 = 0.2069 .. 5.7931 pts
    # pooled p = 0.115, se0 = sqrt(.115*.885*(2/1000)) = 0.014267; z = 2.1028; p = 0.03548
    res = lift(100, 1000, 130, 1000)
    assert res is not None
    assert math.isclose(res.pts, 3.0, abs_tol=1e-9)
    assert math.isclose(res.ci_low, 0.2069, abs_tol=1e-3)
    assert math.isclose(res.ci_high, 5.7931, abs_tol=1e-3)
    assert math.isclose(res.p_value, 0.03548, abs_tol=1e-4)
    assert verdict("A", 100, 1000, "B", 130, 1000) == "B beats A: +3.0 pts, 95% CI +0.2..+5.8"
    # n per arm, 10% -> 13% at 80% power: (1.96 + 0.8416)^2 * (.09 + .1131) / .03^2 = 1771.2
    assert sample_size(0.10, 0.13) == 1772  # rounded up
    assert verdict("A", 10, 100, "B", 13, 100) == (
        "not enough data yet: n needed ~ 1,772 per arm (B vs A)"
    )


def test_srm() -> None:
    # 45/45/10 configured, 500/400/100 seen: chi2 = 2*(50^2/450) + 0 = 11.11, p = 0.00387
    check = srm([500, 400, 100], [0.45, 0.45, 0.10])
    assert check is not None
    assert math.isclose(check.chi2, 11.111, abs_tol=1e-3)
    assert math.isclose(check.p_value, 0.003866, abs_tol=1e-5)
    assert not check.mismatch  # the threshold is 0.001
    bad = srm([600, 300, 100], [0.45, 0.45, 0.10])
    assert bad is not None
    assert bad.mismatch


@given(
    st.integers(1, 100_000),
    st.integers(1, 100_000),
    st.floats(0, 1),
    st.floats(0, 1),
)
def test_lift_matches_the_textbook(n_a: int, n_b: int, fa: float, fb: float) -> None:
    x_a, x_b = round(fa * n_a), round(fb * n_b)
    res = lift(x_a, n_a, x_b, n_b)
    assert res is not None
    p_a, p_b = x_a / n_a, x_b / n_b
    z = NormalDist().inv_cdf(0.975)
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    assert math.isclose(res.pts, 100 * (p_b - p_a), abs_tol=1e-9)
    assert math.isclose(res.ci_low, 100 * (p_b - p_a - z * se), abs_tol=1e-7)
    assert math.isclose(res.ci_high, 100 * (p_b - p_a + z * se), abs_tol=1e-7)
    pooled = (x_a + x_b) / (n_a + n_b)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    want = 1.0 if se0 == 0 else 2 * (1 - NormalDist().cdf(abs(p_b - p_a) / se0))
    assert math.isclose(res.p_value, want, abs_tol=1e-9)
