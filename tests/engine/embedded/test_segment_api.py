"""The Segment / RudderStack tracking API on a real embedded runtime behind real HTTP: the
official clients, unchanged, pointed at it (segment-analytics-python, rudder-sdk-python,
@segment/analytics-node), and what it answers to bad requests."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import rudderstack.analytics as rudder_analytics
from segment.analytics import Client as SegmentClient
from segment.analytics.request import APIError

from tests.engine.embedded.conftest import Harness
from tests.engine.embedded.test_api import check_schema, metric

NPM_DIR = Path(os.environ.get("NUDGE_NPM_CACHE", Path.home() / ".cache" / "nudge" / "npm"))
NODE_CLIENT = "@segment/analytics-node@3"


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


async def post(
    h: Harness,
    path: str,
    body: Any,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = io.BytesIO(body if isinstance(body, bytes) else orjson.dumps(body))
    hdrs = basic(h.tokens.write) if headers is None else headers
    async with h.session.post(h.url(path), data=data, headers=hdrs) as r:
        return r.status, await r.json()


async def customer(h: Harness, cid: str) -> dict[str, Any] | None:
    async with h.session.get(h.url(f"/v1/customers/{cid}"), headers=h.auth("admin")) as r:
        if r.status == 404:
            return None
        assert r.status == 200
        body: dict[str, Any] = await r.json()
        return body


async def wait_customer(h: Harness, cid: str, ok: Any, what: str) -> dict[str, Any]:
    """Poll GET /v1/customers/{cid} until ``ok(body)`` (the identity merge travels through
    the outbox and the journal: a step or two after the events settle)."""
    body = None
    for _ in range(200):
        await h.settle()
        body = await customer(h, cid)
        if body is not None and ok(body):
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"{cid}: {what}; last seen {body}")


def cart(body: dict[str, Any]) -> dict[str, int]:
    return {i["product_id"]: i["quantity"] for i in body["cart"]["items"]}


async def rejected(h: Harness, reason: str) -> float:
    return await metric(h, "nudge_events_rejected_total", source="segment", reason=reason)


# --- the official clients --------------------------------------------------------------------


async def test_segment_python_client_batch_lands(harness: Harness) -> None:
    errors: list[Any] = []
    client = SegmentClient(
        write_key=harness.tokens.write,
        host=harness.url("/").rstrip("/"),
        on_error=lambda err, batch: errors.append(err),
        max_retries=0,
    )
    # an anonymous visitor browses and fills a cart, then signs in
    client.track(anonymous_id="a1", event="Product Viewed", properties={"product_id": "p1"})
    client.track(
        anonymous_id="a1",
        event="Product Added",
        properties={"product_id": "p1", "price": 12.5, "quantity": 2},
    )
    client.identify(
        user_id="u1",
        anonymous_id="a1",
        traits={"email": "u1@example.com", "name": "Ada", "email_opt_in": True},
        context={"timezone": "Europe/Paris"},
    )
    client.track(user_id="u1", event="Wishlist Shared", properties={"product_id": "p7"})
    await asyncio.to_thread(client.shutdown)  # flush: one POST /v1/batch
    assert errors == []
    body = await wait_customer(harness, "u1", lambda b: cart(b) == {"p1": 2}, "anon cart merged")
    profile = body["profile"]
    assert profile["attributes"]["email"] == "u1@example.com"
    assert profile["attributes"]["name"] == "Ada"
    assert profile["consent"]["email"] is True
    assert profile["timezone"] == "Europe/Paris"
    assert "p1" in body["recently_viewed"]
    redirect = await customer(harness, "anon:a1")  # the anonymous id's redirect
    assert redirect is not None
    assert redirect["merged_into"] == "u1"
    assert redirect["cart"]["items"] == []
    assert await metric(harness, "nudge_events_accepted_total", type="cart_item_added") == 1


async def test_segment_python_client_sync_gzip_order_fires_a_rule(harness: Harness) -> None:
    client = SegmentClient(
        write_key=harness.tokens.write,
        host=harness.url("/").rstrip("/"),
        sync_mode=True,
        gzip=True,
    )
    props = {
        "order_id": "o1",
        "revenue": 650.0,
        "products": [{"product_id": "p1", "price": 650.0, "quantity": 1}],
    }
    await asyncio.to_thread(client.track, user_id="u2", event="Order Completed", properties=props)
    [d] = await harness.hook.wait_for(1)
    assert d.body["rule_id"] == "vip-segment"
    assert d.body["customer_id"] == "u2"
    body = await wait_customer(harness, "u2", lambda b: b["profile"]["orders"] == 1, "order")
    assert body["profile"]["ltv"] == 650.0


async def test_segment_python_client_wrong_write_key_is_401(harness: Harness) -> None:
    client = SegmentClient(
        write_key="not-the-key", host=harness.url("/").rstrip("/"), sync_mode=True
    )
    with pytest.raises(APIError) as err:
        await asyncio.to_thread(client.track, user_id="u3", event="Cart Viewed")
    assert err.value.status == 401
    assert await rejected(harness, "unauthorized") == 1
    assert await customer(harness, "u3") is None


@pytest.fixture
def rudder(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``rudderstack.analytics`` configured as its docs say (write key, data plane URL)."""
    monkeypatch.setattr(rudder_analytics, "default_client", None)
    monkeypatch.setattr(rudder_analytics, "write_key", harness.tokens.write)
    monkeypatch.setattr(rudder_analytics, "dataPlaneUrl", harness.url("/").rstrip("/"))
    monkeypatch.setattr(rudder_analytics, "max_retries", 0)
    yield rudder_analytics
    if rudder_analytics.default_client is not None:
        rudder_analytics.shutdown()


