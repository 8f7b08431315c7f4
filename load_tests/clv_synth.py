"""Synthetic customers from known BG/NBD + Gamma-Gamma parameters, for checking the fit.

The generative process of the models (Fader, Hardie & Lee 2005; pymc-marketing's
``BetaGeoNBD`` random generator does the same): each customer makes a first order at a
time drawn uniformly over the calibration period, then

- buys at rate ``lambda ~ Gamma(shape r, rate alpha)`` (per day) while alive,
- drops out right after each repeat order with probability ``p ~ Beta(a, b)``,
- spends ``z ~ Gamma(shape p_gg, rate nu)`` per order (the first one too), with
  ``nu ~ Gamma(shape q, rate v)`` per customer.

The calibration period ends at ``calibration_days``; the holdout period is the next
``holdout_days``. ``simulate`` returns the calibration ``Summary`` of each customer (as
``engine.intelligence.clv.summary`` would make it from the state at the end of the
calibration period) and how many orders each made in the holdout period. Seeded: the same
arguments give the same customers. numpy is imported inside ``simulate``.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.intelligence.clv import Summary

__all__ = ["TRUE", "Synth", "TrueParams", "simulate"]


@dataclass(frozen=True, slots=True)
class TrueParams:
    """The population parameters customers are drawn from (days, currency)."""

    r: float
    alpha: float
    a: float
    b: float
    p: float
    q: float
    v: float

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("r", "alpha", "a", "b", "p", "q", "v")}


TRUE = TrueParams(r=0.6, alpha=45.0, a=0.9, b=3.2, p=5.0, q=4.0, v=36.0)
"""Defaults: a purchase every 75 days on average while alive (r / alpha = 0.013/day), a
mean dropout of 22% per repeat order, a population mean order value of p v / (q - 1) = 60."""


@dataclass(frozen=True, slots=True)
class Synth:
    """Simulated customers: calibration summaries and holdout order counts, index-aligned."""

    summaries: list[Summary]
    holdout: list[int]
    calibration_days: float
    holdout_days: float


def simulate(
    n: int,
    *,
    seed: int = 0,
    params: TrueParams = TRUE,
    calibration_days: float = 365.0,
    holdout_days: float = 180.0,
) -> Synth:
    """``n`` customers drawn from ``params``; see the module docstring."""
    import numpy as np

    rng = np.random.default_rng(seed)
    start = rng.uniform(0.0, calibration_days, n)
    age = calibration_days - start  # T
    end = age + holdout_days
    lam = rng.gamma(params.r, 1.0 / params.alpha, n)
    drop = rng.beta(params.a, params.b, n)
    nu = rng.gamma(params.q, 1.0 / params.v, n)

    freq = np.zeros(n, dtype=np.int64)
    recency = np.zeros(n)
    hold = np.zeros(n, dtype=np.int64)
    t = np.zeros(n)
    active = np.arange(n)
    # one repeat order per round for every customer still alive and in the window
    while active.size:
        t_next = t[active] + rng.exponential(1.0, active.size) / lam[active]
        inside = t_next < end[active]
        active, t_next = active[inside], t_next[inside]
        t[active] = t_next
        in_cal = t_next < age[active]
        freq[active[in_cal]] += 1
        recency[active[in_cal]] = t_next[in_cal]
        hold[active[~in_cal]] += 1
        active = active[rng.random(active.size) >= drop[active]]

    # the mean of freq + 1 order values: their sum is Gamma(p (freq + 1), rate nu)
    orders = freq + 1
    monetary = rng.gamma(params.p * orders, 1.0 / nu) / orders
    summaries = [
        Summary(int(x), float(tx), float(big_t), float(m))
        for x, tx, big_t, m in zip(
            freq.tolist(), recency.tolist(), age.tolist(), monetary.tolist(), strict=True
        )
    ]
    return Synth(summaries, [int(h) for h in hold.tolist()], calibration_days, holdout_days)
