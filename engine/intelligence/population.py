"""What the rules read about a customer that depends on the whole base: RFM cut points and
fitted CLV parameters, injected into the pure core as one immutable value.

The core never computes population-level values: a runtime (engine/embedded/models.py)
builds the boundaries from a scan and loads the fitted parameters from the store, then
hands every partition's processor a new :class:`Population`. Per customer, everything is
evaluated from it lazily, only when an expression selects ``customer.rfm`` or
``customer.predicted`` (engine/profile.py). Either part may be missing: the customer's
field is then null (docs/rfm.md, docs/predictions.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.intelligence.clv import (
    DAY_MS,
    DISCOUNT_RATE_ANNUAL,
    HORIZON_CLV_DAYS,
    HORIZON_ORDERS_DAYS,
    CLVParams,
    Summary,
    clv,
    expected_purchases,
    next_order_at,
    p_alive,
    predict,
    summary,
)
from engine.intelligence.rfm import RfmBoundaries, next_group_change, next_score_change, score
from state.customer import CustomerState

__all__ = ["EMPTY", "Population"]


@dataclass(frozen=True, slots=True)
class Population:
    """The base-wide values per-customer fields are computed against. ``rfm``: RFM cut
    points (None: not computed yet); ``clv``: fitted BG/NBD and Gamma-Gamma parameters
    (None: no model fitted yet)."""

    rfm: RfmBoundaries | None = None
    clv: CLVParams | None = None

    def rfm_of(self, st: CustomerState, now: int) -> dict[str, Any] | None:
        """``customer.rfm``: ``{r, f, m, score, group}``, or None without boundaries or
        for a customer without orders."""
        bounds = self.rfm
        if bounds is None:
            return None
        got = score(bounds, st, now)
        return None if got is None else got.to_dict()

    def rfm_group(self, st: CustomerState, now: int) -> str | None:
        """``customer.rfm.group``, or None where ``customer.rfm`` is null."""
        bounds = self.rfm
        got = None if bounds is None else score(bounds, st, now)
        return None if got is None else got.group

    def predicted_of(self, st: CustomerState, now: int) -> dict[str, Any] | None:
        """``customer.predicted``: ``{p_alive, expected_orders_90d, clv_365d,
        next_order_at, churn_risk}``, or None without fitted parameters or for a customer
        without orders (``next_order_at`` alone may be None too: clv.next_order_at)."""
        got = predict(self.clv, st, now)
        return None if got is None else got.to_dict()

    def has_predictions(self, st: CustomerState) -> bool:
        """Whether ``customer.predicted`` is not null (a model, and an order)."""
        return self.clv is not None and summary(st, 0) is not None

    def predicted_field(self, st: CustomerState, now: int, name: str) -> Any:
        """One field of ``customer.predicted`` computed alone, the same value
        :meth:`predicted_of` gives for it (None when that is null; KeyError for a field
        it does not have)."""
        m = self.clv
        s = None if m is None else summary(st, now)
        if m is None or s is None:
            if name not in _PREDICTED:
                raise KeyError(name)
            return None
        return _PREDICTED[name](m, s, now)

    def key(self, reads: frozenset[str]) -> str:
        """What of this population the fields in ``reads`` (``rfm``, ``predicted``) are
        computed from: the boundaries' cut points and the CLV version. It goes into the
        segments' digest, so a refresh or a new model re-evaluates the segments reading
        them (rules/ruleset.py, ``RuleSet.use_population``)."""
        parts = []
        if "rfm" in reads:
            b = self.rfm  # the scores depend on the cut points alone (and the time)
            parts.append("rfm=None" if b is None else f"rfm={b.recency}{b.frequency}{b.monetary}")
        if "predicted" in reads:
            parts.append(f"clv={None if self.clv is None else self.clv.version}")
        return ";".join(parts)

    def next_rfm_change(self, st: CustomerState, now: int) -> int | None:
        """When ``customer.rfm`` next changes for ``st`` with no event (None: not by time
        alone): the instant R drops a score. (Predictions drift continuously: when a
        condition on them turns is searched, engine/segment_flips.py.)"""
        return None if self.rfm is None else next_score_change(self.rfm, st, now)

    def next_rfm_group_change(self, st: CustomerState, now: int) -> int | None:
        """When ``customer.rfm.group`` next changes for ``st`` with no event (None: not by
        time alone); at most :meth:`next_rfm_change`'s instant, often later."""
        return None if self.rfm is None else next_group_change(self.rfm, st, now)


def _days_to_next(m: CLVParams, s: Summary, now: int) -> float | None:
    due = next_order_at(m, s, now)
    return None if due is None else (due - now) / DAY_MS


_PREDICTED: dict[str, Callable[[CLVParams, Summary, int], Any]] = {
    "p_alive": lambda m, s, now: p_alive(m, s),
    "churn_risk": lambda m, s, now: 1.0 - p_alive(m, s),
    "expected_orders_90d": lambda m, s, now: expected_purchases(m, s, HORIZON_ORDERS_DAYS),
    "clv_365d": lambda m, s, now: clv(m, s, HORIZON_CLV_DAYS, DISCOUNT_RATE_ANNUAL),
    "next_order_at": next_order_at,
    "days_to_next_order": _days_to_next,
}
"""Each field of ``customer.predicted`` alone, as ``clv.predict`` computes it."""

EMPTY = Population()
"""No boundaries, no model: every ``customer.rfm`` and ``customer.predicted`` is null."""
