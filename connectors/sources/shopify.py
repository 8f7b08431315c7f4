"""Shopify webhooks: verify ``X-Shopify-Hmac-Sha256`` and map topics onto Nudge events.

Contract (docs/sources/shopify.md):

* The signature is the base64 HMAC-SHA256 of the raw body under the app's shared secret,
  compared in constant time. A bad or missing one raises :class:`SourceError` 401
  ``bad_signature`` before the body is parsed.
* Event ids derive from ``X-Shopify-Webhook-Id``, which Shopify keeps across retries of a
  delivery, so a retry is a duplicate. ``checkout_started`` uses the checkout token
  instead: a checkout updated five times was started once.
* Customer ids: the Shopify customer id as a string (``"7363270639767"``), which is what
  Segment's Shopify integrations send as ``userId``, so webhook events and storefront
  tracking land on the same customer. Cart webhooks carry no customer: their events go to
  ``anon:<cart token>``; a checkout that names both a customer and a cart token also sends
  ``customer_aliased`` for ``anon:<cart token>``, so that cart joins the customer.
* ``refunds/create`` names the order, not the customer: :func:`refund_event` takes the
  customer the HTTP layer found for the order (recorded from ``orders/create``,
  :func:`order_customer`).

Pure: no I/O, no clock (``now`` is passed in).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from connectors.sources.exceptions import SourceError
from engine.types import Event

__all__ = [
    "TOPICS",
    "ShopifyWebhook",
    "order_customer",
    "parse",
    "refund_event",
    "refund_order_id",
    "to_events",
    "verify",
]

SIGNATURE_HEADER = "X-Shopify-Hmac-Sha256"
TOPIC_HEADER = "X-Shopify-Topic"
WEBHOOK_ID_HEADER = "X-Shopify-Webhook-Id"
TRIGGERED_AT_HEADER = "X-Shopify-Triggered-At"
ANON_PREFIX = "anon:"

TOPICS = frozenset(
    {
        "orders/create",
        "orders/paid",
        "refunds/create",
        "checkouts/create",
        "checkouts/update",
        "carts/create",
        "carts/update",
        "customers/create",
        "customers/update",
    }
)
"""The topics mapped to events; others are answered 200 and ignored."""
_MAX_ID = 200


@dataclass(frozen=True)
class ShopifyWebhook:
    """A verified delivery: its topic, webhook id, decoded body and a fallback time (the
    ``X-Shopify-Triggered-At`` header, else ``now``) for payloads without their own."""

    topic: str
    webhook_id: str
    payload: dict[str, Any]
    received: datetime


def verify(body: bytes, signature: str | None, secret: str) -> None:
    """Raise SourceError 401 ``bad_signature`` unless ``signature`` is the base64
    HMAC-SHA256 of ``body`` under ``secret``."""
    if not signature:
        raise SourceError(
            f"missing {SIGNATURE_HEADER} header",
            status=401,
            code="bad_signature",
            field=SIGNATURE_HEADER,
        )
    expected = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    try:
        got = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        got = b""
    if not hmac.compare_digest(expected, got):
        raise SourceError(
            "signature does not match the body",
            status=401,
            code="bad_signature",
            field=SIGNATURE_HEADER,
        )


def parse(body: bytes, headers: Mapping[str, str], secret: str, now: datetime) -> ShopifyWebhook:
    """Verify and decode one delivery. Raises SourceError: 401 ``bad_signature``; 400
    ``missing_header`` (no topic or webhook id), ``invalid_json`` (not a JSON object)."""
    verify(body, headers.get(SIGNATURE_HEADER), secret)
    topic = (headers.get(TOPIC_HEADER) or "").strip()
    webhook_id = (headers.get(WEBHOOK_ID_HEADER) or "").strip()
    for name, value in ((TOPIC_HEADER, topic), (WEBHOOK_ID_HEADER, webhook_id)):
        if not value:
            raise SourceError(f"missing {name} header", code="missing_header", field=name)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise SourceError(f"body is not JSON: {err}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise SourceError("body is not a JSON object", code="invalid_json")
    received = _time(headers.get(TRIGGERED_AT_HEADER)) or now
    return ShopifyWebhook(topic, webhook_id[: _MAX_ID - 40], payload, received)


def _time(value: Any) -> datetime | None:
    """An RFC 3339 / ISO 8601 time with an offset, as aware UTC; None otherwise."""
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    try:
        return dt.astimezone(UTC)
    except OverflowError:
        return None


def _money(value: Any, field: str) -> float:
    """A Shopify amount (a decimal string like ``"19.99"``, or a number) as a float."""
    try:
        amount = float(value) if isinstance(value, str | int | float) else math.nan
    except ValueError:
        amount = math.nan
    if not math.isfinite(amount) or abs(amount) > 1e15 or isinstance(value, bool):
        raise SourceError(f"expected an amount, got {value!r}", field=field)
    return amount


def _quantity(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 2**63:
        raise SourceError(f"expected an integer quantity, got {value!r}", field=field)
    return value


def _id(value: Any) -> str | None:
    """A Shopify id (number or string) as a non-empty string, or None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | str) and str(value).strip():
        return str(value).strip()[:_MAX_ID]
    return None


