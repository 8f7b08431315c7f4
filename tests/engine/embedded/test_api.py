"""End-to-end over real HTTP on loopback: events in, actions out at a real webhook."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import datetime
from typing import Any

import jsonschema
import orjson
import pytest
from aiohttp import ClientTimeout
from prometheus_client.parser import text_string_to_metric_families

from engine.http.app import OPENAPI_PATH
from engine.testing import START
from engine.types import iso
from tests.engine.embedded.conftest import Harness

H = 3_600_000
SPEC = json.loads(OPENAPI_PATH.read_text())


def check_schema(path: str, method: str, status: int, body: Any) -> None:
    """The response body matches the OpenAPI document's schema for that status."""
    op = SPEC["paths"][path][method]
    schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
    jsonschema.validate(
        body, {**schema, "components": SPEC["components"]}, cls=jsonschema.Draft202012Validator
    )


def ev(i: int, etype: str, cid: str, props: dict[str, Any], at: int = START) -> dict[str, Any]:
    return {
        "event_id": f"e{i}",
        "type": etype,
        "customer_id": cid,
        "timestamp": iso(at),
        "properties": props,
    }


async def metric(h: Harness, name: str, **labels: str) -> float:
    async with h.session.get(h.url("/metrics")) as r:
        text = await r.text()
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def customer_view(h: Harness, cid: str) -> dict[str, Any]:
    """GET /v1/customers/{cid}: a 200 whose body matches the document."""
    async with h.session.get(h.url(f"/v1/customers/{cid}"), headers=h.auth("admin")) as r:
        assert r.status == 200
        body: dict[str, Any] = await r.json()
    check_schema("/v1/customers/{customer_id}", "get", 200, body)
    return body


async def test_event_to_webhook_with_idempotency_key(harness: Harness) -> None:
    status, body = await harness.post_events(
        ev(1, "order_completed", "c1", {"order_id": "o1", "total": 650.0})
    )
    assert status == 202
    check_schema("/v1/events", "post", 202, body)
    [d] = await harness.hook.wait_for(1)
    assert d.body["rule_id"] == "vip-segment"
    assert d.body["params"] == {"ltv": 650.0, "orders": 1}
    assert d.key == d.body["idempotency_key"]
    assert len(d.key) == 32
    await harness.settle()
    assert await metric(harness, "nudge_actions_total", channel="webhook", outcome="delivered") == 1
    assert await metric(harness, "nudge_rule_fires_total", rule="vip-segment") == 1
    assert await metric(harness, "nudge_events_accepted_total", type="order_completed") == 1
    # the stages of event-to-action latency, each observed for this one action
    assert await metric(harness, "nudge_event_to_action_seconds_count") == 1
    assert await metric(harness, "nudge_action_send_seconds_count") == 1
    assert await metric(harness, "nudge_outbox_flush_seconds_count") >= 1
    assert await metric(harness, "nudge_journal_commit_seconds_count") >= 1
    # the server's side of the request, by route
    assert await metric(harness, "nudge_http_request_seconds_count", route="/v1/events") == 1


async def test_event_loop_lag_is_sampled(harness: Harness) -> None:
    for _ in range(200):  # the sampler wakes every 0.1 s (real time)
        if await metric(harness, "nudge_event_loop_lag_seconds_count") >= 2:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the loop-lag sampler observed fewer than 2 samples in 10 s")


async def test_event_loop_busy_share_is_sampled(harness: Harness) -> None:
    for _ in range(200):  # the sampler reports every second (real time)
        busy = await metric(harness, "nudge_event_loop_busy_ratio")
        if busy > 0:  # the loop thread ran (these requests): some share of a second
            assert busy <= 1
            return
        await asyncio.sleep(0.05)
    raise AssertionError("nudge_event_loop_busy_ratio stayed 0 for 10 s")


