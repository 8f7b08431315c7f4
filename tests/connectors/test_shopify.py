"""Shopify webhooks: HMAC verification as Shopify signs, and each topic's mapping."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from connectors.sources import shopify
from connectors.sources.exceptions import SourceError
from engine.events import validate_properties

SECRET = "hush-shopify"
NOW = datetime(2026, 1, 5, 12, tzinfo=UTC)


def sign(body: bytes, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def headers(topic: str, body: bytes, webhook_id: str = "wh-1") -> dict[str, str]:
    return {
        "X-Shopify-Topic": topic,
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-Hmac-Sha256": sign(body),
        "X-Shopify-Shop-Domain": "shop.myshopify.com",
    }


ORDER: dict[str, Any] = {
    "id": 820982911946154508,
    "name": "#1001",
    "email": "jon@example.com",
    "created_at": "2026-01-05T06:00:00-05:00",
    "processed_at": "2026-01-05T06:00:01-05:00",
    "currency": "USD",
    "total_price": "199.65",
    "cart_token": "c1-token",
    "customer": {"id": 115310627314723954, "email": "jon@example.com"},
    "line_items": [
        {
            "id": 1,
            "product_id": 632910392,
            "variant_id": 808950810,
            "price": "99.00",
            "quantity": 2,
            "sku": "IPOD",
            "title": "IPod Nano",
        },
        {
            "id": 2,
            "product_id": None,
            "variant_id": None,
            "price": "1.65",
            "quantity": 1,
            "title": "Tip",
        },
    ],
}


def parse(topic: str, payload: Any, webhook_id: str = "wh-1") -> shopify.ShopifyWebhook:
    body = orjson.dumps(payload)
    return shopify.parse(body, headers(topic, body, webhook_id), SECRET, NOW)


def test_signature_made_as_shopify_makes_it_is_accepted() -> None:
    hook = parse("orders/create", ORDER)
    assert hook.topic == "orders/create"
    assert hook.webhook_id == "wh-1"


@pytest.mark.parametrize(
    "signature", [None, "", "not base64!", sign(b"other body"), sign(b"{}", "wrong-secret")]
)
def test_bad_or_missing_signature_is_401(signature: str | None) -> None:
    body = b"{}"
    h = headers("orders/create", body)
    if signature is None:
        del h["X-Shopify-Hmac-Sha256"]
    else:
        h["X-Shopify-Hmac-Sha256"] = signature
    with pytest.raises(SourceError) as err:
        shopify.parse(body, h, SECRET, NOW)
    assert (err.value.status, err.value.code) == (401, "bad_signature")


def test_signed_but_not_json_is_400() -> None:
    body = b"{not json"
    with pytest.raises(SourceError) as err:
        shopify.parse(body, headers("orders/create", body), SECRET, NOW)
    assert (err.value.status, err.value.code) == (400, "invalid_json")


def test_missing_topic_is_400() -> None:
    body = b"{}"
    h = headers("orders/create", body)
    del h["X-Shopify-Topic"]
    with pytest.raises(SourceError) as err:
        shopify.parse(body, h, SECRET, NOW)
    assert err.value.code == "missing_header"


def test_orders_create_is_order_completed() -> None:
    [ev] = shopify.to_events(parse("orders/create", ORDER))
    validate_properties(ev)
    assert ev.type == "order_completed"
    assert ev.event_id == "shopify:wh-1"
    assert ev.customer_id == "115310627314723954"
    assert ev.timestamp == datetime(2026, 1, 5, 11, 0, 1, tzinfo=UTC)
    assert ev.properties["order_id"] == "820982911946154508"
    assert ev.properties["total"] == 199.65
    assert ev.properties["currency"] == "USD"
    assert ev.properties["products"] == [
        {
            "product_id": "632910392",
            "price": 99.0,
            "quantity": 2,
            "variant_id": "808950810",
            "sku": "IPOD",
            "title": "IPod Nano",
        }
    ]
    assert shopify.order_customer(parse("orders/create", ORDER)) == (
        "820982911946154508",
        "115310627314723954",
    )


def test_same_webhook_id_same_event_id() -> None:
    a = shopify.to_events(parse("orders/create", ORDER, "wh-9"))
    b = shopify.to_events(parse("orders/create", ORDER, "wh-9"))
    assert a[0].event_id == b[0].event_id == "shopify:wh-9"


def test_orders_paid_is_order_paid() -> None:
    [ev] = shopify.to_events(parse("orders/paid", ORDER))
    assert (ev.type, ev.properties["total"]) == ("order_paid", 199.65)


def test_guest_order_goes_to_the_cart_token() -> None:
    order = {**ORDER, "customer": None}
    [ev] = shopify.to_events(parse("orders/create", order))
    assert ev.customer_id == "anon:c1-token"
    order = {**order, "cart_token": None}
    assert shopify.to_events(parse("orders/create", order)) == []


def test_bad_total_names_the_field() -> None:
    with pytest.raises(SourceError) as err:
        shopify.to_events(parse("orders/create", {**ORDER, "total_price": "lots"}))
    assert (err.value.status, err.value.field) == (400, "$.total_price")


def test_refund_sums_successful_refund_transactions() -> None:
    refund = {
        "id": 509562969,
        "order_id": 820982911946154508,
        "created_at": "2026-01-06T10:00:00Z",
        "transactions": [
            {"kind": "refund", "status": "success", "amount": "41.94"},
            {"kind": "refund", "status": "failure", "amount": "100.00"},
            {"kind": "refund", "status": "success", "amount": "8.06"},
            {"kind": "sale", "status": "success", "amount": "5.00"},
        ],
    }
    hook = parse("refunds/create", refund, "wh-r")
    assert shopify.refund_order_id(hook) == "820982911946154508"
    ev = shopify.refund_event(hook, "115310627314723954")
    validate_properties(ev)
    assert ev.type == "order_refunded"
    assert ev.properties == {
        "order_id": "820982911946154508",
        "amount": 50.0,
        "refund_id": "509562969",
    }
    assert ev.timestamp == datetime(2026, 1, 6, 10, tzinfo=UTC)


def test_cart_webhook_replaces_the_anonymous_cart() -> None:
    cart = {
        "id": "eeafa272cebfd4b22385bc4b645e762c",
        "token": "eeafa272cebfd4b22385bc4b645e762c",
        "updated_at": "2026-01-05T12:30:00Z",
        "line_items": [
            {
                "product_id": 788032119674292922,
                "variant_id": 1,
                "price": "19.99",
                "quantity": 3,
                "title": "Shirt",
            },
        ],
    }
    [ev] = shopify.to_events(parse("carts/update", cart))
    validate_properties(ev)
    assert ev.type == "cart_replaced"
    assert ev.customer_id == "anon:eeafa272cebfd4b22385bc4b645e762c"
    assert ev.properties["items"] == [
        {
            "product_id": "788032119674292922",
            "price": 19.99,
            "quantity": 3,
            "variant_id": "1",
            "title": "Shirt",
        }
    ]
    [empty] = shopify.to_events(parse("carts/update", {**cart, "line_items": []}, "wh-2"))
    assert empty.properties == {"items": []}


def test_checkout_starts_once_per_token_and_aliases_the_cart() -> None:
    checkout = {
        "id": 901414060,
        "token": "chk-token",
        "cart_token": "c1-token",
        "created_at": "2026-01-05T12:00:00Z",
        "updated_at": "2026-01-05T12:05:00Z",
        "total_price": "398.00",
        "currency": "EUR",
        "customer": {"id": 207119551},
    }
    alias, started = shopify.to_events(parse("checkouts/create", checkout, "wh-a"))
    again = shopify.to_events(parse("checkouts/update", checkout, "wh-b"))
    for ev in (alias, started):
        validate_properties(ev)
    assert (alias.type, alias.customer_id) == ("customer_aliased", "anon:c1-token")
    assert alias.properties == {"user_id": "207119551"}
    assert (started.type, started.customer_id) == ("checkout_started", "207119551")
    assert started.properties == {
        "checkout_token": "chk-token",
        "cart_value": 398.0,
        "currency": "EUR",
    }
    assert [e.event_id for e in again] == [alias.event_id, started.event_id]
    # a guest checkout stays on the anonymous cart's customer, with no alias
    [guest] = shopify.to_events(parse("checkouts/create", {**checkout, "customer": None}))
    assert (guest.type, guest.customer_id) == ("checkout_started", "anon:c1-token")


@pytest.mark.parametrize(
    ("email_state", "sms", "consent"),
    [
        ("subscribed", {"state": "subscribed"}, {"email": True, "sms": True}),
        ("not_subscribed", None, {"email": False}),
        ("unsubscribed", {"state": "pending"}, {"email": False, "sms": False}),
    ],
)
def test_customer_profile_and_consent(
    email_state: str, sms: dict[str, str] | None, consent: dict[str, bool]
) -> None:
    customer = {
        "id": 706405506930370084,
        "email": "bob@example.com",
        "phone": "+16136120707",
        "first_name": "Bob",
        "last_name": "Norman",
        "updated_at": "2026-01-05T12:00:00-05:00",
        "email_marketing_consent": {"state": email_state, "opt_in_level": "single_opt_in"},
        "sms_marketing_consent": sms,
    }
    [ev] = shopify.to_events(parse("customers/update", customer))
    validate_properties(ev)
    assert (ev.type, ev.customer_id) == ("customer_updated", "706405506930370084")
    assert ev.properties["attributes"] == {
        "shopify_customer_id": "706405506930370084",
        "email": "bob@example.com",
        "phone": "+16136120707",
        "first_name": "Bob",
        "last_name": "Norman",
    }
    assert ev.properties["consent"] == consent
