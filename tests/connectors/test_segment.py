"""The Segment / RudderStack tracking API mapping (pure): every spec event, the other
message types, clock skew, ids, and each bad input as a SourceError naming its field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from connectors.sources.exceptions import SourceError
from connectors.sources.segment import (
    MAX_BATCH_BYTES,
    MAX_MESSAGE_BYTES,
    event_type,
    parse,
    write_key_of,
)
from engine.types import Event, to_ms

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
NOW_MS = to_ms(NOW)
TS = "2026-12-04T11:00:00.000Z"


def msg(kind: str = "track", **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"type": kind, "userId": "u1", "messageId": "m1", "timestamp": TS}
    if kind == "track":
        base["event"] = "Cart Viewed"
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def batch(*messages: dict[str, Any], **envelope: Any) -> list[Event]:
    return parse(orjson.dumps({"batch": list(messages), **envelope}), "batch", NOW_MS)


def one(**fields: Any) -> Event:
    [ev] = batch(msg(**fields))
    return ev


BIG = 2**70  # no 64-bit integer: orjson cannot write it, the bodies get it by hand


def dumps(body: Any) -> bytes:
    return orjson.dumps(body, default=str).replace(b'"BIG"', str(BIG).encode())


def error(body: Any, kind: str = "batch") -> SourceError:
    raw = body if isinstance(body, bytes) else dumps(body)
    with pytest.raises(SourceError) as err:
        parse(raw, kind, NOW_MS)
    return err.value


def bad(*messages: dict[str, Any]) -> tuple[int, str, str | None]:
    err = error({"batch": list(messages)})
    return err.status, err.code, err.field


# --- track: the e-commerce spec v2 and friends -----------------------------------------------


@pytest.mark.parametrize(
    ("name", "props", "etype", "expected"),
    [
        ("Product Viewed", {"product_id": "p1", "price": 5}, "product_viewed",
         {"product_id": "p1", "price": 5}),
        ("Product Added", {"product_id": "p1", "price": 9.5, "quantity": 2}, "cart_item_added",
         {"product_id": "p1", "price": 9.5, "quantity": 2}),
        ("Product Removed", {"sku": "s1"}, "cart_item_removed", {"sku": "s1", "product_id": "s1"}),
        ("Cart Viewed", {"cart_id": "c1"}, "cart_viewed", {"cart_id": "c1"}),
        ("Checkout Started", {"order_id": "o1", "value": 30.0}, "checkout_started",
         {"order_id": "o1", "value": 30.0, "cart_value": 30.0}),
        ("Order Completed", {"order_id": "o1", "revenue": 25.0, "products": [{"sku": "s"}]},
         "order_completed",
         {"order_id": "o1", "revenue": 25.0, "total": 25.0, "products": [{"sku": "s"}]}),
        ("Order Completed", {"order_id": 17, "total": 30.0, "revenue": 25.0}, "order_completed",
         {"order_id": "17", "total": 30.0, "revenue": 25.0}),
        ("Order Refunded", {"order_id": "o1", "total": 25.0}, "order_refunded",
         {"order_id": "o1", "total": 25.0, "amount": 25.0}),
        ("Order Refunded", {"order_id": "o1", "amount": 5.0, "total": 25.0}, "order_refunded",
         {"order_id": "o1", "amount": 5.0, "total": 25.0}),
        ("Email Opened", {"email_id": "e1"}, "email_opened", {"email_id": "e1"}),
        ("Email Clicked", {}, "email_clicked", {}),
        ("Email Link Clicked", {"link_url": "u"}, "email_clicked", {"link_url": "u"}),
        ("Email Unsubscribed", {}, "email_unsubscribed", {}),
        ("Unsubscribed", {}, "email_unsubscribed", {}),
        ("Email Delivered", {}, "email_delivered", {}),
        ("Email Bounced", {"bounce_type": "hard"}, "email_bounced", {"bounce_type": "hard"}),
        ("Email Marked as Spam", {}, "email_spam_reported", {}),
        ("Product List Viewed", {"list_id": "l1"}, "product_list_viewed", {"list_id": "l1"}),
        ("Products Searched", {"query": "shoes"}, "products_searched", {"query": "shoes"}),
        ("Product Clicked", {"product_id": "p1"}, "product_clicked", {"product_id": "p1"}),
        ("Coupon Applied", {"coupon_id": "c"}, "coupon_applied", {"coupon_id": "c"}),
        ("Wishlist Shared", {}, "wishlist_shared", {}),
        ("product added", {"product_id": "p1"}, "cart_item_added", {"product_id": "p1"}),
        ("productAdded", {"product_id": "p1"}, "cart_item_added", {"product_id": "p1"}),
        ("cart_item_added", {"product_id": "p1"}, "cart_item_added", {"product_id": "p1"}),
        ("Produit Ajouté au Panier", {}, "produit_ajoute_au_panier", {}),
    ],
)  # fmt: skip
def test_track_names_and_properties(
    name: str, props: dict[str, Any], etype: str, expected: dict[str, Any]
) -> None:
    ev = one(event=name, properties=props)
    assert (ev.type, ev.customer_id, ev.event_id) == (etype, "u1", "m1")
    assert ev.properties == expected


@pytest.mark.parametrize(
    ("props", "pid"),
    [({"product_id": "p", "sku": "s", "id": "i"}, "p"), ({"sku": "s", "id": "i"}, "s"),
     ({"id": "i"}, "i"), ({"id": 42}, "42")],
)  # fmt: skip
def test_product_id_from_product_id_else_sku_else_id(props: dict[str, Any], pid: str) -> None:
    assert one(event="Product Viewed", properties=props).properties["product_id"] == pid


def test_signed_up_is_a_profile_update() -> None:
    ev = one(
        event="Signed Up",
        properties={"email": "a@example.com", "type": "organic", "sms_opt_in": True},
        context={"timezone": "Europe/Paris"},
    )
    assert ev.type == "customer_signed_up"
    assert ev.properties == {
        "attributes": {"email": "a@example.com", "type": "organic"},
        "consent": {"sms": True},
        "timezone": "Europe/Paris",
    }


def test_event_type_cache_and_names_without_a_snake_case_form() -> None:
    assert event_type("Order Completed") == "order_completed"
    assert event_type("Order Completed") == "order_completed"  # from the cache
    spaced = "Wishlist" + " " * 190 + "Shared"  # too long to cache, mapped all the same
    assert event_type(spaced) == event_type(spaced) == "wishlist_shared"
    for name in ["!!!", "42 Things", "x" * 65, "   "]:
        assert event_type(name) is None
        assert bad(msg(event=name)) == (400, "invalid_event_name", "$.batch[0].event")
    assert bad(msg(event=None)) == (400, "missing_field", "$.batch[0].event")
    assert bad(msg(event=7)) == (400, "invalid_field", "$.batch[0].event")


def test_internal_types_are_refused() -> None:
    assert bad(msg(event="Customer Merged")) == (400, "internal_type", "$.batch[0].event")


@pytest.mark.parametrize(
    ("name", "props", "field"),
    [
        ("Order Completed", {"order_id": "o1"}, "$.batch[0].properties.total"),
        ("Order Completed", {"total": 3.0}, "$.batch[0].properties.order_id"),
        ("Product Added", {"product_id": "p1", "price": "cheap"}, "$.batch[0].properties.price"),
        ("Product Added", {"product_id": "p1", "quantity": 1.5},
         "$.batch[0].properties.quantity"),
        ("Product Viewed", {"name": "no id"}, "$.batch[0].properties.product_id"),
        ("Order Refunded", {"order_id": "o1", "total": "all"}, "$.batch[0].properties.amount"),
        ("Email Opened", {"template": {"a": 1}}, "$.batch[0].properties.template"),
        ("Signed Up", {"n": "BIG"}, "$.batch[0].properties.n"),
    ],
)  # fmt: skip
def test_properties_are_validated_naming_the_field(
    name: str, props: dict[str, Any], field: str
) -> None:
    status, _code, got = bad(msg(event=name, properties=props))
    assert (status, got) == (400, field)


# --- identify, alias, page, screen, group -----------------------------------------------------


def test_identify_maps_traits_consent_and_timezone() -> None:
    [ev] = batch(
        msg(
            "identify",
            traits={
                "email": "a@example.com",
                "phone": "+33600000000",
                "name": "Ada",
                "email_opt_in": False,
                "consent": {"push": True},
            },
            context={"timezone": "America/New_York", "ip": "1.2.3.4"},
        )
    )
    assert (ev.type, ev.customer_id, ev.event_id) == ("customer_updated", "u1", "m1")
    assert ev.properties == {
        "attributes": {"email": "a@example.com", "phone": "+33600000000", "name": "Ada"},
        "consent": {"push": True, "email": False},
        "timezone": "America/New_York",
    }
    assert ev.context == {"timezone": "America/New_York", "ip": "1.2.3.4"}


def test_identify_consent_conventions() -> None:
    def consent(traits: dict[str, Any]) -> Any:
        return one(type="identify", traits=traits).properties.get("consent")

    assert consent({"unsubscribed": True}) == {"email": False}
    assert consent({"unsubscribed": True, "email_opt_in": True}) == {"email": True}
    assert consent({"sms_opt_in": True, "push_opt_in": False}) == {"sms": True, "push": False}
    assert consent({"email": "a@example.com"}) is None  # nothing said: defaults apply
    ev = one(type="identify", traits={"consent": "yes", "unsubscribed": False})
    assert ev.properties == {"attributes": {"consent": "yes", "unsubscribed": False}}
    assert bad(msg("identify", traits={"sms_opt_in": "yes"})) == (
        400,
        "invalid_field",
        "$.batch[0].traits.sms_opt_in",
    )
    assert bad(msg("identify", traits={"consent": {"email": "yes"}})) == (
        400,
        "invalid_field",
        "$.batch[0].traits.consent.email",
    )
    assert bad(msg("identify", traits={"deep": {"n": "BIG"}})) == (
        400,
        "invalid_field",
        "$.batch[0].traits.deep.n",
    )
    assert bad(msg("identify", context={"timezone": 5})) == (
        400,
        "invalid_field",
        "$.batch[0].context.timezone",
    )


def test_identify_with_both_ids_aliases_the_anonymous_visitor_first() -> None:
    alias, update = batch(msg("identify", anonymousId="a1", traits={"email": "x@example.com"}))
    assert (alias.type, alias.customer_id, alias.event_id) == (
        "customer_aliased",
        "anon:a1",
        "m1:alias",
    )
    assert alias.properties == {"user_id": "u1"}
    assert alias.timestamp == update.timestamp
    assert (update.type, update.customer_id) == ("customer_updated", "u1")
    [only] = batch(msg("identify", userId=None, anonymousId="a1"))  # anonymous: no alias
    assert (only.type, only.customer_id) == ("customer_updated", "anon:a1")


def test_identify_traits_in_context_as_rudderstack_sends_them() -> None:
    # sms_opt_in 1 is not a bool: named where it was found
    assert bad(msg("identify", context={"traits": {"sms_opt_in": 1}})) == (
        400,
        "invalid_field",
        "$.batch[0].context.traits.sms_opt_in",
    )
    ev = one(type="identify", context={"traits": {"email": "r@example.com", "name": "R"}})
    assert ev.properties["attributes"] == {"email": "r@example.com", "name": "R"}
    ev = one(type="identify", traits={"name": "T"}, context={"traits": {"name": "C", "x": 1}})
    assert ev.properties["attributes"] == {"name": "T", "x": 1}  # top-level traits win


def test_alias_links_the_previous_id_as_an_anonymous_one() -> None:
    ev = one(type="alias", previousId="a9", userId="u9")
    assert (ev.type, ev.customer_id, ev.event_id) == ("customer_aliased", "anon:a9", "m1")
    assert ev.properties == {"user_id": "u9"}
    assert one(type="alias", previousId=12, userId=34).properties == {"user_id": "34"}
    assert bad(msg("alias", previousId="a", userId="u" * 201)) == (
        400,
        "invalid_field",
        "$.batch[0].userId",
    )
    assert bad(msg("alias", previousId=None)) == (400, "missing_field", "$.batch[0].previousId")
    assert bad(msg("alias", previousId="a", userId=None)) == (
        400,
        "missing_field",
        "$.batch[0].userId",
    )


def test_page_and_screen() -> None:
    page = one(type="page", name="Home", category="Docs", properties={"url": "https://x/"})
    assert (page.type, page.properties) == (
        "page_viewed",
        {"url": "https://x/", "name": "Home", "category": "Docs"},
    )
    screen = one(type="screen", name="Cart", properties=None)
    assert (screen.type, screen.properties) == ("screen_viewed", {"name": "Cart"})
    assert one(type="page", name="A", properties={"name": "B"}).properties == {"name": "B"}


def test_group_sets_prefixed_attributes() -> None:
    ev = one(type="group", groupId="g1", traits={"name": "Initech", "employees": 420})
    assert (ev.type, ev.customer_id) == ("customer_updated", "u1")
    assert ev.properties == {
        "attributes": {"group_id": "g1", "group_name": "Initech", "group_employees": 420}
    }
    assert bad(msg("group")) == (400, "missing_field", "$.batch[0].groupId")
    assert bad(msg("group", groupId="g", traits={"n": "BIG"})) == (
        400,
        "invalid_field",
        "$.batch[0].traits.group_n",
    )


# --- ids and time ------------------------------------------------------------------------------


def test_customer_ids() -> None:
    assert one(userId=42).customer_id == "42"
    assert one(userId=None, anonymousId="a1").customer_id == "anon:a1"
    assert one(userId="", anonymousId="a1").customer_id == "anon:a1"
    assert one(anonymousId="a1").customer_id == "u1"
    assert bad(msg(userId=None)) == (400, "missing_field", "$.batch[0].userId")
    assert bad(msg(userId="u" * 201)) == (400, "invalid_field", "$.batch[0].userId")
    assert bad(msg(userId=None, anonymousId="a" * 196)) == (
        400,
        "invalid_field",
        "$.batch[0].anonymousId",
    )
    assert bad(msg(userId=["u"])) == (400, "invalid_field", "$.batch[0].userId")


def test_message_id_is_the_event_id_else_a_stable_hash() -> None:
    a, b, c = batch(msg(messageId=None), msg(messageId=None), msg(messageId=None, event="X"))
    assert a.event_id == b.event_id != c.event_id
    assert a.event_id.startswith("seg-")
    assert one(messageId=None).event_id == a.event_id  # a retried request: same ids
    assert one(messageId=7).event_id == "7"
    assert bad(msg(messageId="m" * 201)) == (400, "invalid_field", "$.batch[0].messageId")
    assert bad(msg("identify", anonymousId="a", messageId="m" * 196)) == (
        400,
        "invalid_field",
        "$.batch[0].messageId",
    )


def test_clock_skew_correction() -> None:
    # the device clock is 1 h fast: it stamped the event 10 s before it sent the batch
    skewed = {"originalTimestamp": "2026-12-04T13:00:00Z", "sentAt": "2026-12-04T13:00:10Z"}
    ev = one(timestamp=None, **skewed)
    assert ev.timestamp == NOW - timedelta(seconds=10)
    assert ev.timestamp.tzinfo is not None
    # the batch's sentAt applies to messages without their own
    [ev] = batch(
        msg(timestamp="2026-12-04T09:00:00Z", originalTimestamp="2026-12-04T13:00:00+01:00"),
        sentAt="2026-12-04T12:00:30Z",
    )
    assert ev.timestamp == NOW - timedelta(seconds=30)
    # no sentAt: the timestamp, else originalTimestamp, else the time received
    assert one(originalTimestamp="2026-12-04T10:00:00Z").timestamp == datetime.fromisoformat(TS)
    assert one(timestamp=None, originalTimestamp="2026-12-04T10:00:00Z").timestamp == (
        NOW - timedelta(hours=2)
    )
    assert one(timestamp=None).timestamp == NOW
    assert one(timestamp="2026-12-04T12:00:00+05:00").timestamp == NOW - timedelta(hours=5)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"timestamp": "2026-12-04T11:00:00"}, "$.batch[0].timestamp"),  # no offset
        ({"timestamp": "yesterday"}, "$.batch[0].timestamp"),
        ({"sentAt": 5}, "$.batch[0].sentAt"),
        (
            {"originalTimestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-01-01T00:00:00Z"},
            "$.batch[0].originalTimestamp",
        ),
    ],
)
def test_bad_times(fields: dict[str, Any], field: str) -> None:
    assert bad(msg(**fields)) == (400, "invalid_field", field)


# --- the request ---------------------------------------------------------------------------------


def test_batch_context_is_merged_under_the_message_context() -> None:
    a, b = batch(
        msg(context={"ip": "1.1.1.1", "locale": "fr-FR"}),
        msg(messageId="m2"),
        context={"ip": "0.0.0.0", "device": {"type": "phone"}},
    )
    assert a.context == {"ip": "1.1.1.1", "device": {"type": "phone"}, "locale": "fr-FR"}
    assert b.context == {"ip": "0.0.0.0", "device": {"type": "phone"}}


def test_batch_events_in_order_and_unknown_members_ignored() -> None:
    evs = batch(
        msg(event="Product Viewed", properties={"product_id": "p"}, integrations={"All": True}),
        msg("page", messageId="m2", channel="server", _metadata={"x": 1}),
        writeKey="k",
    )
    assert [e.type for e in evs] == ["product_viewed", "page_viewed"]


def test_single_message_endpoints_take_the_type_from_the_path() -> None:
    body = orjson.dumps({"userId": "u1", "event": "Cart Viewed", "type": "identify"})
    [ev] = parse(body, "track", NOW_MS)
    assert ev.type == "cart_viewed"
    [ev] = parse(orjson.dumps({"userId": "u1", "traits": {"a": 1}}), "identify", NOW_MS)
    assert ev.properties == {"attributes": {"a": 1}}


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        (b"{nope", 400, "invalid_json", "$"),
        (b"[1]", 400, "invalid_field", "$"),
        (b"{}", 400, "missing_field", "$.batch"),
        ({"batch": []}, 400, "empty_batch", "$.batch"),
        ({"batch": {"a": 1}}, 400, "invalid_field", "$.batch"),
        ({"batch": [5]}, 400, "invalid_field", "$.batch[0]"),
        ({"batch": [msg(), {"userId": "u"}]}, 400, "missing_field", "$.batch[1].type"),
        ({"batch": [msg(), msg("explode")]}, 400, "unknown_type", "$.batch[1].type"),
        ({"batch": [msg(properties=[1])]}, 400, "invalid_field", "$.batch[0].properties"),
        ({"batch": [msg()], "sentAt": "x"}, 400, "invalid_field", "$.sentAt"),
        # deeper than any recursion limit in play (1,000 by default; importing pymc, as
        # the in-process model tests do, sets 10,000): the same answer in any test order
        (b'{"batch": [' + b"[" * 20_000 + b"]" * 20_000 + b"]}", 400, "invalid_json", "$"),
    ],
)
def test_bad_requests_are_rejected_whole(body: Any, status: int, code: str, field: str) -> None:
    err = error(body)
    assert (err.status, err.code, err.field) == (status, code, field)


def test_size_limits() -> None:
    pad = "x" * (MAX_MESSAGE_BYTES - 200)
    ok = [msg(messageId=f"m{i}", properties={"pad": pad}) for i in range(3)]
    assert len(batch(*ok)) == 3
    big = msg(messageId="big", properties={"pad": pad + "x" * 300})
    err = error({"batch": [*ok, big]})
    assert (err.status, err.code, err.field, err.extra["index"]) == (
        413,
        "message_too_large",
        "$.batch[3]",
        3,
    )
    many = [msg(messageId=f"m{i}", properties={"pad": pad}) for i in range(17)]
    err = error({"batch": many})
    assert (err.status, err.code, err.extra["limit_bytes"]) == (413, "batch_too_large", 512000)
    assert len(orjson.dumps({"batch": many})) > MAX_BATCH_BYTES
    err = error(big, "track")
    assert (err.status, err.code, err.field) == (413, "message_too_large", "$")


def test_write_key_of() -> None:
    assert write_key_of(b'{"writeKey": "k1", "batch": [1, 2]}') == "k1"
    assert write_key_of(b'{"batch": []}') is None
    assert write_key_of(b'{"writeKey": 5}') is None
    assert write_key_of(b'{"writeKey": ""}') is None
    assert write_key_of(b"[1]") is None
    assert write_key_of(b"{nope") is None
