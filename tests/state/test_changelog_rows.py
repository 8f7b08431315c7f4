"""Changelog rows (engine/distributed/storage/changelog.py): MessagePack now, JSON rows of earlier
versions still decode to the same state."""

from __future__ import annotations

import orjson

from engine.distributed.storage.changelog import decode_row, encode_row
from engine.testing import RuleKit
from state.customer import CustomerState


def _customer() -> CustomerState:
    kit = RuleKit.from_paths()
    kit.send("customer_updated", "c1", {"consent": {"sms": True}, "timezone": "Europe/Paris"})
    kit.send("cart_item_added", "c1", {"product_id": "p1", "price": 30.0})
    kit.send("order_completed", "c1", {"order_id": "o", "total": 12.5})
    kit.send("cart_item_added", "c1", {"product_id": "p2", "price": 9.0})  # an open flow
    st = kit.driver.store.get("c1")
    assert st is not None
    assert st.flows
    return st


def test_rows_round_trip_as_messagepack() -> None:
    st = _customer()
    raw = encode_row(st)
    assert raw[:1] != b"["
    assert len(raw) < len(orjson.dumps(st.to_row()))
    assert decode_row(raw).to_row() == st.to_row()


def test_json_rows_of_earlier_versions_still_decode() -> None:
    st = _customer()
    assert decode_row(orjson.dumps(st.to_row())).to_row() == st.to_row()
