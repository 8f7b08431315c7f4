"""bench_floor runs end to end on a small trace (its figures are in BENCHMARKS.md)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from load_tests.bench_floor import main


@pytest.mark.parametrize("raw", [False, True])
def test_runs_over_a_small_trace(
    raw: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    args = ["--customers", "50", "--events", "2000", "--seed", "3"] + (["--raw"] if raw else [])
    assert main(args) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["events"] == 2000
    assert report["validated"] is not raw
    assert (tmp_path / "nudge-trace-50-2000-3.jsonl").exists()
