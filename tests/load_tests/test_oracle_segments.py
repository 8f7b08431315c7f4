"""The independent segment oracle (load_tests/oracle_segments.py) and the core running
rules/recipes + rules/segments make the same membership changes: on generated traffic,
and on a hand-made trace whose entries and exits are worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from load_tests.agreement import compare_segments, engine_segment_changes, main
from load_tests.oracle_segments import SegmentStats, change_line, segment_changes
from load_tests.traffic import TrafficConfig, generate


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def _ev(eid: str, etype: str, cid: str, ts: str, **props: object) -> bytes:
    return orjson.dumps(
        {
            "event_id": eid,
            "type": etype,
            "customer_id": cid,
            "timestamp": ts + "Z",
            "properties": props,
            "context": {},
        }
    )


@pytest.mark.parametrize("late_hours_share", [0.0, 0.2])
def test_oracle_and_engine_agree_on_generated_traffic(late_hours_share: float) -> None:
    cfg = TrafficConfig(
        customers=1_500,
        events=20_000,
        seed=7,
        duplicate_share=0.02,
        late_share=0.05,
        late_hours_share=late_hours_share,
    )
    lines = [orjson.dumps(e) for e in generate(cfg)]
    stats = SegmentStats()
    expected = segment_changes(lines, stats)
    actual, counts = engine_segment_changes(lines)
    report = compare_segments(expected, actual)
    assert report["differing_lines"] == 0, report["first_differences"]
    assert expected == actual
    assert stats.late > 0
    assert stats.duplicates == counts["duplicates"] > 0
    segs = {ch[2] for ch in expected}
    assert {"new", "lapsed", "viewed-not-bought", "carted-not-bought"} <= segs
    assert len(expected) > 2_000


# customer a: views, carts, checks out and orders (600) on one day: enters the first
# three, leaves them at the order, enters new and vip; lapsed 90 days after the end of
# the order's UTC day. customer b: a view at the last second of a day leaves the 7-day
# window 7 days after the end of that day; carted then emptied. customer c: an order
# first, a view 4 days later: viewed-not-bought only once the order's day bucket leaves
# the 7-day window (no event at that instant), until the view's bucket leaves it too.
HAND_MADE = [
    _ev("a1", "product_viewed", "a", "2026-01-10T10:00:00", product_id="p1"),
    _ev("a2", "cart_item_added", "a", "2026-01-10T10:05:00", product_id="p1", quantity=2),
    _ev("a3", "checkout_started", "a", "2026-01-10T10:10:00"),
    _ev("a4", "order_completed", "a", "2026-01-10T10:20:00", order_id="o1", total=600.0),
    _ev("a4", "order_completed", "a", "2026-01-10T10:20:00", order_id="o1", total=600.0),
    _ev("b1", "product_viewed", "b", "2026-01-10T23:59:59", product_id="p2"),
    _ev("b2", "cart_item_added", "b", "2026-01-11T08:00:00", product_id="p2", quantity=1),
    _ev("b3", "cart_item_removed", "b", "2026-01-11T08:01:00", product_id="p2"),
    _ev("c1", "order_completed", "c", "2026-01-11T12:00:00", order_id="o2", total=40.0),
    _ev("c2", "product_viewed", "c", "2026-01-15T09:00:00", product_id="p3"),
]

EXPECTED = [
    ("2026-01-10T10:00:00", "a", "viewed-not-bought", "entered"),
    ("2026-01-10T10:05:00", "a", "carted-not-bought", "entered"),
    ("2026-01-10T10:10:00", "a", "checkout-abandoned", "entered"),
    ("2026-01-10T10:20:00", "a", "carted-not-bought", "exited"),
    ("2026-01-10T10:20:00", "a", "checkout-abandoned", "exited"),
    ("2026-01-10T10:20:00", "a", "new", "entered"),
    ("2026-01-10T10:20:00", "a", "viewed-not-bought", "exited"),
    ("2026-01-10T10:20:00", "a", "vip", "entered"),
    ("2026-01-10T23:59:59", "b", "viewed-not-bought", "entered"),
    ("2026-01-11T08:00:00", "b", "carted-not-bought", "entered"),
    ("2026-01-11T08:01:00", "b", "carted-not-bought", "exited"),
    ("2026-01-11T12:00:00", "c", "new", "entered"),
    ("2026-01-18T00:00:00", "b", "viewed-not-bought", "exited"),
    ("2026-01-19T00:00:00", "c", "viewed-not-bought", "entered"),
    ("2026-01-23T00:00:00", "c", "viewed-not-bought", "exited"),
    ("2026-04-11T00:00:00", "a", "lapsed", "entered"),
    ("2026-04-12T00:00:00", "c", "lapsed", "entered"),
]


def test_hand_made_trace_entries_and_exits() -> None:
    expected = sorted((_ms(t), cid, seg, kind) for t, cid, seg, kind in EXPECTED)
    stats = SegmentStats()
    assert segment_changes(HAND_MADE, stats) == expected
    assert stats.duplicates == 1
    actual, _ = engine_segment_changes(HAND_MADE)
    assert actual == expected


def test_late_order_moves_lapsed_and_a_late_view_past_retention_is_not_counted() -> None:
    lines = [
        _ev("d1", "order_completed", "d", "2026-03-01T12:00:00", order_id="o", total=10.0),
        _ev("x1", "page_viewed", "x", "2026-06-10T00:00:00"),
        # 1 day late: counted in its own day bucket, lapsed stays out
        _ev("d2", "order_completed", "d", "2026-06-09T00:00:00", order_id="p", total=10.0),
        # 100 days late: past the day buckets' retention, never in a 7-day window
        _ev("d3", "product_viewed", "d", "2026-03-02T00:00:00", product_id="q"),
    ]
    changes = segment_changes(lines)
    lapsed = [(at, kind) for at, cid, seg, kind in changes if seg == "lapsed"]
    assert lapsed == [
        (_ms("2026-05-31T00:00:00"), "entered"),
        (_ms("2026-06-10T00:00:00"), "exited"),  # the late order, at the clock
        (_ms("2026-09-08T00:00:00"), "entered"),
    ]
    assert not [ch for ch in changes if ch[2] == "viewed-not-bought"]
    assert engine_segment_changes(lines)[0] == changes


def test_change_lines_and_the_cli_mode(capsys: pytest.CaptureFixture[str]) -> None:
    line = change_line((5, "c", "vip", "entered"))
    assert orjson.loads(line) == {
        "at": 5,
        "customer_id": "c",
        "segment_id": "vip",
        "kind": "entered",
    }
    report = compare_segments([(1, "a", "new", "entered")], [(2, "a", "new", "entered")])
    assert report["differing_lines"] == 2
    assert not report["agree"]
    assert [d["side"] for d in report["first_differences"]] == ["oracle only", "engine only"]
    assert main(["--customers", "200", "--events", "2000", "--segments"]) == 0
    assert "AGREE" in capsys.readouterr().out
