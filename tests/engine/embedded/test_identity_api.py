"""Identity on `nudge run` over HTTP: forwards of events under a merged id reach the known
customer, also those queued while an earlier batch of forwards is being journaled."""

from __future__ import annotations

import asyncio
from typing import Any

from engine.types import Event
from tests.engine.embedded.conftest import Harness
from tests.engine.embedded.test_api import customer_view, ev


def order(i: int, cid: str) -> dict[str, Any]:
    return ev(i, "order_completed", cid, {"order_id": f"o{i}", "total": 10.0})


async def test_forwards_queued_during_a_forward_are_not_lost(harness: Harness) -> None:
    h = harness
    alias = ev(2, "customer_aliased", "anon:a", {"user_id": "kim"})
    assert (await h.post_events([order(1, "anon:a"), alias]))[0] == 202
    await h.settle()
    assert (await customer_view(h, "kim"))["profile"]["orders"] == 1
    # hold the next forward batch in the journal while another forward is queued
    outbox = h.runtime.outbox
    forward = outbox._forward
    assert forward is not None
    gate = asyncio.Event()
    calls: list[list[str]] = []

    async def held(events: list[Event]) -> None:
        calls.append([e.event_id for e in events])
        if len(calls) == 1:
            await gate.wait()
        await forward(events)

    outbox._forward = held
    assert (await h.post_events([order(3, "anon:a")]))[0] == 202
    for _ in range(200):
        if calls:
            break
        await asyncio.sleep(0.01)
    assert calls == [["e3"]]
    assert (await h.post_events([order(4, "anon:a")]))[0] == 202
    await asyncio.sleep(0.2)  # e4 processed: its forward is queued behind the held batch
    gate.set()
    await h.settle()
    assert calls == [["e3"], ["e4"]]
    assert (await customer_view(h, "kim"))["profile"]["orders"] == 3
    assert (await customer_view(h, "anon:a"))["merged_into"] == "kim"
