"""Predicted CLV, churn and next order: BG/NBD and Gamma-Gamma closed forms, per customer.

Pure: the standard library, ``scipy.special.hyp2f1`` (the Gaussian hypergeometric function
the BG/NBD expectation needs) and ``state.customer``. Fitting the population parameters is
``engine.intelligence.fit`` (pymc-marketing, off the event path); this module only
evaluates the published formulas with the fitted parameters, lazily, for one customer.
Every formula here is the one pymc-marketing's ``BetaGeoModel`` / ``GammaGammaModel`` /
``customer_lifetime_value`` evaluate, and tests/engine/test_clv.py checks the values agree
to 1e-6 (docs/predictions.md has the formulas and references).

Time unit: days (``CLVParams.time_unit``). A customer's history is summarised as
(``frequency``, ``recency``, ``T``, ``monetary``); see ``Summary``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from scipy.special import hyp2f1

from engine.exceptions import NudgeError
from state.customer import CustomerState

__all__ = [
    "DAY_MS",
    "DISCOUNT_RATE_ANNUAL",
    "NEXT_ORDER_MAX_DAYS",
    "PERIOD_DAYS",
    "CLVParams",
    "ParamsError",
    "Predictions",
    "Summary",
    "clv",
    "expected_avg_value",
    "expected_purchases",
    "next_order_at",
    "p_alive",
    "predict",
    "prob_no_purchase",
    "summary",
]

DAY_MS = 86_400_000
PERIOD_DAYS = 30
"""Discounting period of ``clv``: pymc-marketing's month for daily data (``time_unit="D"``)."""
YEAR_DAYS = 365
DISCOUNT_RATE_ANNUAL = 0.10
"""Annual discount rate of ``Predictions.clv_365d``."""
HORIZON_ORDERS_DAYS = 90
HORIZON_CLV_DAYS = 365
_PARAM_NAMES = ("r", "alpha", "a", "b", "p", "q", "v")
NEXT_ORDER_MAX_DAYS = 3650
"""``next_order_at`` is None when the even-odds date is further away than this (10 years)."""


class ParamsError(NudgeError, ValueError):
    """A stored parameter record that cannot be used; ``field`` names the bad key."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class CLVParams:
    """Fitted population parameters, one version of them.

    BG/NBD (Fader, Hardie & Lee 2005): purchase rate ``lambda ~ Gamma(shape r, rate
    alpha)``, dropout after each purchase ``p ~ Beta(a, b)``. Gamma-Gamma (Fader, Hardie &
    Lee 2005, Fader & Hardie 2013): order value ``z ~ Gamma(shape p, rate nu)``,
    ``nu ~ Gamma(shape q, rate v)``. ``alpha`` is in ``time_unit`` (days), ``v`` in
    currency. ``fitted_at`` is epoch ms, ``customers`` how many summaries the fit saw,
    ``version`` increases with each fit stored.
    """

    r: float
    alpha: float
    a: float
    b: float
    p: float
    q: float
    v: float
    fitted_at: int
    version: int
    customers: int
    time_unit: str = "days"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; ``from_dict`` reads it back."""
        out: dict[str, Any] = {k: getattr(self, k) for k in _PARAM_NAMES}
        out.update(
            fitted_at=self.fitted_at,
            version=self.version,
            customers=self.customers,
            time_unit=self.time_unit,
        )
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CLVParams:
        """Parameters from ``to_dict`` output. Raises ``ParamsError`` for a missing key, a
        parameter that is not a positive finite number, or a time unit other than days."""
        vals: dict[str, float] = {}
        for k in _PARAM_NAMES:
            x = d.get(k)
            if isinstance(x, bool) or not isinstance(x, int | float):
                raise ParamsError(f"{k} must be a number", field=k)
            if not (math.isfinite(x) and x > 0):
                raise ParamsError(f"{k} must be positive and finite, got {x}", field=k)
            vals[k] = float(x)
        ints: dict[str, int] = {}
        for k in ("fitted_at", "version", "customers"):
            x = d.get(k)
            if isinstance(x, bool) or not isinstance(x, int):
                raise ParamsError(f"{k} must be an integer", field=k)
            ints[k] = x
        unit = d.get("time_unit", "days")
        if unit != "days":
            raise ParamsError(f"time_unit must be 'days', got {unit!r}", field="time_unit")
        return cls(
            r=vals["r"],
            alpha=vals["alpha"],
            a=vals["a"],
            b=vals["b"],
            p=vals["p"],
            q=vals["q"],
            v=vals["v"],
            fitted_at=ints["fitted_at"],
            version=ints["version"],
            customers=ints["customers"],
            time_unit=unit,
        )


