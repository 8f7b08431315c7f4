"""Time-bounded admission (engine/admission.py): the decision on its own under a
fake clock, and `nudge run` under a real overload (views made expensive to process) where
views are shed while every order, cart and consent request is admitted."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from engine.admission import Admission
from engine.testing import START
from engine.types import iso
from tests.engine.embedded.conftest import Harness


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_request_is_classed_by_its_most_valuable_event() -> None:
    a = Admission()
    assert a.priority(["page_viewed", "product_viewed"]) == "low"
    assert a.priority(["page_viewed", "some_custom_event"]) == "normal"
    assert a.priority(["product_viewed", "order_completed"]) == "high"
    assert a.priority(["email_unsubscribed"]) == "high"
    assert Admission(priorities={"wishlist_added": "high"}).priority(["wishlist_added"]) == "high"


def test_admitted_while_the_queue_drains_within_the_target_times_the_factor() -> None:
    a = Admission(target=1.0, cost=0.001)  # 1 ms an event: 1,000 events a second
    assert a.drain_time(500) == pytest.approx(0.5)
    assert a.decide(500, ["page_viewed"]).admitted  # low: up to 0.5 s
    low = a.decide(501, ["page_viewed"])
    assert not low.admitted
    assert low.priority == "low"
    assert low.retry_after == 1.0  # whole seconds, at least one
    assert a.decide(1_000, ["custom"]).admitted  # normal: up to 1 s
    assert not a.decide(1_001, ["custom"]).admitted
    assert a.decide(2_000, ["order_completed"]).admitted  # high: up to 2 s
    far = a.decide(10_000, ["order_completed"])
    assert not far.admitted
    assert far.retry_after == 8.0  # 10 s of work queued, 2 s allowed
    assert [a.limit_events(p) for p in ("low", "normal", "high")] == [500, 1_000, 2_000]
    # the delivery queue's wait counts as well: 0.3 s of queue + 0.3 s of delivery
    assert a.decide(300, ["page_viewed"]).admitted
    late = a.decide(300, ["page_viewed"], waiting=0.3)
    assert not late.admitted
    assert late.drain == pytest.approx(0.6)


def test_refused_before_decoding_only_when_no_class_is_admitted() -> None:
    a = Admission(target=1.0, cost=0.001)
    assert a.refuse_all(2_000) is None  # a high-priority request is still admitted
    assert a.decide(2_000, ["order_completed"]).admitted
    assert a.refuse_all(2_001) == 1.0
    assert not a.decide(2_001, ["order_completed"]).admitted
    assert a.refuse_all(1_000, waiting=3.2) == 3.0  # 4.2 s of wait, 2 s allowed
    for queued in range(0, 5_000, 37):
        if a.refuse_all(queued) is not None:
            assert not any(
                a.decide(queued, [t]).admitted for t in ("page_viewed", "x", "order_completed")
            )


def test_an_order_is_never_refused_while_a_view_would_be_admitted() -> None:
    a = Admission(target=0.3, cost=53e-6)
    for queued in range(0, 200_000, 97):
        view = a.decide(queued, ["product_viewed"]).admitted
        order = a.decide(queued, ["order_completed"]).admitted
        cart = a.decide(queued, ["cart_item_added", "page_viewed"]).admitted
        assert order or not view
        assert cart or not view


def test_the_pace_is_the_wall_time_per_event_while_a_backlog_lasts() -> None:
    clock = FakeClock()
    a = Admission(clock=clock, alpha=0.5, window=0.25)
    # the first measured window replaces the guess: 2,000 events in 0.25 s
    a.tick(True)
    for _ in range(20):
        a.processed(100)
        clock.t += 0.0125
        a.tick(True)
    assert a.cost == pytest.approx(0.25 / 2_000, rel=1e-6)
    # then a moving average: the loop slows to 1,000 events per 0.25 s
    for _ in range(20):
        for _ in range(10):
            a.processed(100)
            clock.t += 0.025
            a.tick(True)
    assert a.cost == pytest.approx(0.25 / 1_000, rel=0.01)
    # a window in which the queue ran empty says nothing about the pace
    before = a.cost
    a.tick(False)
    a.processed(10)
    clock.t += 0.3
    a.tick(True)
    assert a.cost == before
    # nor does one in which nothing was processed (a stalled loop is seen as waiting)
    clock.t += 0.3
    a.tick(True)
    assert a.cost == before


def _events(n: int, etype: str, prefix: str, props: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"{prefix}-{i}",
            "type": etype,
            "customer_id": f"{prefix}c{i % 50}",
            "timestamp": iso(START),
            "properties": props,
        }
        for i in range(n)
    ]


async def test_under_overload_views_are_shed_and_orders_carts_consent_admitted(
    harness: Harness,
) -> None:
    """Views cost ~2 ms each to process here (an expensive rule set, made by a busy wait
    in the partitions), so a flood of view requests builds a real backlog: the admission
    refuses views once it holds 0.15 s of work while every order, cart and consent request
    sent meanwhile is admitted, and each 429 carries Retry-After."""
    rt = harness.runtime
    rt.admission.target = 0.3
    for part in rt.parts:
        apply = part.apply

        def slow(seq: int, at: int, ev: Any, apply: Any = apply) -> Any:
            if ev.type == "product_viewed":
                end = time.perf_counter() + 0.002
                while time.perf_counter() < end:
                    pass
            return apply(seq, at, ev)

        part.apply = slow  # type: ignore[method-assign]
    # warm up: the measured pace learns the views' price (1.2 s of backlog: several
    # whole measuring windows)
    status, _ = await harness.post_events(
        _events(600, "product_viewed", "warm", {"product_id": "p"})
    )
    assert status == 202
    await harness.settle()
    assert rt.admission.cost > 0.0005  # wall seconds per view while a backlog lasted

    results: dict[str, list[int]] = {"view": [], "high": []}

    async def post(kind: str, body: list[dict[str, Any]]) -> None:
        async with harness.session.post(
            harness.url("/v1/events"), json=body, headers=harness.auth()
        ) as r:
            results[kind].append(r.status)
            if r.status == 429:
                assert int(r.headers["Retry-After"]) >= 1
                assert (await r.json())["error"]["code"] == "backpressure"

    high = [
        ("order_completed", {"order_id": "o", "total": 5.0}),
        ("cart_item_added", {"product_id": "p", "price": 5.0}),
        ("email_unsubscribed", {}),
    ]
    tasks = []
    for i in range(60):
        tasks.append(post("view", _events(20, "product_viewed", f"v{i}", {"product_id": "p"})))
        if i % 6 == 0:
            etype, props = high[(i // 6) % 3]
            body = _events(5, etype, f"h{i}", props)
            if etype == "order_completed":
                for j, ev in enumerate(body):
                    ev["properties"] = {"order_id": f"o{i}-{j}", "total": 5.0}
            tasks.append(post("high", body))
    await asyncio.gather(*tasks)
    assert 429 in results["view"], results
    assert 202 in results["view"], results
    assert set(results["high"]) == {202}, results
    await harness.settle()