async def test_timer_fires_on_the_clock_alone(harness: Harness) -> None:
    cid = "c1"  # arm "a" of abandoned-cart (c-cart would be in the holdout)
    status, _ = await harness.post_events(
        [
            ev(1, "customer_updated", cid, {"consent": {"email": True}}),
            ev(2, "cart_item_added", cid, {"product_id": "p1", "price": 25.0}),
        ]
    )
    assert status == 202
    await harness.settle()
    assert harness.hook.deliveries == []
    harness.clock.advance(4 * H)  # no further event: the timer alone must fire
    deliveries = await harness.hook.wait_for(1)
    arms = {d.body["rule_id"] for d in deliveries}
    assert arms <= {"abandoned-cart"}
    await harness.settle()
    assert await metric(harness, "nudge_timer_lateness_seconds_count") >= 1


async def test_customer_view_and_erase(harness: Harness) -> None:
    await harness.post_events(
        [
            ev(1, "product_viewed", "c9", {"product_id": "p1"}),
            ev(2, "cart_item_added", "c9", {"product_id": "p1", "price": 10.0, "quantity": 2}),
        ]
    )
    await harness.settle()
    body = await customer_view(harness, "c9")
    assert body["cart"]["value"] == 20.0
    assert [f["rule_id"] for f in body["flows"]] == ["abandoned-cart"]
    assert body["pending_timers"][0]["due"] == iso(START + 4 * H)
    async with harness.session.delete(
        harness.url("/v1/customers/c9"), headers=harness.auth("admin")
    ) as r:
        erased = await r.json()
    check_schema("/v1/customers/{customer_id}", "delete", 200, erased)
    assert erased["erased"]["state"] is True
    assert erased["erased"]["journal_entries"] == 2
    async with harness.session.get(
        harness.url("/v1/customers/c9"), headers=harness.auth("admin")
    ) as r:
        assert r.status == 404
    harness.clock.advance(5 * H)
    await harness.settle()
    assert harness.hook.deliveries == []  # the erased customer's timer is gone


async def test_rules_deploy_validate_and_reject(harness: Harness) -> None:
    rule = (
        "id: hello\ntrigger: {event: page_viewed}\n"
        "steps:\n  - send: {channel: webhook, template: hi}\n"
    )
    admin = harness.auth("admin")
    bad = {"files": {"bad.yaml": rule.replace("webhook", "pigeon")}}
    async with harness.session.put(harness.url("/v1/rules"), json=bad, headers=admin) as r:
        assert r.status == 400
        body = await r.json()
    check_schema("/v1/rules", "put", 400, body)
    [err] = body["error"]["errors"]
    assert (err["file"], err["line"], err["column"]) == ("bad.yaml", 4, 21)
    async with harness.session.post(
        harness.url("/v1/rules/validate"), json={"files": {"ok.yaml": rule}}, headers=admin
    ) as r:
        assert (r.status, (await r.json())["rules"]) == (200, ["hello"])
    async with harness.session.put(
        harness.url("/v1/rules"), json={"files": {"ok.yaml": rule}}, headers=admin
    ) as r:
        assert r.status == 200
        assert (await r.json())["version"] == 2
    async with harness.session.get(harness.url("/v1/rules"), headers=admin) as r:
        info = await r.json()
    check_schema("/v1/rules", "get", 200, info)
    assert [x["id"] for x in info["rules"]] == ["hello"]
    await harness.post_events(ev(1, "page_viewed", "c1", {}))
    [d] = await harness.hook.wait_for(1)
    assert d.body["rule_id"] == "hello"


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"{not json", "write", 400, "invalid_json"),
        (b"42", "write", 400, "invalid_json"),
        (b"[]", "write", 400, "empty_batch"),
        (
            orjson.dumps({"event_id": "e", "type": "page_viewed", "customer_id": "c"}),
            "write",
            400,
            "invalid_events",
        ),
        (
            orjson.dumps(
                [ev(1, "page_viewed", "c", {}), {**ev(2, "page_viewed", "c", {}), "customer_id": 7}]
            ),
            "write",
            400,
            "invalid_events",
        ),
        (
            orjson.dumps(ev(1, "order_completed", "c", {"order_id": "o", "total": "ten"})),
            "write",
            400,
            "invalid_events",
        ),
        (
            orjson.dumps([ev(i, "page_viewed", "c", {}) for i in range(1001)]),
            "write",
            413,
            "too_many_events",
        ),
        (b'{"x": "' + b"a" * (1 << 20) + b'"}', "write", 413, "body_too_large"),
        (  # a valid RFC 3339 date-time whose UTC instant is in year 0: GET /v1/customers 500'd
            orjson.dumps(
                {**ev(1, "page_viewed", "c", {}), "timestamp": "0001-01-01T00:00:00+01:00"}
            ),
            "write",
            400,
            "invalid_events",
        ),
        (orjson.dumps(ev(1, "page_viewed", "c", {})), "none", 401, "unauthorized"),
        (orjson.dumps(ev(1, "page_viewed", "c", {})), "bogus", 401, "unauthorized"),
    ],
)
async def test_bad_input_gets_a_clear_4xx(
    harness: Harness, body: bytes, headers: str, status: int, code: str
) -> None:
    hdrs = {"none": {}, "bogus": {"Authorization": "Bearer nope"}, "write": harness.auth()}[headers]
    data = io.BytesIO(body) if len(body) > 65536 else body
    async with harness.session.post(harness.url("/v1/events"), data=data, headers=hdrs) as r:
        assert r.status == status
        payload = await r.json()
    check_schema("/v1/events", "post", status, payload)
    assert payload["error"]["code"] == code
    assert await metric(harness, "nudge_events_rejected_total") >= 1