@dataclass(frozen=True, slots=True)
class Summary:
    """One customer's purchase history as the models read it, times in days.

    ``frequency``: repeat purchases (orders - 1). ``recency``: first to last order
    (``t_x``). ``T``: first order to now (the customer's age). ``monetary``: mean order
    value over all ``frequency + 1`` orders (the state keeps only the revenue total, so the
    first order cannot be left out as ``lifetimes``' ``rfm_summary`` does; the Gamma-Gamma
    formulas are therefore given ``frequency + 1`` as the number of values averaged).
    """

    frequency: int
    recency: float
    T: float
    monetary: float


def summary(st: CustomerState, now_ms: int) -> Summary | None:
    """The customer's ``Summary`` at ``now_ms``; None for a customer with no order.

    A last order after ``now_ms`` (a late clock) counts as made now: ``T >= recency``."""
    if st.orders <= 0 or st.first_order is None:
        return None
    first = st.first_order
    last = st.last_order if st.last_order is not None else first
    recency = max(0.0, (last - first) / DAY_MS)
    age = max(recency, (now_ms - first) / DAY_MS)
    return Summary(st.orders - 1, recency, age, st.revenue / st.orders)


# --- BG/NBD ---------------------------------------------------------------------------


def _log_odds_dead(m: CLVParams, s: Summary) -> float:
    """log(P(dead) / P(alive)) for a customer with ``frequency > 0`` (Fader, Hardie & Lee
    2008, note 021): ``log(a / (b + x - 1)) + (r + x) log((alpha + T) / (alpha + t_x))``."""
    x = s.frequency
    return (m.r + x) * math.log((m.alpha + s.T) / (m.alpha + s.recency)) + math.log(
        m.a / (m.b + x - 1)
    )


def p_alive(m: CLVParams, s: Summary) -> float:
    """P(alive | x, t_x, T) = 1 / (1 + a / (b + x - 1) * ((alpha + T) / (alpha + t_x))^(r + x)),
    and 1 for ``x = 0`` (BG/NBD customers can only drop out right after a repeat purchase)."""
    if s.frequency == 0:
        return 1.0
    z = _log_odds_dead(m, s)
    # the logistic of -z without overflow either way
    if z >= 0:
        e = math.exp(-z)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(z))


def expected_purchases(m: CLVParams, s: Summary, t_days: float) -> float:
    """E[Y(t) | x, t_x, T], purchases expected in the next ``t_days`` (Fader, Hardie & Lee
    2005, eq. 10)::

        (a + b + x - 1) / (a - 1)
          * [1 - ((alpha + T) / (alpha + T + t))^(r + x)
                 * 2F1(r + x, b + x; a + b + x - 1; t / (alpha + T + t))]
          / (1 + [x > 0] a / (b + x - 1) * ((alpha + T) / (alpha + t_x))^(r + x))

    The denominator's reciprocal is ``p_alive``, computed in log space so that long-gone
    customers give 0 rather than an overflow. Undefined at ``a = 1`` exactly (0/0 in the
    published form); ``a < 1`` is fine (both factors of the head change sign)."""
    if t_days <= 0:
        return 0.0
    x = s.frequency
    big = m.alpha + s.T + t_days
    head = (m.a + m.b + x - 1) / (m.a - 1)
    tail = math.pow((m.alpha + s.T) / big, m.r + x) * float(
        hyp2f1(m.r + x, m.b + x, m.a + m.b + x - 1, t_days / big)
    )
    return head * (1.0 - tail) * p_alive(m, s)


def prob_no_purchase(m: CLVParams, s: Summary, t_days: float) -> float:
    """P(no purchase in (T, T + t]) (Fader & Hardie 2019, note 039, eq. 34)::

        (1 - P(alive)) + P(alive) ((alpha + T) / (alpha + T + t))^(r + x)

    A dropped-out customer never buys again; an alive one's rate given the history is
    Gamma(r + x, alpha + T), so their chance of no order in t is that Lomax survival."""
    pa = p_alive(m, s)
    return (1.0 - pa) + pa * math.pow((m.alpha + s.T) / (m.alpha + s.T + t_days), m.r + s.frequency)


def next_order_at(m: CLVParams, s: Summary, now_ms: int) -> int | None:
    """When the customer has even odds of having ordered again: the median of the time to
    the next order, ``now + t`` with ``prob_no_purchase(t) = 1/2``, in closed form
    ``t = (alpha + T) * ((1 - 1 / (2 P(alive)))^(-1 / (r + x)) - 1)``.

    None when ``p_alive <= 1/2``: the model then thinks the customer more likely gone than
    not, so no date reaches even odds; None too when the date is more than
    ``NEXT_ORDER_MAX_DAYS`` away. The result is rounded to the millisecond."""
    pa = p_alive(m, s)
    if pa <= 0.5:
        return None
    log_growth = -math.log1p(-0.5 / pa) / (m.r + s.frequency)
    if log_growth > math.log1p(NEXT_ORDER_MAX_DAYS / (m.alpha + s.T)):
        return None  # p_alive a hair above 1/2: the date is past any marketing horizon
    t = (m.alpha + s.T) * math.expm1(log_growth)
    return now_ms + round(t * DAY_MS)


