"""bench_core runs end to end on a tiny trace, alone and segments on/off."""

from __future__ import annotations

import orjson
import pytest

from load_tests.bench_core import main


def test_compare_runs_the_recipes_with_and_without_the_stock_segments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        main(
            [
                "--customers",
                "200",
                "--events",
                "2000",
                "--compare",
                "rules/segments",
                "--rounds",
                "1",
            ]
        )
        == 0
    )
    report = orjson.loads(capsys.readouterr().out)
    assert report["off"]["actions"] == report["on"]["actions"] > 0  # segments fire nothing
    assert report["on"]["pending_timers_at_end"] > report["off"]["pending_timers_at_end"]
    assert len(report["off"]["events_per_s"]) == len(report["on"]["events_per_s"]) == 1
