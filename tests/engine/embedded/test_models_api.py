"""RFM and predictions on `nudge run` (issue 16): the boundaries computed at start and on
demand (POST /v1/models/rfm/refresh) and on the runtime's daily schedule, GET /v1/models,
and CLV parameters fitted from a stopped engine's data dir, picked up at the next start
and by POST /v1/models/reload."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.embedded.models import CLV, fit_data_dir
from engine.embedded.storage.sqlite import SqliteStore
from engine.intelligence.clv import predict
from engine.intelligence.population import Population
from engine.testing import START
from tests.engine.embedded.conftest import Harness, running
from tests.engine.embedded.test_api import check_schema, ev

DAY = 86_400_000


def orders(customers: int, seed: int = 1) -> list[dict[str, Any]]:
    """Order histories over the 300 days before START: customer ci orders 1 to 6 times."""
    rnd = random.Random(seed)
    out = []
    for i in range(customers):
        t = START - rnd.randint(120, 300) * DAY
        for j in range(rnd.randint(1, 6)):
            out.append(
                ev(
                    len(out),
                    "order_completed",
                    f"c{i}",
                    {"order_id": f"o{i}-{j}", "total": round(rnd.uniform(10, 120), 2)},
                    at=min(t, START),
                )
            )
            t += rnd.randint(5, 40) * DAY
    return out


def populations(h: Harness) -> list[Population]:
    return [p.driver.processor.population for p in h.runtime.parts]


async def get_models(h: Harness) -> dict[str, Any]:
    async with h.session.get(h.url("/v1/models"), headers=h.auth("admin")) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
    check_schema("/v1/models", "get", 200, body)
    return body


async def post(h: Harness, path: str, scope: str = "admin") -> tuple[int, Any]:
    async with h.session.post(h.url(path), headers=h.auth(scope)) as r:
        return r.status, await r.json()


async def test_rfm_at_start_on_demand_and_on_schedule(harness: Harness) -> None:
    h = harness
    start = await get_models(h)
    assert start["rfm"]["customers"] == 0  # an empty base at start
    assert start["clv"] is None
    assert start["clv_versions"] == []
    status, _ = await h.post_events(orders(30))
    assert status == 202
    await h.settle()
    assert (await post(h, "/v1/models/rfm/refresh", "write"))[0] == 403
    status, body = await post(h, "/v1/models/rfm/refresh")
    assert status == 200
    check_schema("/v1/models/rfm/refresh", "post", 200, body)
    assert body["rfm"]["customers"] == 30
    assert body["rfm"]["computed_at"] == h.clock.now()
    # every partition's processor uses the same boundaries; no model yet
    pops = populations(h)
    assert all(p.rfm is not None and p.rfm.customers == 30 for p in pops)
    assert all(p.clv is None for p in pops)
    assert (await get_models(h))["rfm"] == body["rfm"]
    # the daily schedule, in the runtime's clock
    models = h.runtime.models
    assert models is not None
    models.poll_s = 0.01
    assert models._task is not None
    models._task.cancel()
    models._task = asyncio.create_task(models._schedule())
    refreshes = models.refreshes
    await asyncio.sleep(0.1)
    assert models.refreshes == refreshes  # not due yet
    h.clock.advance(DAY)
    for _ in range(200):
        if models.refreshes > refreshes:
            break
        await asyncio.sleep(0.01)
    assert (await get_models(h))["rfm"]["computed_at"] == START + DAY


async def test_compacted_customers_count_without_being_inflated(harness: Harness) -> None:
    h = harness
    status, _ = await h.post_events(orders(12))
    assert status == 202
    await h.settle()
    for p in h.runtime.parts:
        p.store.compact_idle(h.clock.now() + 1)
    status, body = await post(h, "/v1/models/rfm/refresh")
    assert status == 200
    assert body["rfm"]["customers"] == 12
    assert all(isinstance(v, bytes) for p in h.runtime.parts for v in p.store._data.values())


async def test_reload_of_a_bad_stored_record_is_refused(harness: Harness) -> None:
    h = harness
    assert h.runtime.store is not None
    await h.runtime.db(h.runtime.store.save_model, CLV, 1, orjson.dumps({"r": -1}).decode())
    status, body = await post(h, "/v1/models/reload")
    assert status == 409
    assert body["error"]["code"] == "invalid_model"
    assert all(p.clv is None for p in populations(h))


@pytest.mark.slow
async def test_fit_from_the_data_dir_then_start_and_reload(tmp_path: Path) -> None:
    pytest.importorskip("pymc_marketing", reason="the `predict` extra is not installed")
    data = tmp_path / "data"
    async with running(data) as h:
        status, _ = await h.post_events(orders(80))
        assert status == 202
        await h.settle()
    # the engine is stopped: its states are checkpointed; this is `nudge models fit`
    first = await asyncio.to_thread(fit_data_dir, data, START)
    assert (first.version, first.customers, first.fitted_at) == (1, 80, START)
    async with running(data) as h:
        pops = populations(h)
        assert all(p.clv == first for p in pops)  # loaded at start
        assert all(p.rfm is not None and p.rfm.customers == 80 for p in pops)
        body = await get_models(h)
        assert body["clv"] == first.to_dict()
        assert [v["version"] for v in body["clv_versions"]] == [1]
        # a customer's predictions are the closed forms over these parameters
        st = h.runtime.partition("c3").store.get("c3")
        assert st is not None
        assert predict(first, st, h.clock.now()) is not None
        # a second fit while it runs: used after a reload
        second = await asyncio.to_thread(fit_data_dir, data, START + DAY)
        assert second.version == 2
        assert all(p.clv == first for p in populations(h))
        status, body = await post(h, "/v1/models/reload")
        assert status == 200
        check_schema("/v1/models/reload", "post", 200, body)
        assert body["clv"]["version"] == 2
        assert all(p.clv == second for p in populations(h))
    store = SqliteStore(data)
    try:
        assert [v for v, _ in store.model_versions(CLV)] == [1, 2]
    finally:
        store.close()
