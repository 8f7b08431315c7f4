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


def test_segment_cost_splits_the_timers_from_the_evaluation_at_events(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from load_tests.bench_segment_cost import main as split

    assert split(["--customers", "200", "--events", "2000", "--rounds", "1"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["as_run"]["segment_timer_fires"] > 0
    assert report["as_run"]["segment_changes"] > report["segment_timer_off"]["segment_changes"]
    assert report["segment_timer_off"]["segment_timer_fires"] == 0
    by_type = report["extra_by_type_segment_timer_off"]
    assert by_type["product_viewed"]["events"] > 0
    assert sum(t["events"] for t in by_type.values()) == report["events"]