async def test_invalid_batch_names_each_bad_event(harness: Harness) -> None:
    batch = [
        ev(0, "page_viewed", "c", {}),
        {**ev(1, "page_viewed", "c", {}), "timestamp": "2026-01-05T10:00:00"},
        ev(2, "order_completed", "c", {"order_id": "o"}),
    ]
    status, body = await harness.post_events(batch)
    assert status == 400
    assert [(e["index"], e["field"]) for e in body["error"]["events"]] == [
        (1, "$.timestamp"),
        (2, "$.properties.total"),
    ]
    await harness.settle()
    assert harness.runtime.partition("c").store.get("c") is None  # nothing accepted


async def test_routes_scopes_and_health(harness: Harness) -> None:
    s = harness.session
    async with s.get(harness.url("/v1/nope")) as r:
        assert (r.status, (await r.json())["error"]["code"]) == (404, "not_found")
    async with s.get(harness.url("/v1/events")) as r:
        assert r.status == 405
        assert r.headers["Allow"] == "POST"  # the JSON error once replaced aiohttp's Allow
        assert (await r.json())["error"]["code"] == "method_not_allowed"
    async with s.get(harness.url("/v1/rules"), headers=harness.auth("write")) as r:
        assert r.status == 403
    for path in ("/healthz", "/readyz"):
        async with s.get(harness.url(path)) as r:
            assert r.status == 200
            check_schema(path, "get", 200, await r.json())
    async with s.get(harness.url("/openapi.json")) as r:
        assert (await r.json())["openapi"].startswith("3.")


async def test_backpressure_answers_429_with_retry_after(harness: Harness) -> None:
    harness.runtime.writer._max_queue = 5
    status, body = await harness.post_events([ev(i, "page_viewed", f"c{i}", {}) for i in range(6)])
    assert status == 429
    assert body["error"]["code"] == "backpressure"
    assert await metric(harness, "nudge_events_rejected_total", reason="backpressure") == 6


async def test_restart_recovers_state_and_timers(harness: Harness) -> None:
    await harness.post_events([ev(1, "cart_item_added", "c5", {"product_id": "p", "price": 9.0})])
    await harness.settle()
    rt = harness.runtime
    await rt.stop()
    from engine.embedded.runtime import Runtime

    harness.clock.advance(5 * H)  # the 4h timer comes due while the engine is down
    metrics = rt.metrics.__class__()
    again = Runtime(rt.cfg, metrics, harness.clock)
    await again.start()
    try:
        st = again.partition("c5").store.get("c5")
        assert st is not None
        assert st.cart_value == 9.0
        [d] = await harness.hook.wait_for(1)  # fired on start, no event needed
        assert d.body["rule_id"] == "abandoned-cart"
        assert d.body["fire_at"] == iso(START + 4 * H)
        lateness = metrics.timer_lateness.collect()[0]
        total = next(s.value for s in lateness.samples if s.name.endswith("_sum"))
        assert total == pytest.approx(3600.0)  # due at 4h, fired at 5h: one hour late
    finally:
        await again.stop()


