"""The customer API cases both runtimes must answer alike (GET and DELETE
``/v1/customers/{id}``): run against `nudge run` (tests/engine/embedded/test_customer_api.py)
and against the distributed ingest (tests/distributed/test_customer_api.py), same cases,
same bodies, each checked against the OpenAPI document. Only what a runtime keeps
differently is named per runtime: journal entries exist on `nudge run` alone."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jsonschema

from engine.http.app import OPENAPI_PATH
from engine.types import iso

__all__ = ["CustomerApi", "customer_cases"]

H = 3_600_000
SPEC = json.loads(OPENAPI_PATH.read_text())


def check_schema(path: str, method: str, status: int, body: Any) -> None:
    op = SPEC["paths"][path][method]
    schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
    jsonschema.validate(
        body, {**schema, "components": SPEC["components"]}, cls=jsonschema.Draft202012Validator
    )


@dataclass
class CustomerApi:
    """One runtime behind HTTP: ``post`` events (returns the status), ``call`` a method
    on a path with the admin token (status, JSON body), ``settled`` waits until the
    events posted so far are processed, ``now`` is the processing time (epoch ms) the
    events are stamped near; ``journal`` whether erased events are counted from a
    journal (`nudge run`) or stay in the events topic (the distributed runtime)."""

    post: Callable[[list[dict[str, Any]]], Awaitable[int]]
    call: Callable[[str, str], Awaitable[tuple[int, Any]]]
    settled: Callable[[], Awaitable[None]]
    now: int
    journal: bool


def _ev(i: int, etype: str, cid: str, props: dict[str, Any], at: int) -> dict[str, Any]:
    return {
        "event_id": f"capi-{cid}-{i}",
        "type": etype,
        "customer_id": cid,
        "timestamp": iso(at),
        "properties": props,
    }


async def _get(api: CustomerApi, cid: str) -> tuple[int, Any]:
    status, body = await api.call("GET", f"/v1/customers/{cid}")
    check_schema("/v1/customers/{customer_id}", "get", status, body)
    return status, body


async def _delete(api: CustomerApi, cid: str) -> dict[str, Any]:
    status, body = await api.call("DELETE", f"/v1/customers/{cid}")
    assert status == 200, body
    check_schema("/v1/customers/{customer_id}", "delete", 200, body)
    erased: dict[str, Any] = body["erased"]
    return erased


async def customer_cases(api: CustomerApi) -> None:
    """View, 404, export (consent history included), erase (twice), and timestamps
    before year 1000."""
    t = api.now
    cart = [
        _ev(1, "product_viewed", "c9", {"product_id": "p1"}, t),
        _ev(2, "cart_item_added", "c9", {"product_id": "p1", "price": 10.0, "quantity": 2}, t),
        _ev(1, "page_viewed", "c606", {}, t) | {"timestamp": "0606-08-18T18:40:53Z"},
        _ev(1, "page_viewed", "c2", {}, t),
        # consent history: a profile statement, then a provider's SMS STOP
        _ev(1, "customer_updated", "k7", {"consent": {"email": True, "sms": True}}, t - H),
        _ev(2, "sms_unsubscribed", "k7", {}, t) | {"context": {"source": "twilio"}},
    ]
    assert await api.post(cart) == 202
    await api.settled()

    status, body = await _get(api, "c9")
    assert status == 200
    assert body["customer_id"] == "c9"
    assert body["cart"]["value"] == 20.0
    assert [f["rule_id"] for f in body["flows"]] == ["abandoned-cart"]
    assert body["pending_timers"][0]["due"] == iso(t + 4 * H)
    assert body["recently_viewed"] == ["p1"]

    status, body = await _get(api, "nobody")
    assert status == 404
    assert body == {"error": {"code": "not_found", "message": "no customer 'nobody'"}}

    status, body = await _get(api, "c606")  # RFC 3339 in year 606: four digits
    assert status == 200
    assert body["profile"]["first_seen"] == "0606-08-18T18:40:53.000Z"

    # right of access: everything held about c9, as one document
    status, doc = await api.call("GET", "/v1/customers/c9/export")
    assert status == 200, doc
    check_schema("/v1/customers/{customer_id}/export", "get", 200, doc)
    assert doc["customer_id"] == "c9"
    assert doc["state"]["cart"]["value"] == 20.0
    if api.journal:  # nudge run: the events still journaled, as sent
        assert doc["runtime"] == "embedded"
        assert [e["event"]["event_id"] for e in doc["events"]] == ["capi-c9-1", "capi-c9-2"]
        assert doc["events"][1]["event"]["properties"]["quantity"] == 2
    else:  # the worker's state; the events stay in the topic
        assert doc["runtime"] == "distributed"
    assert (await api.call("GET", "/v1/customers/nobody/export"))[0] == 404
    status, doc = await api.call("GET", "/v1/customers/k7/export")
    assert status == 200, doc
    check_schema("/v1/customers/{customer_id}/export", "get", 200, doc)
    assert doc["state"]["profile"]["consent"]["sms"] is False
    assert doc["state"]["profile"]["consent_history"] == [
        {
            "at": iso(t - H),
            "consent": {"email": True, "sms": True},
            "event": "customer_updated",
            "source": "storefront",
        },
        {"at": iso(t), "consent": {"sms": False}, "event": "sms_unsubscribed", "source": "twilio"},
    ]

    erased = await _delete(api, "c9")
    assert erased["customer_id"] == "c9"
    assert erased["state"] is True
    assert erased["journal_entries"] == (2 if api.journal else 0)
    assert (await _get(api, "c9"))[0] == 404
    assert (await api.call("GET", "/v1/customers/c9/export"))[0] == 404  # nothing left
    again = await _delete(api, "c9")  # erasing twice is safe: nothing left
    assert (again["state"], again["journal_entries"]) == (False, 0)
    assert (await _get(api, "c2"))[0] == 200  # others untouched