def _customer_id(payload: dict[str, Any]) -> str | None:
    """``customer.id`` as a string, else ``anon:<cart_token>``, else None."""
    customer = payload.get("customer")
    if isinstance(customer, dict) and (cid := _id(customer.get("id"))) is not None:
        return cid
    token = _id(payload.get("cart_token"))
    return None if token is None else (ANON_PREFIX + token)[:_MAX_ID]


def _when(payload: dict[str, Any], hook: ShopifyWebhook, *keys: str) -> datetime:
    for key in keys:
        if (dt := _time(payload.get(key))) is not None:
            return dt
    return hook.received


def _lines(payload: dict[str, Any], path: str) -> list[dict[str, Any]]:
    """``line_items`` as ``{product_id, price, quantity}`` (plus ``variant_id``, ``sku``,
    ``title`` when present); lines without a product or variant id are left out."""
    lines = payload.get("line_items")
    if not isinstance(lines, list):
        return []
    out = []
    for i, line in enumerate(lines):
        if not isinstance(line, dict):
            continue
        pid = _id(line.get("product_id")) or _id(line.get("variant_id"))
        if pid is None:
            continue
        at = f"{path}.line_items[{i}]"
        item: dict[str, Any] = {
            "product_id": pid,
            "price": _money(line.get("price", 0), at + ".price"),
            "quantity": _quantity(line.get("quantity", 1), at + ".quantity"),
        }
        for key in ("variant_id", "sku", "title"):
            if (v := _id(line.get(key))) is not None:
                item[key] = v
        out.append(item)
    return out


def _event(
    event_id: str, etype: str, customer_id: str, ts: datetime, props: dict[str, Any]
) -> Event:
    return Event(
        event_id=event_id[:_MAX_ID],
        type=etype,
        customer_id=customer_id,
        timestamp=ts,
        properties=props,
        context={"source": "shopify"},
    )


