"""Provider webhooks against a real embedded runtime over HTTP: signed deliveries land as
events (seen in GET /v1/customers), bad signatures are 401 with nothing journaled,
Shopify's retries are duplicates, and every refusal is counted by source."""

from __future__ import annotations

import base64
import hashlib
import hmac
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr
from twilio.request_validator import RequestValidator

from connectors.sources.config import SourcesConfig
from connectors.sources.twilio import status_callback_url
from engine.testing import START
from tests.engine.embedded.conftest import Harness, running

SHOPIFY_SECRET = "shopify-shared-secret"
TWILIO_TOKEN = "twilio-auth-token"
PUBLIC_URL = "https://nudge.example.com"  # what the providers call: a proxy in front
SG_KEY = ec.generate_private_key(ec.SECP256R1())
SG_PUBLIC = base64.b64encode(
    SG_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()


@pytest.fixture
async def hooks(tmp_path: Path) -> AsyncIterator[Harness]:
    """The conftest harness, with every source configured."""
    sources = SourcesConfig(
        shopify_secret=SecretStr(SHOPIFY_SECRET),
        sendgrid_verification_key=SecretStr(SG_PUBLIC),
        twilio_auth_token=SecretStr(TWILIO_TOKEN),
        public_url=PUBLIC_URL,
    )
    async with running(tmp_path / "data", sources=sources) as h:
        yield h


async def customer(h: Harness, cid: str) -> dict[str, Any] | None:
    await h.settle()
    async with h.session.get(h.url(f"/v1/customers/{cid}"), headers=h.auth("admin")) as r:
        if r.status == 404:
            return None
        assert r.status == 200
        body: dict[str, Any] = await r.json()
        return body


def journaled(h: Harness) -> list[dict[str, Any]]:
    db = sqlite3.connect(h.data / "journal.db")
    try:
        rows = db.execute("SELECT body FROM journal ORDER BY seq").fetchall()
    finally:
        db.close()
    return [ev for (body,) in rows if body is not None for ev in orjson.loads(body)]


async def rejected(h: Harness, source: str, reason: str) -> float:
    async with h.session.get(h.url("/metrics")) as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith("nudge_events_rejected_total{") and (
            f'source="{source}"' in line and f'reason="{reason}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- Shopify -----------------------------------------------------------------------


async def shopify(
    h: Harness, topic: str, payload: Any, webhook_id: str, secret: str = SHOPIFY_SECRET
) -> tuple[int, Any]:
    body = orjson.dumps(payload)
    sig = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    headers = {
        "X-Shopify-Topic": topic,
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-Hmac-Sha256": sig,
        "Content-Type": "application/json",
    }
    async with h.session.post(h.url("/v1/sources/shopify"), data=body, headers=headers) as r:
        return r.status, await r.json()


ORDER = {
    "id": 4501,
    "total_price": "120.50",
    "currency": "EUR",
    "created_at": "2026-01-05T12:00:00Z",
    "customer": {"id": 777},
    "line_items": [{"product_id": 1, "price": "60.25", "quantity": 2}],
}


async def test_shopify_cart_order_refund_and_retry(hooks: Harness) -> None:
    h = hooks
    cart = {
        "id": "tok1",
        "token": "tok1",
        "updated_at": "2026-01-05T11:00:00Z",
        "line_items": [
            {"product_id": 11, "price": "10.00", "quantity": 2},
            {"product_id": 12, "price": "5.50", "quantity": 1},
        ],
    }
    assert await shopify(h, "carts/create", cart, "w1") == (202, {"accepted": 1})
    got = await customer(h, "anon:tok1")
    assert got is not None
    items = {(i["product_id"], i["quantity"]) for i in got["cart"]["items"]}
    assert items == {("11", 2), ("12", 1)}
    assert got["cart"]["value"] == 25.5

    # the order, then Shopify retrying the same delivery: counted once
    assert (await shopify(h, "orders/create", ORDER, "w2"))[0] == 202
    assert (await shopify(h, "orders/create", ORDER, "w2"))[0] == 202
    got = await customer(h, "777")
    assert got is not None
    assert (got["profile"]["orders"], got["profile"]["ltv"]) == (1, 120.5)

    # a refund names only the order: the customer is found from orders/create
    refund = {
        "id": 9,
        "order_id": 4501,
        "created_at": "2026-01-05T13:00:00Z",
        "transactions": [{"kind": "refund", "status": "success", "amount": "20.50"}],
    }
    assert (await shopify(h, "refunds/create", refund, "w3"))[0] == 202
    got = await customer(h, "777")
    assert got is not None
    assert got["profile"]["ltv"] == 100.0
    unknown = {**refund, "order_id": 999}
    assert await shopify(h, "refunds/create", unknown, "w4") == (
        200,
        {"ignored": "refunds/create", "reason": "unknown_order"},
    )
    assert await rejected(h, "shopify", "unknown_order") == 1


async def test_shopify_customer_profile_and_unknown_topic(hooks: Harness) -> None:
    h = hooks
    profile = {
        "id": 777,
        "email": "ann@example.com",
        "phone": "+14155550100",
        "first_name": "Ann",
        "updated_at": "2026-01-05T12:00:00Z",
        "email_marketing_consent": {"state": "unsubscribed"},
        "sms_marketing_consent": {"state": "subscribed"},
    }
    assert (await shopify(h, "customers/update", profile, "w1"))[0] == 202
    got = await customer(h, "777")
    assert got is not None
    assert got["profile"]["attributes"]["email"] == "ann@example.com"
    assert got["profile"]["consent"]["email"] is False
    assert got["profile"]["consent"]["sms"] is True
    assert await shopify(h, "products/update", {"id": 1}, "w2") == (
        200,
        {"ignored": "products/update"},
    )
    assert await rejected(h, "shopify", "unknown_topic") == 1


async def test_shopify_bad_signature_is_401_and_nothing_journaled(hooks: Harness) -> None:
    h = hooks
    status, body = await shopify(h, "orders/create", ORDER, "w1", secret="not-the-secret")
    assert (status, body["error"]["code"]) == (401, "bad_signature")
    async with h.session.post(h.url("/v1/sources/shopify"), data=b"{}") as r:
        assert r.status == 401
    assert await rejected(h, "shopify", "bad_signature") == 2
    assert journaled(h) == []
    assert await customer(h, "777") is None
    # a bearer token does not open a signed route
    async with h.session.post(
        h.url("/v1/sources/shopify"), data=orjson.dumps(ORDER), headers=h.auth("admin")
    ) as r:
        assert r.status == 401


async def test_shopify_signed_garbage_is_400(hooks: Harness) -> None:
    h = hooks
    body = b"{nope"
    sig = base64.b64encode(hmac.new(SHOPIFY_SECRET.encode(), body, hashlib.sha256).digest())
    headers = {
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Webhook-Id": "w1",
        "X-Shopify-Hmac-Sha256": sig.decode(),
    }
    async with h.session.post(h.url("/v1/sources/shopify"), data=body, headers=headers) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "invalid_json"
    assert await rejected(h, "shopify", "invalid_json") == 1


# --- SendGrid ----------------------------------------------------------------------


async def sendgrid(
    h: Harness,
    events: list[dict[str, Any]],
    *,
    signed_at: int | None = None,
    tamper: bool = False,
) -> tuple[int, Any]:
    body = orjson.dumps(events)
    ts = str(signed_at if signed_at is not None else int(time.time()))
    sig = base64.b64encode(SG_KEY.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
    headers = {
        "X-Twilio-Email-Event-Webhook-Signature": sig,
        "X-Twilio-Email-Event-Webhook-Timestamp": ts,
        "Content-Type": "application/json",
    }
    if tamper:
        body = body.replace(b"c1", b"c9")
    async with h.session.post(h.url("/v1/sources/sendgrid"), data=body, headers=headers) as r:
        return r.status, await r.json()


def sg(kind: str, n: int, customer: str | None = "c1", **extra: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "email": "ann@example.com",
        "timestamp": START // 1000,
        "event": kind,
        "sg_event_id": f"sg{n}",
        "sg_message_id": "m1",
        **extra,
    }
    if customer is not None:
        ev.update(nudge_customer=customer, nudge_key="k1", nudge_rule="r1", nudge_template="t1")
    return ev


async def test_sendgrid_unsubscribe_and_bounce_land(hooks: Harness) -> None:
    h = hooks
    status, body = await sendgrid(
        h,
        [
            sg("processed", 1),
            sg("delivered", 2),
            sg("unsubscribe", 3),
            sg("open", 4, customer=None),
        ],
    )
    assert (status, body) == (202, {"accepted": 2})
    got = await customer(h, "c1")
    assert got is not None
    assert got["profile"]["consent"]["email"] is False
    assert await rejected(h, "sendgrid", "unknown_recipient") == 1
    types = [e["type"] for e in journaled(h)]
    assert types == ["email_delivered", "email_unsubscribed"]
    # nothing of ours in a batch: still 2xx (SendGrid retries anything else)
    status, body = await sendgrid(h, [sg("deferred", 5)])
    assert (status, body) == (200, {"accepted": 0, "skipped": {"ignored": 1}})


async def test_sendgrid_bad_or_stale_signature_is_401(hooks: Harness) -> None:
    h = hooks
    status, body = await sendgrid(h, [sg("unsubscribe", 1)], tamper=True)
    assert (status, body["error"]["code"]) == (401, "bad_signature")
    status, body = await sendgrid(h, [sg("unsubscribe", 1)], signed_at=int(time.time()) - 3600)
    assert (status, body["error"]["code"]) == (401, "stale_timestamp")
    assert await rejected(h, "sendgrid", "bad_signature") == 1
    assert await rejected(h, "sendgrid", "stale_timestamp") == 1
    assert journaled(h) == []


# --- Twilio ------------------------------------------------------------------------


async def twilio_post(
    h: Harness, path_qs: str, params: dict[str, str], token: str = TWILIO_TOKEN
) -> tuple[int, str, bytes]:
    sig = RequestValidator(token).compute_signature(PUBLIC_URL + path_qs, params)
    async with h.session.post(
        h.url(path_qs),
        data=urlencode(params),
        headers={"X-Twilio-Signature": sig, "Content-Type": "application/x-www-form-urlencoded"},
    ) as r:
        return r.status, r.content_type, await r.read()


async def test_twilio_status_callbacks(hooks: Harness) -> None:
    h = hooks
    url = status_callback_url(PUBLIC_URL, "c2", "key-1", "cart-sms", "cart_10pct")
    path_qs = url.removeprefix(PUBLIC_URL)
    base = {"MessageSid": "SM1", "To": "+14155550100", "From": "+15005550006"}
    status, _, _ = await twilio_post(h, path_qs, {**base, "MessageStatus": "sent"})
    assert status == 200
    status, _, body = await twilio_post(
        h, path_qs, {**base, "MessageStatus": "undelivered", "ErrorCode": "30006"}
    )
    assert (status, orjson.loads(body)) == (200, {"accepted": 1})
    await h.settle()
    [ev] = journaled(h)
    assert (ev["type"], ev["customer_id"]) == ("sms_failed", "c2")
    assert ev["event_id"] == "SM1:undelivered"
    assert ev["properties"]["bounce_type"] == "hard"
    assert ev["properties"]["message_key"] == "key-1"
    # signed for another URL (e.g. the request's own host): refused
    sig = RequestValidator(TWILIO_TOKEN).compute_signature(h.url(path_qs), base)
    async with h.session.post(
        h.url(path_qs), data=urlencode(base), headers={"X-Twilio-Signature": sig}
    ) as r:
        assert r.status == 401
    assert await rejected(h, "twilio", "bad_signature") == 1


async def test_twilio_inbound_stop_finds_the_customer_by_phone(hooks: Harness) -> None:
    h = hooks
    # the phone is learnt from a profile event of another source (here Shopify)
    profile = {
        "id": 42,
        "phone": "+1 415 555 0100",
        "sms_marketing_consent": {"state": "subscribed"},
    }
    assert (await shopify(h, "customers/create", profile, "w1"))[0] == 202
    got = await customer(h, "42")
    assert got is not None
    assert got["profile"]["consent"]["sms"] is True
    msg = {"MessageSid": "SMin1", "From": "+14155550100", "To": "+15005550006", "Body": "Stop"}
    status, ctype, body = await twilio_post(h, "/v1/sources/twilio/inbound", msg)
    assert (status, ctype) == (200, "text/xml")
    assert body.endswith(b"<Response/>")
    got = await customer(h, "42")
    assert got is not None
    assert got["profile"]["consent"]["sms"] is False
    # a number nobody has: empty TwiML, counted
    stranger = {**msg, "MessageSid": "SMin2", "From": "+19999999999"}
    status, ctype, _ = await twilio_post(h, "/v1/sources/twilio/inbound", stranger)
    assert (status, ctype) == (200, "text/xml")
    assert await rejected(h, "twilio", "unknown_recipient") == 1


async def test_unconfigured_sources_answer_404(harness: Harness) -> None:
    """The conftest harness has no secrets: every webhook route is disabled."""
    for path in (
        "/v1/sources/shopify",
        "/v1/sources/sendgrid",
        "/v1/sources/twilio/status",
        "/v1/sources/twilio/inbound",
    ):
        async with harness.session.post(harness.url(path), data=b"{}") as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "source_disabled"
    assert await rejected(harness, "twilio", "source_disabled") == 2
