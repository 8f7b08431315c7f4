"""The fit recovers known parameters from simulated customers, and its predictions match the
holdout period in aggregate (the full figures: load_tests/bench_clv.py, docs/predictions.md).

One fit of 8,000 customers: about 3 s to import pymc-marketing and 4 s to fit, plus about
17 s the first time on a machine, when PyTensor compiles the model graphs to C (cached in
``~/.pytensor``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.intelligence.clv import CLVParams, Summary, expected_purchases
from load_tests.bench_clv import holdout_groups, recovery, write_plot
from load_tests.clv_synth import TRUE, simulate

N = 8_000
SEED = 0


def test_simulation_is_seeded_and_consistent() -> None:
    a, b = simulate(300, seed=5), simulate(300, seed=5)
    assert a == b
    assert a != simulate(300, seed=6)
    for s in a.summaries:
        assert 0 <= s.recency <= s.T <= a.calibration_days
        assert s.monetary > 0
        assert s.frequency > 0 or s.recency == 0
    assert all(h >= 0 for h in a.holdout)


@pytest.fixture(scope="module")
def fitted() -> tuple[CLVParams, list[Summary], list[int]]:
    pytest.importorskip("pymc_marketing", reason="the `predict` extra is not installed")
    from engine.intelligence.fit import fit

    data = simulate(N, seed=SEED)
    return fit(data.summaries, fitted_at=0, version=7), data.summaries, data.holdout


@pytest.mark.slow
def test_fit_recovers_the_parameters(fitted: tuple[CLVParams, list[Summary], list[int]]) -> None:
    got, _, _ = fitted
    assert (got.version, got.customers, got.fitted_at) == (7, N, 0)
    # seed 0 errors: r +1.1%, alpha -1.5%, a +3.6%, b +3.4%, p +0.4%, q +3.8%, v +3.9%
    for name, true in TRUE.as_dict().items():
        assert getattr(got, name) == pytest.approx(true, rel=0.30), name
    # the well identified combinations, tighter: mean purchase rate, mean dropout per
    # repeat order, population mean order value
    assert got.r / got.alpha == pytest.approx(TRUE.r / TRUE.alpha, rel=0.10)
    assert got.a / (got.a + got.b) == pytest.approx(TRUE.a / (TRUE.a + TRUE.b), rel=0.10)
    assert got.p * got.v / (got.q - 1) == pytest.approx(TRUE.p * TRUE.v / (TRUE.q - 1), rel=0.10)


@pytest.mark.slow
def test_holdout_orders_match_in_aggregate(
    fitted: tuple[CLVParams, list[Summary], list[int]],
) -> None:
    got, summaries, holdout = fitted
    predicted = sum(expected_purchases(got, s, 180.0) for s in summaries)
    assert predicted == pytest.approx(sum(holdout), rel=0.10)


def test_bench_groups_and_plot_with_the_true_parameters(tmp_path: Path) -> None:
    data = simulate(2_000, seed=3)
    true = CLVParams(**TRUE.as_dict(), fitted_at=0, version=1, customers=2_000)
    groups = holdout_groups(true, data)
    assert [g.label for g in groups] == ["0", "1", "2", "3", "4", "5", "6", "7+", "all"]
    assert groups[-1].customers == 2_000 == sum(g.customers for g in groups[:-1])
    # the true parameters predict the holdout of their own customers
    assert groups[-1].predicted == pytest.approx(groups[-1].actual, rel=0.15)
    out = write_plot(tmp_path / "clv.png", groups, recovery(TRUE, true), "test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
