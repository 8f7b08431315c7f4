"""Backfill of segments on `nudge run` (issue 16): a hot deploy adding segments computes them
for existing customers in the background, progress in `GET /v1/segments`; a dormant
customer gets its segment timer and flips on its own; a restart does not backfill again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from engine.embedded.runtime import Runtime
from state.customer import SEGMENT_TIMER
from tests.engine.embedded.conftest import Harness, running
from tests.engine.embedded.test_api import ev
from tests.engine.embedded.test_segments_api import deploy, listing, order

DAY = 86_400_000
RECENT = """
kind: segment
id: recent
description: ordered in the last 30 days
condition: "count('order_completed', '30d') > 0"
"""
ADDED = """
kind: segment
id: buyers
condition: "customer.orders >= 1"
---
kind: segment
id: lapsed
condition: "customer.orders > 0 && count('order_completed', '90d') == 0"
---
id: thanks
trigger: {segment_entered: buyers}
steps:
  - send: {channel: webhook, template: thanks}
---
id: winback
trigger: {segment_entered: lapsed}
steps:
  - send: {channel: webhook, template: we_miss_you}
"""
V1 = {"segments.yaml": RECENT}
V2 = {"segments.yaml": RECENT, "added.yaml": ADDED}


async def shop(h: Harness) -> None:
    """20 buyers b00..b19 and 5 visitors v0..v4 at START under V1; 40 days later they are
    dormant: no segment timer (recent's 30 days are over), all compacted in memory."""
    await deploy(h, V1)
    events: list[dict[str, Any]] = [order(i, f"b{i:02d}") for i in range(20)]
    events += [ev(100 + i, "page_viewed", f"v{i}", {}) for i in range(5)]
    assert (await h.post_events(events))[0] == 202
    await h.settle()
    h.clock.advance(40 * DAY)
    await asyncio.sleep(0.2)  # the partitions fire recent's timers
    rt = h.runtime
    await rt.segment_backfill.wait()
    await rt._compact()
    for cid in ("b00", "v0"):
        part = rt.partition(cid)
        assert isinstance(part.store._data[cid], bytes)
        assert (cid, SEGMENT_TIMER) not in {(c, r) for _, c, r in part.timers.pending()}


async def test_a_deployed_segment_is_backfilled_in_the_background(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    rt = h.runtime
    await shop(h)
    deployed = h.clock.now()
    # hold the partitions "busy" so the progress can be seen before it moves
    busy = True
    idle = Runtime.partition_idle
    monkeypatch.setattr(rt, "partition_idle", lambda i: not busy and idle(rt, i))
    await deploy(h, V2)
    for _ in range(100):
        body = await listing_body(h)
        if body["backfill"]["total"] == 25:
            break
        await asyncio.sleep(0.01)
    assert body["backfill"] == {"done": 0, "total": 25, "running": True}
    assert {s["id"]: s["size"] for s in body["segments"]} == {
        "recent": 0,
        "buyers": 0,
        "lapsed": 0,
    }
    busy = False
    await rt.segment_backfill.wait()
    body = await listing_body(h)
    assert body["backfill"] == {"done": 25, "total": 25, "running": False}
    segs = await listing(h)
    assert (segs["buyers"]["size"], segs["buyers"]["entered_24h"]) == (20, 20)
    assert segs["lapsed"]["size"] == 0  # ordered 40 days ago: not yet
    # the flow on segment_entered reaches the existing members, at the backfill's time
    sent = await h.hook.wait_for(20)
    assert sorted(d.body["customer_id"] for d in sent) == [f"b{i:02d}" for i in range(20)]
    assert {d.body["template"] for d in sent} == {"thanks"}
    b00 = rt.partition("b00")
    assert isinstance(b00.store._data["b00"], bytes)  # compacted again after its backfill
    st = b00.store.get("b00")
    assert st is not None
    assert st.segments == {"buyers": deployed}
    assert rt.ruleset is not None
    assert st.segments_digest == rt.ruleset.segments_digest
    # the dormant buyers got their segment timer: lapsed turns on its own
    flip = (st.first_seen // DAY + 1) * DAY + 90 * DAY
    assert st.segments_due == flip
    h.clock.advance(flip - h.clock.now() + 1000)
    await h.hook.wait_for(40)
    await h.settle()
    segs = await listing(h)
    assert segs["lapsed"]["size"] == 20
    st = b00.store.get("b00")
    assert st is not None
    assert st.segments == {"buyers": deployed, "lapsed": flip}


async def test_a_deploy_during_a_backfill_restarts_it_and_removal_is_at_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    rt = h.runtime
    await shop(h)
    monkeypatch.setattr(rt.segment_backfill, "slice_size", 1)
    busy = True
    idle = Runtime.partition_idle
    monkeypatch.setattr(rt, "partition_idle", lambda i: not busy and idle(rt, i))
    await deploy(h, V2)
    busy = False
    while rt.segment_backfill.done < 5:  # part of the customers backfilled under V2
        await asyncio.sleep(0)
    busy = True
    first = rt.segment_backfill.backfilled
    assert 0 < first < 25
    await deploy(h, {"added.yaml": ADDED})  # recent removed: starts over for the new digest
    assert rt.segment_backfill.progress["done"] == 0
    busy = False
    await rt.segment_backfill.wait()
    segs = await listing(h)
    assert list(segs) == ["buyers", "lapsed"]
    assert segs["buyers"]["size"] == 20
    assert rt.segment_backfill.progress == {"done": 25, "total": 25, "running": False}
    await h.hook.wait_for(20)
    await h.settle()
    assert len(h.hook.deliveries) == 20  # those backfilled twice entered buyers once
    for cid in ("b00", "v0"):
        st = rt.partition(cid).store.get(cid)
        assert st is not None
        assert rt.ruleset is not None
        assert st.segments_digest == rt.ruleset.segments_digest
        assert "recent" not in (st.segments or {})


async def test_a_restart_does_not_backfill_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running(data) as h:
        await shop(h)
        await deploy(h, V2)
        await h.runtime.segment_backfill.wait()
        await h.hook.wait_for(20)
        await h.settle()
        before = await listing(h)
    async with running(data) as h:
        rt = h.runtime
        await rt.segment_backfill.wait()
        assert rt.segment_backfill.progress == {"done": 0, "total": 0, "running": False}
        assert rt.segment_backfill.backfilled == 0
        assert (await listing(h))["buyers"]["size"] == before["buyers"]["size"] == 20
        await asyncio.sleep(0.2)
        assert h.hook.deliveries == []


async def listing_body(h: Harness) -> Any:
    async with h.session.get(h.url("/v1/segments"), headers=h.auth("admin")) as r:
        assert r.status == 200
        return await r.json()
