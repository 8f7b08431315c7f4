"""Idle customers are compacted a slice per event loop turn (a sweep over a million
customers must not stall ingest and timers), oldest first, and inflate on access."""

from __future__ import annotations

from engine.testing import START, RuleKit
from state.memory import MemoryStore
from tests.engine.embedded.conftest import Harness, product_views


async def test_runtime_compacts_in_slices(harness: Harness) -> None:
    rt = harness.runtime
    status, _ = await harness.post_events(product_views(40, "v"))
    assert status == 202
    await harness.settle()
    rt.cfg.compact_slice = 3
    rt.cfg.compact_idle_s = 0.0
    harness.clock.set(START + 1000)
    assert await rt._compact() >= 40
    for i in range(40):
        store = rt.partition(f"vc{i}").store
        assert isinstance(store._data[f"vc{i}"], bytes)
        st = store.get(f"vc{i}")  # inflated on access, same state
        assert st is not None
        assert st.customer_id == f"vc{i}"


def test_store_compacts_oldest_first_and_stops_at_recent() -> None:
    kit = RuleKit.from_paths()
    for i in range(10):  # c{i} touched at START + i minutes
        kit.send("product_viewed", f"c{i}", {"product_id": "p1"})
        kit.advance(minutes=1)
    kit.send("product_viewed", "c0", {"product_id": "p2"})  # now the most recent
    store = kit.driver.store
    assert isinstance(store, MemoryStore)
    at = START + 5 * 60_000  # c1..c4 were last touched before this
    assert store.compact_idle(at, limit=2) == 2  # c1, c2
    assert store.compact_idle(at, limit=10) == 2  # c3, c4; stops at c5 (not idle)
    compacted = [f"c{i}" for i in range(10) if type(store._data[f"c{i}"]) is bytes]
    assert compacted == ["c1", "c2", "c3", "c4"]
    assert store.row("c1") is not None  # serialized from the compacted bytes...
    assert type(store._data["c1"]) is bytes  # ...which stay compacted
    assert store.row("c5") is not None
    assert type(store._data["c5"]) is not bytes
