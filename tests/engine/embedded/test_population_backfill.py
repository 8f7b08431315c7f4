"""A new CLV model or new RFM boundaries on `nudge run` re-evaluate the segments that read
them for every customer, with no event (issue 16): the population goes into the segments'
digest, and the backfill walks the customers."""

from __future__ import annotations

import asyncio

import orjson

from engine.embedded.models import CLV
from engine.intelligence.clv import predict
from tests.engine.embedded.conftest import Harness
from tests.engine.embedded.test_models_api import orders, post
from tests.engine.embedded.test_segments_api import deploy, listing
from tests.engine.test_population import PARAMS

SEGMENTS = """
kind: segment
id: predicted-alive
condition: "customer.predicted != null && customer.predicted.p_alive > 0.0"
---
kind: segment
id: rfm-best-r
condition: "customer.rfm != null && customer.rfm.r == 5"
"""


async def test_reload_and_refresh_backfill_the_segments_reading_them(harness: Harness) -> None:
    h = harness
    events = orders(40)
    status, _ = await h.post_events(events)
    assert status == 202
    await deploy(h, {"segments.yaml": SEGMENTS})
    await h.runtime.segment_backfill.wait()
    seen = await listing(h)
    assert seen["predicted-alive"]["size"] == 0  # no model yet: predictions are null
    # a model stored as `nudge models fit` stores it, then reloaded: no event arrives
    rt = h.runtime
    assert rt.store is not None
    await rt.db(rt.store.save_model, CLV, 1, orjson.dumps(PARAMS.to_dict()).decode())
    status, _ = await post(h, "/v1/models/reload")
    assert status == 200
    await asyncio.sleep(0)  # the backfill (re)start is a task
    await rt.segment_backfill.wait()
    now = h.clock.now()
    buyers = {
        st.customer_id
        for p in rt.parts
        for st in p.store
        if (got := predict(PARAMS, st, now)) is not None and got.p_alive > 0.0
    }
    assert len(buyers) == 40
    seen = await listing(h)
    assert seen["predicted-alive"]["size"] == len(buyers)
    # RFM: a refresh whose cut points moved (newer, bigger orders joined the base)
    # re-evaluates the rfm segment for everyone
    digest = rt.ruleset.segments_digest
    status, _ = await h.post_events(orders(80, seed=2)[len(events) :])
    assert status == 202
    status, _ = await post(h, "/v1/models/rfm/refresh")
    assert status == 200
    await asyncio.sleep(0)
    await rt.segment_backfill.wait()
    assert rt.ruleset.segments_digest != digest
    pop = rt.parts[0].driver.processor.population
    assert pop.rfm is not None
    best = {
        st.customer_id
        for p in rt.parts
        for st in p.store
        if (r := pop.rfm_of(st, now)) is not None and r["r"] == 5
    }
    assert (await listing(h))["rfm-best-r"]["size"] == len(best)
