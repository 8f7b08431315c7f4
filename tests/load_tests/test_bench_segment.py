"""bench_segment runs end to end on a tiny setting (its figures are not asserted on: the
benchmark prints them), and its two formats carry the same events."""

from __future__ import annotations

import time

import orjson
import pytest

from connectors.sources.segment import parse
from engine.events import decode_events
from load_tests.bench_segment import main, native_body, segment_body

STAMP = "2026-12-04T05:00:00.000Z"


def test_both_formats_are_the_same_events() -> None:
    native = decode_events(native_body(3, 20, 7, STAMP).replace(b"@@SEQ@@", b"r1"))
    body = segment_body(3, 20, 7, STAMP).replace(b"@@SEQ@@", b"r1")
    segment = parse(body, "batch", int(time.time() * 1000))
    assert [(e.event_id, e.type, e.customer_id, e.timestamp) for e in segment] == [
        (e.event_id, e.type, e.customer_id, e.timestamp) for e in native
    ]
    assert [e.properties for e in segment] == [e.properties for e in native]


def test_runs_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--seconds", "0.5", "--rounds", "1", "--batch", "10", "--connections", "2"]
    assert main([*args, "--customers", "50"]) == 0
    out = capsys.readouterr()
    report = orjson.loads(out.out)
    assert report["native_acknowledged_events_per_s"] > 0
    assert report["segment_acknowledged_events_per_s"] > 0
    assert report["ratio_acknowledged"] > 0
    assert report["events_processed"] == report["events_acknowledged"] > 0
    assert "round 1 segment" in out.err