async def test_erase_after_an_earlier_erasure(harness: Harness) -> None:
    """An erasure leaves ``null`` in the journal; every later erasure (of anyone) answered
    500 because the scrub compared msgspec.Raw with bytes and decoded the null."""
    await harness.post_events(
        [
            ev(1, "page_viewed", "c1", {}),
            ev(2, "page_viewed", "c2", {}),
            ev(3, "page_viewed", "c1", {}),
        ]
    )
    await harness.settle()
    admin = harness.auth("admin")
    expected = {"c1": 2, "c2": 1}
    for cid in ("c1", "c1", "c2"):
        async with harness.session.delete(harness.url(f"/v1/customers/{cid}"), headers=admin) as r:
            assert r.status == 200
            body = await r.json()
        check_schema("/v1/customers/{customer_id}", "delete", 200, body)
        assert body["erased"]["journal_entries"] == expected.pop(cid, 0)


async def test_customer_times_are_rfc3339_before_year_1000(harness: Harness) -> None:
    """A year-606 event is valid RFC 3339; the customer view wrote its year as ``606``."""
    await harness.post_events(
        {**ev(1, "page_viewed", "c606", {}), "timestamp": "0606-08-18T18:40:53Z"}
    )
    await harness.settle()
    body = await customer_view(harness, "c606")
    assert body["profile"]["first_seen"] == "0606-08-18T18:40:53.000Z"
    datetime.fromisoformat(body["profile"]["last_seen"])  # four-digit year or ValueError


def _alias_bomb() -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        # PyYAML's ReaderError is not a MarkedYAMLError: it escaped as a 500
        ("id: x\ntrigger: \x04\n", 2, 10, "special characters are not allowed"),
        # RecursionError in PyYAML's composer: a 500
        ("[" * 5000 + "]" * 5000, 1, 1, "nesting too deep"),
        # nine anchors expanding to 9**9 values held the event loop for minutes
        (_alias_bomb(), 1, 1, "values (aliases expanded)"),
    ],
)
@pytest.mark.parametrize(("method", "path"), [("PUT", "/v1/rules"), ("POST", "/v1/rules/validate")])
async def test_unparseable_rule_files_get_a_400_naming_the_place(
    harness: Harness, method: str, path: str, text: str, line: int, column: int, message: str
) -> None:
    async with harness.session.request(
        method,
        harness.url(path),
        json={"files": {"bad.yaml": text}},
        headers=harness.auth("admin"),
        timeout=ClientTimeout(total=30),
    ) as r:
        assert r.status == 400
        body = await r.json()
    check_schema(path, method.lower(), 400, body)
    [err] = body["error"]["errors"]
    assert err["file"] == "bad.yaml"
    assert err["line"] == line
    assert message in err["message"]
    if "aliases" not in message:
        assert err["column"] == column
    async with harness.session.get(harness.url("/v1/rules"), headers=harness.auth("admin")) as r:
        assert (await r.json())["version"] == 1  # nothing deployed


@pytest.mark.parametrize(("method", "path"), [("PUT", "/v1/rules"), ("POST", "/v1/rules/validate")])
async def test_rule_endpoints_answer_as_documented_to_bad_bodies(
    harness: Harness, method: str, path: str
) -> None:
    """``{"files": {}}`` was valid per the document and got a 400; a body over 1 MiB got a
    413 the document did not list for these endpoints."""
    admin = harness.auth("admin")
    schema = SPEC["components"]["schemas"]["RuleFiles"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"files": {}}, schema, cls=jsonschema.Draft202012Validator)
    async with harness.session.request(
        method, harness.url(path), json={"files": {}}, headers=admin
    ) as r:
        assert r.status == 400
        body = await r.json()
    check_schema(path, method.lower(), 400, body)
    assert body["error"]["field"] == "$.files"
    big = orjson.dumps({"files": {"a.yaml": "#" * (1 << 20)}})
    async with harness.session.request(
        method, harness.url(path), data=io.BytesIO(big), headers=admin
    ) as r:
        assert r.status == 413
        body = await r.json()
    check_schema(path, method.lower(), 413, body)
    assert body["error"]["code"] == "body_too_large"