def to_events(hook: ShopifyWebhook) -> list[Event]:
    """The events of a delivery of any topic in :data:`TOPICS` but ``refunds/create``
    (see :func:`refund_event`); ``[]`` when it names no customer (an order or checkout
    without customer and cart token). Raises SourceError 400 naming the field of a
    malformed amount or quantity, or a missing id."""
    p, topic = hook.payload, hook.topic
    eid = f"shopify:{hook.webhook_id}"
    if topic.startswith("carts/"):
        token = _id(p.get("token")) or _id(p.get("id"))
        if token is None:
            raise SourceError("cart without token", field="$.token")
        ts = _when(p, hook, "updated_at", "created_at")
        items = _lines(p, "$")
        anon = (ANON_PREFIX + token)[:_MAX_ID]
        return [_event(eid, "cart_replaced", anon, ts, {"items": items})]
    if topic.startswith("customers/"):
        cid = _id(p.get("id"))
        if cid is None:
            raise SourceError("customer without id", field="$.id")
        ts = _when(p, hook, "updated_at", "created_at")
        return [_event(eid, "customer_updated", cid, ts, _profile(p, cid))]
    cid = _customer_id(p)
    if cid is None:
        return []
    if topic.startswith("checkouts/"):
        token = _id(p.get("token")) or _id(p.get("id"))
        if token is None:
            raise SourceError("checkout without token", field="$.token")
        ts = _when(p, hook, "created_at", "updated_at")
        props: dict[str, Any] = {"checkout_token": token}
        if p.get("total_price") is not None:
            props["cart_value"] = _money(p["total_price"], "$.total_price")
        if isinstance(p.get("currency"), str):
            props["currency"] = p["currency"]
        events = [_event(f"shopify:checkout:{token}", "checkout_started", cid, ts, props)]
        cart = _id(p.get("cart_token"))
        if cart is not None and not cid.startswith(ANON_PREFIX):
            anon = (ANON_PREFIX + cart)[:_MAX_ID]
            events.insert(
                0, _event(f"shopify:alias:{cart}", "customer_aliased", anon, ts, {"user_id": cid})
            )
        return events
    order_id = _id(p.get("id"))
    if order_id is None:
        raise SourceError("order without id", field="$.id")
    props = {"order_id": order_id, "total": _money(p.get("total_price"), "$.total_price")}
    if isinstance(p.get("currency"), str):
        props["currency"] = p["currency"]
    if topic == "orders/paid":
        return [_event(eid, "order_paid", cid, _when(p, hook, "updated_at"), props)]
    if topic == "orders/create":
        props["products"] = _lines(p, "$")
        if isinstance(p.get("name"), str):
            props["order_name"] = p["name"]
        ts = _when(p, hook, "processed_at", "created_at")
        return [_event(eid, "order_completed", cid, ts, props)]
    raise SourceError(f"topic {topic} is not mapped here", field=TOPIC_HEADER)


_SUBSCRIBED = "subscribed"


def _consent_state(value: Any) -> bool | None:
    """``{"state": "subscribed"}`` -> True; any other state (``not_subscribed``,
    ``unsubscribed``, ``pending`` confirmation, ``redacted``, ``invalid``) -> False; no
    consent object -> None (left as it was)."""
    state = value.get("state") if isinstance(value, dict) else None
    return None if not isinstance(state, str) else state.lower() == _SUBSCRIBED


def _profile(p: dict[str, Any], cid: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {"shopify_customer_id": cid}
    for key in ("email", "phone", "first_name", "last_name"):
        value = p.get(key)
        if isinstance(value, str) and value:
            attributes[key] = value[:1000]
    props: dict[str, Any] = {"attributes": attributes}
    consent = {
        channel: state
        for channel, key in (("email", "email_marketing_consent"), ("sms", "sms_marketing_consent"))
        if (state := _consent_state(p.get(key))) is not None
    }
    if consent:
        props["consent"] = consent
    return props


def order_customer(hook: ShopifyWebhook) -> tuple[str, str] | None:
    """(order id, customer id) of an ``orders/*`` delivery, for the HTTP layer to record
    so a later refund finds its customer; None if either is missing."""
    if not hook.topic.startswith("orders/"):
        return None
    order_id, cid = _id(hook.payload.get("id")), _customer_id(hook.payload)
    return None if order_id is None or cid is None else (order_id, cid)


def refund_order_id(hook: ShopifyWebhook) -> str:
    """The order id a ``refunds/create`` delivery names. Raises SourceError 400."""
    order_id = _id(hook.payload.get("order_id"))
    if order_id is None:
        raise SourceError("refund without order_id", field="$.order_id")
    return order_id


def refund_event(hook: ShopifyWebhook, customer_id: str) -> Event:
    """``order_refunded`` {order_id, amount} for ``customer_id``: ``amount`` is the sum of
    the refund's successful ``refund`` transactions (a refund of items only, with no
    money moved, has amount 0)."""
    p = hook.payload
    order_id = refund_order_id(hook)
    amount = 0.0
    transactions = p.get("transactions")
    for i, t in enumerate(transactions if isinstance(transactions, list) else []):
        if not isinstance(t, dict) or t.get("kind", "refund") != "refund":
            continue
        if t.get("status", "success") != "success":
            continue
        amount += _money(t.get("amount", 0), f"$.transactions[{i}].amount")
    props: dict[str, Any] = {"order_id": order_id, "amount": round(amount, 2)}
    if (refund_id := _id(p.get("id"))) is not None:
        props["refund_id"] = refund_id
    ts = _when(p, hook, "processed_at", "created_at")
    return _event(f"shopify:{hook.webhook_id}", "order_refunded", customer_id, ts, props)
