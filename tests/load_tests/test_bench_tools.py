"""The small benchmark tools run end to end (their figures are in BENCHMARKS.md): the host
monitor beside bench_ingest, and the writer-stall benchmark, in both of its forms."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from load_tests import bench_writer_stalls, hostmon


def test_hostmon_reports_and_leaves_nothing_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert hostmon.main([str(tmp_path), "0.3"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert set(report) == {
        "host_fsync_p50_ms",
        "host_fsync_p99_ms",
        "host_fsync_max_ms",
        "host_work_p50_ms",
        "host_work_p99_ms",
    }
    assert 0 < report["host_fsync_p50_ms"] <= report["host_fsync_max_ms"]
    assert report["host_work_p50_ms"] > 0
    assert list(tmp_path.iterdir()) == []


def test_hostmon_summary_percentiles() -> None:
    got = hostmon.summary([float(i) for i in range(1, 101)], [])
    assert (got["host_fsync_p50_ms"], got["host_fsync_p99_ms"], got["host_fsync_max_ms"]) == (
        51.0,
        100.0,
        100.0,
    )
    assert got["host_work_p99_ms"] == 0.0  # no samples


@pytest.mark.parametrize("step", [0, 40])
def test_writer_stalls_runs_both_ways(
    step: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    [report] = bench_writer_stalls.run(states=200, step=step, rounds=1)
    assert report["small_fsyncs"] > 0
    assert report["max_ms"] >= report["p99_ms"] > 0
    assert list(tmp_path.iterdir()) == []  # its data directory is removed


def test_the_journal_index_benchmark_indexes_both_ways() -> None:
    """bench_journal_index: read back, every row is read; noted, none (it asserts both)."""
    from load_tests import bench_journal_index

    assert bench_journal_index.main(["--rows", "20", "--trials", "1"]) == 0
