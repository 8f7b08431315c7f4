"""The closed forms in engine.intelligence.clv equal pymc-marketing's own predictions.

pymc-marketing's models are given FIXED parameters: the model graph is built on the test
customers and its posterior replaced by one chain of one draw holding the values (what a
MAP fit leaves), so its prediction methods evaluate exactly those parameters. No fit runs
here, so no PyTensor compile either.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest

from engine.intelligence.clv import (
    DAY_MS,
    NEXT_ORDER_MAX_DAYS,
    CLVParams,
    ParamsError,
    Summary,
    clv,
    expected_avg_value,
    expected_purchases,
    next_order_at,
    p_alive,
    predict,
    prob_no_purchase,
    summary,
)
from state.customer import CustomerState

PARAMS = CLVParams(
    r=0.62, alpha=41.5, a=0.87, b=3.1, p=5.3, q=3.9, v=37.0,
    fitted_at=1_790_000_000_000, version=3, customers=20_000,
)  # fmt: skip
# a > 1 as well: the (a + b + x - 1) / (a - 1) head changes sign at a = 1
PARAMS_A_OVER_1 = CLVParams(
    r=0.25, alpha=4.4, a=1.79, b=2.43, p=6.25, q=3.74, v=15.44,
    fitted_at=0, version=1, customers=1,
)  # fmt: skip

CUSTOMERS = [
    Summary(0, 0.0, 10.0, 42.0),  # one order, recent
    Summary(0, 0.0, 365.0, 80.0),  # one order, long ago
    Summary(1, 30.0, 200.0, 55.5),
    Summary(3, 120.0, 121.0, 61.0),
    Summary(4, 50.0, 50.0, 20.0),  # recency == T: ordered just now
    Summary(7, 300.0, 340.0, 99.9),
    Summary(12, 80.0, 360.0, 35.0),  # many orders, then silent: likely gone
    Summary(40, 350.0, 360.0, 120.0),
]

NOW = 1_800_000_000_000


@pytest.fixture(scope="module")
def pmm() -> Any:
    pytest.importorskip("pymc_marketing", reason="the `predict` extra is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz
        import pandas
        from pymc_marketing.clv import BetaGeoModel, GammaGammaModel, utils

    class NS:
        az = arviz
        pd = pandas
        BG = BetaGeoModel
        GG = GammaGammaModel
        clv = utils.customer_lifetime_value

    return NS


def _frame(pmm: Any, rows: list[Summary], gg: bool = False) -> Any:
    cols: dict[str, Any] = {"customer_id": list(range(len(rows)))}
    if gg:
        cols["frequency"] = [s.frequency + 1 for s in rows]
        cols["monetary_value"] = [s.monetary for s in rows]
    else:
        cols["frequency"] = [s.frequency for s in rows]
        cols["recency"] = [s.recency for s in rows]
        cols["T"] = [s.T for s in rows]
    return pmm.pd.DataFrame(cols)


def _fixed(pmm: Any, model: Any, data: Any, values: dict[str, float]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.build_model(data)
        model.idata = pmm.az.from_dict(posterior={k: [[v]] for k, v in values.items()})
    return model


def _bg(pmm: Any, m: CLVParams, rows: list[Summary]) -> Any:
    vals = {"r": m.r, "alpha": m.alpha, "a": m.a, "b": m.b}
    return _fixed(pmm, pmm.BG(), _frame(pmm, rows), vals)


def _gg(pmm: Any, m: CLVParams, rows: list[Summary]) -> Any:
    return _fixed(pmm, pmm.GG(), _frame(pmm, rows, gg=True), {"p": m.p, "q": m.q, "v": m.v})


def _values(arr: Any) -> list[float]:
    return [float(x) for x in arr.values.reshape(-1)]


@pytest.mark.parametrize("m", [PARAMS, PARAMS_A_OVER_1])
def test_p_alive_and_expected_purchases_equal_the_library(pmm: Any, m: CLVParams) -> None:
    bg = _bg(pmm, m, CUSTOMERS)
    lib_alive = _values(bg.expected_probability_alive())
    assert [p_alive(m, s) for s in CUSTOMERS] == pytest.approx(lib_alive, rel=1e-6, abs=1e-9)
    for t in (1.0, 30.0, 90.0, 365.0):
        lib = _values(bg.expected_purchases(future_t=t))
        ours = [expected_purchases(m, s, t) for s in CUSTOMERS]
        assert ours == pytest.approx(lib, rel=1e-6, abs=1e-9), t


@pytest.mark.parametrize("m", [PARAMS, PARAMS_A_OVER_1])
def test_expected_avg_value_equals_the_library(pmm: Any, m: CLVParams) -> None:
    lib = _values(_gg(pmm, m, CUSTOMERS).expected_customer_spend(_frame(pmm, CUSTOMERS, True)))
    ours = [expected_avg_value(m, s) for s in CUSTOMERS]
    assert ours == pytest.approx(lib, rel=1e-6)


@pytest.mark.parametrize(("months", "annual"), [(12, 0.0), (12, 0.10), (3, 0.25)])
def test_clv_equals_the_library_on_whole_months(pmm: Any, months: int, annual: float) -> None:
    bg = _bg(pmm, PARAMS, CUSTOMERS)
    data = _frame(pmm, CUSTOMERS).assign(
        future_spend=[expected_avg_value(PARAMS, s) for s in CUSTOMERS]
    )
    monthly = (1 + annual) ** (30 / 365) - 1
    lib = _values(pmm.clv(bg, data, future_t=months, discount_rate=monthly, time_unit="D"))
    ours = [clv(PARAMS, s, 30 * months, annual) for s in CUSTOMERS]
    assert ours == pytest.approx(lib, rel=1e-6, abs=1e-9)


def test_prob_no_purchase_equals_the_library_for_repeat_buyers(pmm: Any) -> None:
    # the library's eq. 34 keeps the "dropped out" term for x = 0 as well, where BG/NBD
    # says no customer can have dropped out; ours uses P(alive) = 1 there
    rows = [s for s in CUSTOMERS if s.frequency > 0]
    bg = _bg(pmm, PARAMS, rows)
    for t in (7, 60, 400):
        lib = _values(bg.expected_probability_no_purchase(t=t))
        ours = [prob_no_purchase(PARAMS, s, t) for s in rows]
        assert ours == pytest.approx(lib, rel=1e-6), t


def test_next_order_at_is_the_median_time_to_the_next_order() -> None:
    for s in CUSTOMERS:
        at = next_order_at(PARAMS, s, NOW)
        if p_alive(PARAMS, s) <= 0.5:
            assert at is None
            continue
        assert at is not None
        assert at > NOW
        assert prob_no_purchase(PARAMS, s, (at - NOW) / DAY_MS) == pytest.approx(0.5, abs=1e-6)


def test_next_order_at_is_none_near_even_odds_and_far_away() -> None:
    # p_alive falls through 1/2 as a repeat buyer stays silent: the date grows, then is None
    dates = []
    for age in range(30, 3000, 7):
        s = Summary(3, 30.0, float(age), 50.0)
        at = next_order_at(PARAMS, s, NOW)
        assert (at is None) == (
            p_alive(PARAMS, s) <= 0.5 or prob_no_purchase(PARAMS, s, NEXT_ORDER_MAX_DAYS) > 0.5
        )
        if at is not None:
            assert at <= NOW + NEXT_ORDER_MAX_DAYS * DAY_MS
            dates.append(at)
    assert dates == sorted(dates)
    assert len(dates) > 5
    assert next_order_at(PARAMS, Summary(3, 30.0, 3000.0, 50.0), NOW) is None


def test_frequency_zero_is_alive_and_recency_equal_to_t() -> None:
    one = Summary(0, 0.0, 100.0, 50.0)
    assert p_alive(PARAMS, one) == 1.0
    assert 0 < expected_purchases(PARAMS, one, 90) < expected_purchases(PARAMS, one, 365)
    # just ordered: the most alive a repeat buyer can look, 1 / (1 + a / (b + x - 1))
    fresh = Summary(4, 50.0, 50.0, 20.0)
    assert p_alive(PARAMS, fresh) == pytest.approx(1 / (1 + PARAMS.a / (PARAMS.b + 3)))
    # long silent heavy buyer: no overflow, nearly gone, no next-order date
    gone = Summary(400, 10.0, 3650.0, 20.0)
    assert p_alive(PARAMS, gone) < 1e-12
    assert expected_purchases(PARAMS, gone, 90) < 1e-9
    assert next_order_at(PARAMS, gone, NOW) is None
    assert expected_purchases(PARAMS, one, 0) == 0.0
    assert clv(PARAMS, one, 0) == 0.0


def _state(orders: int, first: int | None, last: int | None, revenue: float) -> CustomerState:
    st = CustomerState("c1", NOW - 400 * DAY_MS, NOW)
    st.orders, st.first_order, st.last_order, st.revenue = orders, first, last, revenue
    return st


def test_summary_from_state() -> None:
    st = _state(3, NOW - 100 * DAY_MS, NOW - 10 * DAY_MS, 150.0)
    assert summary(st, NOW) == Summary(2, 90.0, 100.0, 50.0)
    # a last order stamped after "now" counts as now
    late = _state(2, NOW - DAY_MS, NOW + DAY_MS, 10.0)
    s = summary(late, NOW)
    assert s is not None
    assert s.recency == s.T == 2.0
    assert summary(_state(0, None, None, 0.0), NOW) is None


def test_predict_is_none_without_params_or_orders() -> None:
    buyer = _state(3, NOW - 100 * DAY_MS, NOW - 10 * DAY_MS, 150.0)
    assert predict(None, buyer, NOW) is None
    assert predict(PARAMS, _state(0, None, None, 0.0), NOW) is None
    pr = predict(PARAMS, buyer, NOW)
    assert pr is not None
    s = Summary(2, 90.0, 100.0, 50.0)
    assert pr.p_alive == p_alive(PARAMS, s)
    assert pr.churn_risk == pytest.approx(1 - pr.p_alive)
    assert pr.expected_orders_90d == expected_purchases(PARAMS, s, 90)
    assert pr.clv_365d == clv(PARAMS, s, 365, 0.10)
    assert pr.next_order_at == next_order_at(PARAMS, s, NOW)
    assert pr.next_order_at is not None
    assert pr.days_to_next_order == (pr.next_order_at - NOW) / 86_400_000
    assert set(pr.to_dict()) == {
        "p_alive", "expected_orders_90d", "clv_365d", "next_order_at", "churn_risk",
        "days_to_next_order",
    }  # fmt: skip


def test_clv_365_sums_the_periods() -> None:
    s = Summary(3, 120.0, 200.0, 61.0)
    undiscounted = clv(PARAMS, s, 365, 0.0)
    expected = expected_avg_value(PARAMS, s) * expected_purchases(PARAMS, s, 365)
    assert undiscounted == pytest.approx(expected, rel=1e-12)
    assert clv(PARAMS, s, 365, 0.10) < undiscounted


def test_params_round_trip_and_validation() -> None:
    d = PARAMS.to_dict()
    assert CLVParams.from_dict(d) == PARAMS
    bad = dict(d, alpha=-1.0)
    with pytest.raises(ParamsError) as e:
        CLVParams.from_dict(bad)
    assert e.value.field == "alpha"
    with pytest.raises(ParamsError):
        CLVParams.from_dict(dict(d, r=math.nan))
    with pytest.raises(ParamsError):
        CLVParams.from_dict(dict(d, time_unit="weeks"))
    with pytest.raises(ParamsError):
        CLVParams.from_dict({k: v for k, v in d.items() if k != "version"})
