"""Decoding and validating events (engine/events.py): each refusal names its field."""

from __future__ import annotations

import orjson
import pytest

from engine.events import decode_event, decode_events
from engine.exceptions import EventError

BASE = {
    "event_id": "e1",
    "type": "page_viewed",
    "customer_id": "c1",
    "timestamp": "2026-11-23T10:00:00Z",
    "properties": {"url": "/"},
}


def raw(**over: object) -> bytes:
    return orjson.dumps({**BASE, **over})


@pytest.mark.parametrize("etype", ["wishlist_shared", "a", "x9_y"])
def test_custom_snake_case_types_are_accepted(etype: str) -> None:
    assert decode_event(raw(type=etype)).type == etype


@pytest.mark.parametrize("etype", ["Page Viewed", "pageViewed", "9lives", "_x", "a-b"])
def test_a_type_that_is_not_snake_case_names_the_type(etype: str) -> None:
    with pytest.raises(EventError) as err:
        decode_event(raw(type=etype))
    assert (err.value.field, err.value.reason) == ("$.type", "invalid_field")


def test_a_bad_type_is_refused_again_after_a_good_one() -> None:
    """Valid custom types are remembered; invalid ones never are."""
    decode_event(raw(type="gift_card_bought"))
    for _ in range(2):
        with pytest.raises(EventError):
            decode_event(raw(type="Gift Card"))


def test_a_known_type_without_its_property_names_it() -> None:
    with pytest.raises(EventError) as err:
        decode_event(raw(type="product_viewed", properties={"price": 1.0}))
    assert (err.value.field, err.value.reason) == ("$.properties.product_id", "missing_field")


def test_in_an_array_the_field_carries_the_index() -> None:
    body = orjson.dumps([BASE, {**BASE, "event_id": "e2", "type": "Bad Type"}])
    with pytest.raises(EventError) as err:
        decode_events(body)
    assert err.value.field == "$[1].type"
