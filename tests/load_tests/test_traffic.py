"""The traffic generator: deterministic, streaming, shares as configured, valid events."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import datetime

import orjson

from engine.events import decode_event
from load_tests.traffic import Traffic, TrafficConfig, generate


def _bytes(cfg: TrafficConfig) -> bytes:
    return b"\n".join(orjson.dumps(e) for e in generate(cfg))


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    cfg = TrafficConfig(customers=300, events=5_000, seed=7)
    a = _bytes(cfg)
    assert a == _bytes(cfg)
    assert a != _bytes(TrafficConfig(customers=300, events=5_000, seed=8))
    assert a.count(b"\n") == 4_999


def test_streaming_bound_scales_with_customers_not_events() -> None:
    small = Traffic(TrafficConfig(customers=200, events=5_000, seed=1, days=60))
    big = Traffic(TrafficConfig(customers=200, events=60_000, seed=1, days=60))
    assert sum(1 for _ in small) == 5_000
    assert sum(1 for _ in big) == 60_000
    # pending heap items: O(active customers + in-flight events), far below the trace size
    assert big.max_pending < 5 * 200 + 500
    assert big.max_pending < 60_000 // 20


def test_generate_is_lazy() -> None:
    it = generate(TrafficConfig(customers=10**6, events=10**9, seed=1))
    first = list(itertools.islice(it, 100))
    assert len(first) == 100


def test_shares_roughly_as_configured() -> None:
    cfg = TrafficConfig(
        customers=2_000,
        events=40_000,
        seed=3,
        duplicate_share=0.05,
        late_share=0.04,
        late_long_share=0.2,
    )
    seen: set[str] = set()
    dups = late = late_24h = 0
    high = 0.0
    types: Counter[str] = Counter()
    for e in generate(cfg):
        types[e["type"]] += 1
        if e["event_id"] in seen:
            dups += 1
            continue
        seen.add(e["event_id"])
        ts = datetime.fromisoformat(e["timestamp"]).timestamp()
        if ts < high:
            late += 1
            if ts < high - 86_400:
                late_24h += 1
        high = max(high, ts)
    n = sum(types.values())
    assert 0.035 < dups / n < 0.065
    assert 0.025 < late / n < 0.055
    assert 0.1 < late_24h / late < 0.3
    for t in (
        "customer_signed_up",
        "customer_updated",
        "product_viewed",
        "cart_item_added",
        "cart_item_removed",
        "checkout_started",
        "order_completed",
        "order_delivered",
        "order_refunded",
        "email_opened",
        "email_clicked",
        "sms_clicked",
        "page_viewed",
        "back_in_stock_requested",
        "product_back_in_stock",
    ):
        assert types[t] > 0, t


def test_every_event_decodes_and_timestamps_have_offsets() -> None:
    offsets: Counter[str] = Counter()
    tzs: set[str] = set()
    for e in generate(TrafficConfig(customers=500, events=10_000, seed=5)):
        ev = decode_event(orjson.dumps(e))
        assert ev.timestamp.utcoffset() is not None
        offsets["Z" if e["timestamp"].endswith("Z") else "offset"] += 1
        if "timezone" in ev.context:
            tzs.add(ev.context["timezone"])
    assert offsets["Z"] > 0
    assert offsets["offset"] > 0
    assert len(tzs) >= 5
