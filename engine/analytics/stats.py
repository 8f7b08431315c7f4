"""Experiment statistics for the report: difference of two conversion rates with a 95%
confidence interval and p-value, the sample-ratio-mismatch check, the sample size a
difference needs, and the plain-words verdict. scipy does the distributions.

- Difference: ``p_b - p_a`` in percentage points; the interval is Wald's (unpooled
  standard error, ``z = 1.96``), the p-value the two-sided pooled z-test (what
  statsmodels' ``proportions_ztest`` computes).
- SRM: Pearson's chi-square of the arms' entries against the configured weights
  (``scipy.stats.chisquare``); a mismatch is ``p < 0.001`` (the usual, strict threshold:
  with many visits every tiny skew would otherwise alarm).
- Sample size per arm for 80% power at a 5% two-sided level, to detect the observed
  difference (or, when there is none, one point or 10% of the baseline, whichever is
  larger).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from scipy import stats

__all__ = ["SRM_ALPHA", "Lift", "Srm", "lift", "sample_size", "srm", "verdict"]

ALPHA = 0.05
POWER = 0.8
SRM_ALPHA = 0.001


@dataclass(frozen=True)
class Lift:
    """``pts``: rate of the arm minus the rate of the one it is compared with, in points."""

    pts: float
    ci_low: float
    ci_high: float
    p_value: float

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 6) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Srm:
    chi2: float
    p_value: float
    mismatch: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "chi2": round(self.chi2, 6),
            "p_value": round(self.p_value, 6),
            "mismatch": self.mismatch,
        }


def lift(x_a: int, n_a: int, x_b: int, n_b: int) -> Lift | None:
    """B against A: ``x`` conversions of ``n`` entries each. None if an arm is empty."""
    if n_a <= 0 or n_b <= 0:
        return None
    p_a, p_b = x_a / n_a, x_b / n_b
    diff = p_b - p_a
    z = float(stats.norm.ppf(1 - ALPHA / 2))
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    pooled = (x_a + x_b) / (n_a + n_b)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    p_value = 1.0 if se0 == 0 else float(2 * stats.norm.sf(abs(diff) / se0))
    return Lift(100 * diff, 100 * (diff - z * se), 100 * (diff + z * se), p_value)


def srm(entered: list[int], weights: list[float]) -> Srm | None:
    """Arm sizes against their configured weights; None with fewer than two arms or no
    entries."""
    total = sum(entered)
    wsum = sum(weights)
    if len(entered) < 2 or total == 0 or wsum <= 0:
        return None
    expected = [total * w / wsum for w in weights]
    if any(e <= 0 for e in expected):
        return None
    chi2, p = stats.chisquare(entered, expected)
    return Srm(float(chi2), float(p), bool(p < SRM_ALPHA))


def sample_size(p_a: float, p_b: float) -> int:
    """Entries per arm to detect ``p_b - p_a`` (see the module's docstring)."""
    effect = abs(p_b - p_a)
    if effect == 0:
        effect = max(0.01, 0.1 * p_a)
        p_b = min(1.0, p_a + effect)
    z = float(stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(POWER))
    var = p_a * (1 - p_a) + p_b * (1 - p_b)
    return max(1, math.ceil(z * z * max(var, 1e-9) / (effect * effect)))


def _pts(v: float) -> str:
    return f"{v:+.1f}"


def verdict(a: str, x_a: int, n_a: int, b: str, x_b: int, n_b: int) -> str:
    """B against A in plain words: "B beats A: +2.1 pts, 95% CI +0.4..+3.8", "not enough
    data yet: n needed ~ 1,234 per arm", or "no clear difference ..."."""
    if n_a == 0 or n_b == 0:
        return f"not enough data yet: no entries in {a if n_a == 0 else b}"
    res = lift(x_a, n_a, x_b, n_b)
    assert res is not None
    ci = f"95% CI {_pts(res.ci_low)}..{_pts(res.ci_high)}"
    if res.p_value < ALPHA:
        word = "beats" if res.pts > 0 else "trails"
        return f"{b} {word} {a}: {_pts(res.pts)} pts, {ci}"
    need = sample_size(x_a / n_a, x_b / n_b)
    if min(n_a, n_b) < need:
        return f"not enough data yet: n needed ~ {need:,} per arm ({b} vs {a})"
    return f"no clear difference between {b} and {a}: {_pts(res.pts)} pts, {ci}"