async def test_rudderstack_python_client_lands(harness: Harness, rudder: Any) -> None:
    rudder.identify(user_id="r1", traits={"phone": "+33600000000", "sms_opt_in": True})
    rudder.track(user_id="r1", event="Product Added", properties={"sku": "sku-9", "price": 3.0})
    rudder.page(user_id="r1", name="Home", properties={"url": "https://shop.example/"})
    await asyncio.to_thread(rudder.flush)  # gzip, basic auth, /v1/batch: its defaults
    body = await wait_customer(harness, "r1", lambda b: cart(b) == {"sku-9": 1}, "cart")
    assert body["profile"]["attributes"]["phone"] == "+33600000000"
    assert body["profile"]["consent"]["sms"] is True
    assert await metric(harness, "nudge_events_accepted_total", type="page_viewed") == 1


def _node_client() -> Path:
    """The npm client installed in NPM_DIR (installed there on first use)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not on PATH: the @segment/analytics-node check needs them")
    if not (NPM_DIR / "node_modules" / "@segment" / "analytics-node").is_dir():
        NPM_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(NPM_DIR), NODE_CLIENT],
            check=True,
            timeout=240,
            capture_output=True,
        )
    return NPM_DIR / "node_modules"


NODE_SCRIPT = """
const { Analytics } = require('@segment/analytics-node');
const analytics = new Analytics({ writeKey: process.env.KEY, host: process.env.HOST, flushAt: 10 });
analytics.on('error', (err) => { console.error('error', err); process.exitCode = 1; });
analytics.identify({ userId: 'n1', anonymousId: 'na1', traits: { email: 'n1@example.com' } });
analytics.track({ anonymousId: 'na1', event: 'Product Viewed', properties: { product_id: 'p5' } });
analytics.track({
  userId: 'n1', event: 'Product Added', properties: { product_id: 'p5', price: 9.5 },
});
analytics.closeAndFlush().then(() => console.log('flushed'));
"""


async def test_segment_node_client_lands(harness: Harness, tmp_path: Path) -> None:
    modules = _node_client()
    script = tmp_path / "send.js"
    script.write_text(NODE_SCRIPT)
    env = {
        **os.environ,
        "NODE_PATH": str(modules),
        "KEY": harness.tokens.write,
        "HOST": harness.url("/").rstrip("/"),
    }
    proc = await asyncio.create_subprocess_exec(
        "node", str(script), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "flushed"
    body = await wait_customer(harness, "n1", lambda b: cart(b) == {"p5": 1}, "cart")
    assert body["profile"]["attributes"]["email"] == "n1@example.com"


# --- single-message endpoints, answers ---------------------------------------------------------


async def test_single_message_endpoints(harness: Harness) -> None:
    ts = "2026-01-05T12:00:00.000Z"
    calls: list[tuple[str, dict[str, Any]]] = [
        ("/v1/identify", {"userId": "s1", "traits": {"email": "s1@example.com"}}),
        ("/v1/group", {"userId": "s1", "groupId": "g1", "traits": {"name": "Initech"}}),
        ("/v1/page", {"anonymousId": "sa1", "name": "Home", "properties": {"url": "/"}}),
        ("/v1/screen", {"userId": "s1", "name": "Cart"}),
        ("/v1/track", {"anonymousId": "sa1", "event": "Product Added",
                       "properties": {"product_id": "p3", "price": 4.0}}),
        ("/v1/alias", {"previousId": "sa1", "userId": "s1"}),
    ]  # fmt: skip
    for i, (path, msg) in enumerate(calls):
        status, body = await post(harness, path, {**msg, "messageId": f"m{i}", "timestamp": ts})
        assert (status, body) == (200, {"success": True}), path
        check_schema(path, "post", 200, body)
    got = await wait_customer(harness, "s1", lambda b: cart(b) == {"p3": 1}, "alias merged")
    attrs = got["profile"]["attributes"]
    assert attrs["email"] == "s1@example.com"
    assert attrs["group_id"] == "g1"
    assert attrs["group_name"] == "Initech"
    assert await metric(harness, "nudge_events_accepted_total", type="page_viewed") == 1


async def test_write_key_in_the_body_and_bearer_token(harness: Harness) -> None:
    msg = {"userId": "k1", "event": "Cart Viewed", "writeKey": harness.tokens.write}
    status, body = await post(harness, "/v1/track", msg, headers={})
    assert (status, body) == (200, {"success": True})
    status, _ = await post(harness, "/v1/track", {**msg, "writeKey": "nope"}, headers={})
    assert status == 401
    status, _ = await post(harness, "/v1/track", {"userId": "k1", "event": "x"}, headers={})
    assert status == 401
    batch = {"batch": [{**msg, "type": "track"}]}
    status, _ = await post(harness, "/v1/batch", batch, headers=harness.auth())
    assert status == 200
    assert await rejected(harness, "unauthorized") == 2


async def test_retried_batch_is_a_duplicate(harness: Harness) -> None:
    msg = {
        "type": "track",
        "userId": "d1",
        "event": "Product Added",
        "properties": {"product_id": "p1", "price": 1.0},
        "timestamp": "2026-01-05T12:00:00Z",
    }  # no messageId: one is derived from the message, the same for the retry
    batch = {"batch": [{**msg, "messageId": "x1"}, msg]}
    for _ in range(2):
        assert (await post(harness, "/v1/batch", batch))[0] == 200
    body = await wait_customer(harness, "d1", lambda b: bool(b["cart"]["items"]), "cart")
    assert cart(body) == {"p1": 2}  # two messages, each once


@pytest.mark.parametrize(
    ("batch", "status", "code", "field"),
    [
        (
            [{"type": "track", "userId": "b1", "event": "A"}, {"type": "explode", "userId": "b1"}],
            400,
            "unknown_type",
            "$.batch[1].type",
        ),
        ([{"type": "track", "event": "Cart Viewed"}], 400, "missing_field", "$.batch[0].userId"),
        (
            [{"type": "track", "userId": "b1", "event": "Order Completed", "properties": {}}],
            400,
            "missing_field",
            "$.batch[0].properties.order_id",
        ),
        ([{"type": "track", "userId": "b1", "event": "!!"}], 400, "invalid_event_name",
         "$.batch[0].event"),
        ([{"type": "track", "userId": "b1", "event": "A", "timestamp": "yesterday"}], 400,
         "invalid_field", "$.batch[0].timestamp"),
        ([], 400, "empty_batch", "$.batch"),
    ],
)  # fmt: skip
async def test_bad_batches_are_rejected_whole(
    harness: Harness, batch: list[Any], status: int, code: str, field: str
) -> None:
    got, body = await post(harness, "/v1/batch", {"batch": batch})
    assert got == status
    assert body["error"]["code"] == code
    assert body["error"]["field"] == field
    check_schema("/v1/batch", "post", status, body)
    assert await rejected(harness, code) == 1
    await harness.settle()
    assert await customer(harness, "b1") is None  # nothing of the request was applied


async def test_not_json_and_not_a_batch(harness: Harness) -> None:
    status, body = await post(harness, "/v1/batch", b"{nope")
    assert (status, body["error"]["code"]) == (400, "invalid_json")
    status, body = await post(harness, "/v1/batch", [1, 2])
    assert (status, body["error"]["code"]) == (400, "invalid_field")
    assert await rejected(harness, "invalid_json") == 1


async def test_size_limits(harness: Harness) -> None:
    big = {"type": "track", "userId": "z1", "event": "A", "properties": {"x": "y" * 40_000}}
    status, body = await post(harness, "/v1/batch", {"batch": [{**big, "event": "B"}]})
    assert (status, body["error"]["code"], body["error"]["field"]) == (
        413,
        "message_too_large",
        "$.batch[0]",
    )
    check_schema("/v1/batch", "post", 413, body)
    many = [{**big, "properties": {"x": "y" * 20_000}} for _ in range(30)]  # ~600 KB
    status, body = await post(harness, "/v1/batch", {"batch": many})
    assert (status, body["error"]["code"]) == (413, "batch_too_large")
    status, body = await post(harness, "/v1/track", big)
    assert (status, body["error"]["code"]) == (413, "message_too_large")
    status, body = await post(harness, "/v1/batch", {"batch": many * 2})  # over 1 MiB
    assert (status, body["error"]["code"]) == (413, "body_too_large")
    assert await rejected(harness, "message_too_large") == 2
    assert await rejected(harness, "batch_too_large") == 1
    assert await rejected(harness, "body_too_large") == 1


async def test_gzip_bodies_and_a_gzip_bomb(harness: Harness) -> None:
    headers = {**basic(harness.tokens.write), "Content-Encoding": "gzip"}
    msg = {"type": "track", "userId": "g1", "event": "Product Viewed", "messageId": "g-1",
           "properties": {"product_id": "p1"}}  # fmt: skip
    status, body = await post(harness, "/v1/batch", gzip.compress(orjson.dumps({"batch": [msg]})),
                              headers)  # fmt: skip
    assert (status, body) == (200, {"success": True})
    # 700 KB of JSON inflated from ~1 KB: over the batch limit, under the body limit
    padded = orjson.dumps({"batch": [msg], "context": {"pad": " " * 700_000}})
    status, body = await post(harness, "/v1/batch", gzip.compress(padded), headers)
    assert (status, body["error"]["code"]) == (413, "batch_too_large")
    bomb = gzip.compress(b"[" + b" " * (64 << 20) + b"]")  # 64 MiB from ~64 KB
    status, body = await post(harness, "/v1/batch", bomb, headers)
    assert (status, body["error"]["code"]) == (413, "body_too_large")
    # gzip without the header (a proxy that dropped it) is inflated all the same
    status, _ = await post(harness, "/v1/batch", gzip.compress(orjson.dumps({"batch": [msg]})))
    assert status == 200
    await wait_customer(harness, "g1", lambda b: b["recently_viewed"] == ["p1"], "view")
    assert await rejected(harness, "batch_too_large") == 1
    assert await rejected(harness, "body_too_large") == 1


async def test_broken_gzip_is_400(harness: Harness) -> None:
    broken = gzip.compress(orjson.dumps({"batch": []}))[:-12]
    headers = {**basic(harness.tokens.write), "Content-Encoding": "gzip"}
    status, body = await post(harness, "/v1/batch", broken, headers)
    assert (status, body["error"]["code"]) == (400, "invalid_json")  # aiohttp inflated it
    status, body = await post(harness, "/v1/batch", broken)
    assert (status, body["error"]["code"]) == (400, "invalid_gzip")
    assert await rejected(harness, "invalid_gzip") == 1


async def test_internal_type_is_refused(harness: Harness) -> None:
    msg = {"type": "track", "userId": "i1", "event": "Customer Merged"}
    status, body = await post(harness, "/v1/batch", {"batch": [msg]})
    assert (status, body["error"]["code"], body["error"]["field"]) == (
        400,
        "internal_type",
        "$.batch[0].event",
    )