# --- Gamma-Gamma ----------------------------------------------------------------------


def expected_avg_value(m: CLVParams, s: Summary) -> float:
    """E[Z | n, z_bar]: the customer's expected order value (Fader, Hardie & Lee 2005,
    "RFM and CLV", eq. 5; Fader & Hardie 2013, note 025), a weighted mean of the
    population mean ``p v / (q - 1)`` and the customer's own mean::

        w = p n / (p n + q - 1);   E = (1 - w) p v / (q - 1) + w z_bar

    with ``n = frequency + 1`` orders behind ``z_bar = monetary`` (see ``Summary``)."""
    n = s.frequency + 1
    w = m.p * n / (m.p * n + m.q - 1)
    return (1 - w) * (m.v * m.p / (m.q - 1)) + w * s.monetary


def clv(
    m: CLVParams,
    s: Summary,
    horizon_days: float = HORIZON_CLV_DAYS,
    discount_rate_annual: float = DISCOUNT_RATE_ANNUAL,
) -> float:
    """Expected discounted revenue from the customer over the next ``horizon_days``.

    pymc-marketing's ``customer_lifetime_value`` (daily data): the horizon is cut into
    30-day periods, each period's expected purchases (differences of the cumulative
    ``expected_purchases``) are valued at ``expected_avg_value`` and discounted to now at
    the period's end::

        CLV = E[Z] * sum_k (E[Y(t_k)] - E[Y(t_{k-1})]) / (1 + d)^(t_k / 30)

    with ``t_k = 30 k``. Here ``d = (1 + discount_rate_annual)^(30/365) - 1`` (so the
    discount at day t is ``(1 + annual)^(-t/365)``) and the last period is shortened to
    end at ``horizon_days``. For ``horizon_days = 30 M`` this is exactly the library's
    ``customer_lifetime_value(future_t=M, discount_rate=d, time_unit="D")``.
    """
    if horizon_days <= 0:
        return 0.0
    value = expected_avg_value(m, s)
    total = 0.0
    prev_t, prev_y = 0.0, 0.0
    while prev_t < horizon_days:
        t = min(prev_t + PERIOD_DAYS, horizon_days)
        y = expected_purchases(m, s, t)
        total += (y - prev_y) / math.pow(1.0 + discount_rate_annual, t / YEAR_DAYS)
        prev_t, prev_y = t, y
    return value * total


# --- per customer ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Predictions:
    """What the models predict for one customer at one time.

    ``p_alive``: probability the customer has not dropped out. ``expected_orders_90d``:
    orders expected in the next 90 days. ``clv_365d``: expected revenue in the next 365
    days, discounted at ``DISCOUNT_RATE_ANNUAL``. ``next_order_at``: epoch ms by which the
    customer has even odds of having ordered again (None: the model thinks them more
    likely gone). ``churn_risk``: ``1 - p_alive``. ``days_to_next_order``: the days from
    the prediction's time to ``next_order_at`` (None with it), for conditions that need
    "within a week" without a clock (segment conditions read no time)."""

    p_alive: float
    expected_orders_90d: float
    clv_365d: float
    next_order_at: int | None
    churn_risk: float
    days_to_next_order: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "p_alive": self.p_alive,
            "expected_orders_90d": self.expected_orders_90d,
            "clv_365d": self.clv_365d,
            "next_order_at": self.next_order_at,
            "churn_risk": self.churn_risk,
            "days_to_next_order": self.days_to_next_order,
        }


def predict(m: CLVParams | None, st: CustomerState, now_ms: int) -> Predictions | None:
    """The customer's predictions at ``now_ms``; None without fitted parameters (no model
    yet) or for a customer with no order (the models describe buyers only)."""
    if m is None:
        return None
    s = summary(st, now_ms)
    if s is None:
        return None
    pa = p_alive(m, s)
    due = next_order_at(m, s, now_ms)
    return Predictions(
        p_alive=pa,
        expected_orders_90d=expected_purchases(m, s, HORIZON_ORDERS_DAYS),
        clv_365d=clv(m, s, HORIZON_CLV_DAYS, DISCOUNT_RATE_ANNUAL),
        next_order_at=due,
        churn_risk=1.0 - pa,
        days_to_next_order=None if due is None else (due - now_ms) / DAY_MS,
    )
