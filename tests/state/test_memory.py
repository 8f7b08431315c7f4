"""The memory store keeps idle customers serialized and inflates them transparently."""

from __future__ import annotations

from engine.testing import START, RuleKit
from state.memory import MemoryStore

H = 3_600_000


def test_idle_customers_compacted_and_inflated_on_access() -> None:
    kit = RuleKit.from_paths()
    kit.send("cart_item_added", "c1", {"product_id": "p1", "price": 30.0})
    store = kit.driver.store
    assert isinstance(store, MemoryStore)
    assert store.compact_idle(START + 1) == 1
    assert isinstance(store._data["c1"], bytes)
    kit.advance(hours=4)  # the timer inflates the state and the flow goes on
    assert [a.template for a in kit.sent("abandoned-cart")] == ["cart_reminder"]  # c1: arm a
    st = store.get("c1")
    assert st is not None
    assert st.cart_value == 30.0
    # inflated states are compacted again once idle, even if only read (checkpoints read)
    assert store.compact_idle(START + 5 * H) == 1


def test_compacted_state_round_trips_exactly() -> None:
    kit = RuleKit.from_paths()
    kit.send("customer_updated", "c2", {"consent": {"sms": True}, "timezone": "Europe/Paris"})
    kit.send("product_viewed", "c2", {"product_id": "p9"})
    kit.send("order_completed", "c2", {"order_id": "o", "total": 12.5})
    store = kit.driver.store
    assert isinstance(store, MemoryStore)
    before = store.get("c2")
    assert before is not None
    row = before.to_row()
    store.compact_idle(START + 1)
    after = store.get("c2")
    assert after is not None
    assert after is not before
    assert after.to_row() == row
