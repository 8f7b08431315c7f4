"""bench_clv's ``--trace`` mode: orders read from a storefront trace, split in time into
calibration and holdout, fitted, and the holdout table printed (load_tests/bench_clv.py).

The end-to-end run (a 20,000-event trace, 2 cores) takes about 10 s: the pymc-marketing
import and the fit; it is marked slow."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from load_tests.bench_clv import main, trace_split
from load_tests.storefront import StorefrontConfig, storefront

DAY = 86_400_000


def _ev(i: int, cid: str, day: float, etype: str, total: float = 0.0) -> bytes:
    ms = 1_767_571_200_000 + int(day * DAY)  # 2026-01-05
    ts = datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    props = {"total": total} if etype == "order_completed" else {}
    ev = {"event_id": f"e{i}", "type": etype, "customer_id": cid, "timestamp": ts}
    return orjson.dumps({**ev, "properties": props})


def test_trace_split_summaries_at_the_calibration_end() -> None:
    lines = [
        _ev(0, "a", 0, "page_viewed"),
        _ev(1, "a", 1, "order_completed", 10.0),
        _ev(2, "b", 2, "page_viewed"),
        _ev(3, "a", 4, "order_completed", 30.0),
        _ev(4, "c", 5, "order_completed", 50.0),
        _ev(5, "a", 7, "order_completed", 99.0),  # holdout
        _ev(6, "d", 8, "order_completed", 5.0),  # holdout only: not summarised
        _ev(7, "c", 9, "page_viewed"),
    ]
    split = trace_split(lines)
    d = split.data
    assert d.calibration_days == pytest.approx(6.0)
    assert d.holdout_days == pytest.approx(3.0)
    assert (split.events, split.customers, split.buyers, split.orders) == (8, 4, 3, 5)
    a, c = d.summaries  # sorted by customer id
    assert (a.frequency, a.recency, a.T, a.monetary) == (1, 3.0, 5.0, 20.0)
    assert (c.frequency, c.recency, c.T, c.monetary) == (0, 0.0, 1.0, 50.0)
    assert d.holdout == [1, 0]


def test_trace_split_of_a_storefront_trace() -> None:
    cfg = StorefrontConfig(customers=500, events=5_000, seed=3)
    split = trace_split(orjson.dumps(ev) for ev in storefront(cfg))
    d = split.data
    assert split.events == 5_000
    assert 0 < len(d.summaries) <= split.buyers <= split.customers <= 500
    assert len(d.holdout) == len(d.summaries)
    assert sum(d.holdout) + sum(s.frequency + 1 for s in d.summaries) <= split.orders
    for s in d.summaries:
        assert 0 <= s.recency <= s.T <= d.calibration_days
        assert s.monetary > 0
    assert d.calibration_days == pytest.approx(2 * d.holdout_days, rel=1e-6)


@pytest.mark.slow
def test_trace_mode_prints_the_holdout_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pymc_marketing", reason="the `predict` extra is not installed")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    out = tmp_path / "clv.png"
    args = ["--trace", "--customers", "2000", "--events", "20000", "--seed", "1"]
    assert main([*args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "storefront trace" in text
    assert "| all |" in text
    assert "| alpha |" in text
    assert "true" not in text.split("| parameter")[1].split("\n")[0]
    assert out.stat().st_size > 0