BIG = int("1" + "0" * 400)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("etype", "props", "field"),
    [
        # sums went infinite: cart value and LTV were JSON null, against the document
        ("cart_item_added", {"product_id": "p", "price": 1e308}, "$.properties.price"),
        ("order_completed", {"order_id": "o", "total": 1e308}, "$.properties.total"),
        # float() of these raised in the processor: the partition stopped processing for good
        ("cart_item_added", {"product_id": "p", "quantity": BIG}, "$.properties.quantity"),
        ("cart_item_removed", {"product_id": "p", "quantity": BIG}, "$.properties.quantity"),
        ("order_refunded", {"order_id": "o", "amount": BIG}, "$.properties.amount"),
        # kept in state: every checkpoint failed after it, and GET /v1/customers/{id} 500'd
        ("customer_updated", {"attributes": {"n": 10**30}}, "$.properties.attributes.n"),
        (
            "customer_signed_up",
            {"attributes": {"l": [0, -(2**64)]}},
            "$.properties.attributes.l[1]",
        ),
        (
            "customer_updated",
            {"attributes": {"x": _nested(40)}},
            "$.properties.attributes.x" + ".a" * 31,
        ),
    ],
)
async def test_values_the_state_cannot_hold_are_rejected_naming_the_field(
    harness: Harness, etype: str, props: dict[str, Any], field: str
) -> None:
    batch = [ev(1, "page_viewed", "c1", {}), ev(2, etype, "c1", props)]
    status, body = await harness.post_events(json.dumps(batch).encode())  # orjson: 64-bit ints
    assert status == 400
    check_schema("/v1/events", "post", 400, body)
    assert [(e["index"], e["field"]) for e in body["error"]["events"]] == [(1, field)]
    status, _ = await harness.post_events(ev(3, "page_viewed", "c1", {}))
    assert status == 202
    await harness.settle()  # the partition still processes
    await customer_view(harness, "c1")


@pytest.mark.parametrize("array", [False, True])
async def test_json_nested_too_deep_is_a_400(harness: Harness, array: bool) -> None:
    """msgspec's RecursionError escaped both decoding paths: a 500."""
    event = orjson.dumps(ev(1, "page_viewed", "c", {})).replace(
        b'"properties":{}', b'"properties":{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    )
    status, body = await harness.post_events(b"[" + event + b"]" if array else event)
    assert status == 400
    check_schema("/v1/events", "post", 400, body)
    assert (body["error"]["code"], body["error"]["field"]) == ("invalid_json", "$")


async def test_rules_are_parsed_off_the_event_loop(harness: Harness) -> None:
    """Validating 1,500 rules is about a second of CPU; the loop answers /healthz meanwhile
    (it used to wait for the whole parse). And a rule body over the limit is not counted
    as a rejected event."""
    import asyncio

    rule = (
        "id: r{i}\n"
        "trigger: {{event: product_viewed, filter: \"event.properties.product_id == 'p{i}'\"}}\n"
        'when: "cart.value > {i}.0"\n'
        "steps:\n  - wait: 1h\n  - send: {{channel: email, template: t{i}}}\n"
    )
    files = {f"r{i}.yaml": rule.format(i=i) for i in range(1500)}
    admin = harness.auth("admin")

    async def validate() -> int:
        async with harness.session.post(
            harness.url("/v1/rules/validate"), json={"files": files}, headers=admin
        ) as r:
            assert (await r.json())["rules"] == sorted(_ids(files))
            return r.status

    task = asyncio.create_task(validate())
    await asyncio.sleep(0.1)  # the request is in, its parse under way
    async with harness.session.get(harness.url("/healthz")) as r:
        assert r.status == 200
    assert not task.done()
    assert await task == 200
    before = await metric(harness, "nudge_events_rejected_total", reason="body_too_large")
    big = orjson.dumps({"files": {"a.yaml": "#" * (1 << 20)}})
    async with harness.session.post(
        harness.url("/v1/rules/validate"), data=io.BytesIO(big), headers=admin
    ) as r:
        assert r.status == 413
    after = await metric(harness, "nudge_events_rejected_total", reason="body_too_large")
    assert after == before


def _ids(files: dict[str, str]) -> list[str]:
    return [name.removesuffix(".yaml") for name in files]
