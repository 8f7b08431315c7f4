"""bench_segment_export runs end to end on a tiny segment (its figures are not asserted
on: the benchmark prints them) and exports every member in both formats."""

from __future__ import annotations

import shutil

import orjson
import pytest

from load_tests.bench_segment_export import main


@pytest.mark.skipif(shutil.which("curl") is None, reason="the benchmark downloads with curl")
def test_runs_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--customers", "2000", "--no-uvloop"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["index_size"] == 2000
    for fmt in ("ndjson", "csv"):
        assert report[fmt]["members"] == 2000
        assert report[fmt]["seconds"] > 0
