"""Population models on the distributed runtime (engine/distributed/models.py) over a real
Redis: workers owning different partitions agree on the RFM boundaries, equal to the
embedded builder over the whole base; CLV versions stored, loaded and skipped when bad;
the ingest's view (describe, refresh, reload) and its HTTP endpoints."""

from __future__ import annotations

import asyncio
import random
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.clock import VirtualClock
from engine.distributed.models import CLV, RedisModels, WorkerModels
from engine.distributed.storage.redis import RedisState
from engine.intelligence.clv import CLVParams, ParamsError
from engine.intelligence.population import Population
from engine.intelligence.rfm import DAY_MS, EXACT_LIMIT, RfmBoundaries, RfmBuilder
from engine.testing import START
from state.customer import CustomerState, pack
from state.memory import MemoryStore
from tests.support.servers import RedisServer

PARTS = 4


class Part:
    """A partition as WorkerModels reads it (what Partition offers: ``.store``),
    plus the population last applied to it."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.population: Population | None = None


def customers(n: int, seed: int = 3) -> list[CustomerState]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        st = CustomerState(f"c{i}", START - 400 * DAY_MS, START)
        if rnd.random() < 0.85:
            st.orders = rnd.choice([1, 1, 1, 2, 3, 4, 7])
            st.revenue = round(rnd.uniform(5, 900), 2)
            st.first_order = START - 380 * DAY_MS
            st.last_order = START - rnd.randint(0, 360) * DAY_MS - rnd.randint(0, DAY_MS - 1)
        out.append(st)
    return out


def partitioned(states: list[CustomerState]) -> dict[int, Part]:
    parts = {p: Part() for p in range(PARTS)}
    for i, st in enumerate(states):
        store = parts[zlib.crc32(st.customer_id.encode()) % PARTS].store
        store.put(st)
        if i % 3 == 0:  # some compacted: read without being inflated
            store._data[st.customer_id] = pack(st)
    return parts


def embedded(
    states: list[CustomerState], now: int, exact_limit: int = EXACT_LIMIT
) -> RfmBoundaries:
    b = RfmBuilder(exact_limit=exact_limit)
    for st in states:
        b.add(st, now)
    return b.build(now)


@pytest.fixture
async def redis(redis_server: RedisServer, redis_client: Any) -> AsyncIterator[RedisState]:
    state = RedisState(redis_server.url, prefix=f"t{uuid.uuid4().hex[:6]}", retry_for=10.0)
    yield state
    await state.close()


def worker(
    redis: RedisState, owned: dict[int, Part], clock: VirtualClock, **kw: Any
) -> WorkerModels:
    def apply(pop: Population) -> None:
        for part in owned.values():
            part.population = pop

    return WorkerModels(
        redis, lambda: owned, apply, partition_count=PARTS, clock=clock, poll_s=0.05, **kw
    )


@pytest.mark.parametrize("exact_limit", [EXACT_LIMIT, 60])
async def test_two_workers_agree_with_the_embedded_builder(
    redis: RedisState, exact_limit: int
) -> None:
    states = customers(400)
    parts = partitioned(states)
    clock = VirtualClock(START)
    a = worker(redis, {0: parts[0], 1: parts[1]}, clock, exact_limit=exact_limit)
    b = worker(redis, {2: parts[2], 3: parts[3]}, clock, exact_limit=exact_limit)
    await a.step()
    assert a.population.rfm is None  # half the partitions summarised: not complete
    await b.step()  # completes the round and merges
    await a.step()
    expected = embedded(states, START, exact_limit)
    assert expected.exact is (exact_limit == EXACT_LIMIT)
    assert a.population.rfm == b.population.rfm == expected
    assert all(p.population is not None and p.population.rfm == expected for p in parts.values())
    packed = sum(isinstance(v, bytes) for p in parts.values() for v in p.store._data.values())
    assert packed == len(states[::3])  # compacted customers were read, not inflated
    assert (a.scans, b.scans) == (2, 2)
    # the base moves; a day later (the schedule) a new round, same boundaries everywhere
    moved = customers(120, seed=9)
    for st in moved:
        st.customer_id = f"n{st.customer_id}"
        parts[zlib.crc32(st.customer_id.encode()) % PARTS].store.put(st)
    clock.advance(DAY_MS)
    await b.step()
    await a.step()
    await b.step()
    expected = embedded(states + moved, START + DAY_MS, exact_limit)
    assert expected.computed_at == START + DAY_MS
    assert a.population.rfm == b.population.rfm == expected
    assert (a.scans, b.scans) == (4, 4)


async def test_a_round_missing_partitions_closes_after_the_timeout(redis: RedisState) -> None:
    states = customers(200)
    parts = partitioned(states)
    clock = VirtualClock(START)
    a = worker(redis, {0: parts[0], 1: parts[1]}, clock, round_timeout_ms=60_000)
    await a.step()
    assert a.population.rfm is None
    clock.advance(60_000)
    await a.step()
    mine = [st for st in states if zlib.crc32(st.customer_id.encode()) % PARTS in (0, 1)]
    assert a.population.rfm == embedded(mine, START)
    described = await RedisModels(redis).describe()
    assert described["rfm_round"] == {"round": START, "complete": False, "partitions": 2}
    # the owner of the others shows up (a rebalance ended): the round completes
    b = worker(redis, {2: parts[2], 3: parts[3]}, clock)
    await b.step()
    await a.step()
    assert a.population.rfm == b.population.rfm == embedded(states, START)
    assert (await RedisModels(redis).describe())["rfm_round"]["complete"] is True


def params(version: int, r: float = 0.6) -> CLVParams:
    return CLVParams(
        r=r, alpha=45.0, a=0.9, b=3.2, p=5.0, q=4.0, v=36.0,
        fitted_at=START, version=version, customers=100,
    )  # fmt: skip


async def save(redis: RedisState, p: CLVParams | dict[str, Any]) -> bool:
    body = p.to_dict() if isinstance(p, CLVParams) else p
    return await redis.save_model(CLV, int(body.get("version", 99)), orjson.dumps(body).decode())


async def test_clv_versions_in_redis(redis: RedisState) -> None:
    assert await redis.latest_model(CLV) is None
    assert await redis.model_versions(CLV) == []
    assert await save(redis, params(1))
    assert await save(redis, params(2, r=0.7))
    assert not await save(redis, params(2, r=0.8))  # never overwritten
    latest = await redis.latest_model(CLV)
    assert latest is not None
    assert latest[0] == 2
    assert CLVParams.from_dict(orjson.loads(latest[1])) == params(2, r=0.7)
    assert [v for v, _ in await redis.model_versions(CLV)] == [1, 2]
    assert await redis.latest_model("other") is None  # kinds apart


async def test_workers_load_new_versions_and_skip_bad_ones(redis: RedisState) -> None:
    part = Part()
    clock = VirtualClock(START)
    w = worker(redis, {0: part}, clock)
    await w.start()
    try:
        assert w.population.clv is None
        await save(redis, params(1))  # announced: loaded without a poll
        await wait_for(lambda: w.population.clv == params(1))
        assert part.population is not None
        assert part.population.clv == params(1)
        await save(redis, {"version": 2, "r": -1})  # a bad record: skipped, v1 kept
        await wait_for(lambda: w.clv_version == 2)
        assert w.population.clv == params(1)
        models = RedisModels(redis)
        with pytest.raises(ParamsError):
            await models.reload()
        await save(redis, params(3))
        assert await models.reload() == params(3)
        await wait_for(lambda: w.population.clv == params(3))
    finally:
        await w.stop()


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_refresh_on_demand_through_the_ingest(redis: RedisState) -> None:
    states = customers(150)
    parts = partitioned(states)
    clock = VirtualClock(START)
    a = worker(redis, {0: parts[0], 1: parts[1]}, clock)
    b = worker(redis, {2: parts[2], 3: parts[3]}, clock)
    await a.start()
    await b.start()
    try:
        await wait_for(lambda: a.population.rfm is not None and b.population.rfm is not None)
        extra = CustomerState("late", START, START, orders=3, revenue=99.0)
        extra.first_order = extra.last_order = START
        parts[zlib.crc32(b"late") % PARTS].store.put(extra)
        clock.advance(3_600_000)  # an hour: not due by the schedule
        models = RedisModels(redis, clock=clock, wait_s=10.0, poll_s=0.02)
        bounds = await models.refresh_rfm()
        assert bounds == embedded([*states, extra], START + 3_600_000)
        await wait_for(lambda: a.population.rfm == bounds and b.population.rfm == bounds)
        described = await models.describe()
        assert described["rfm"] == bounds.to_dict()
        assert described["clv"] is None
        assert described["clv_versions"] == []
    finally:
        await a.stop()
        await b.stop()


async def test_the_ingest_serves_the_models_endpoints(redis: RedisState) -> None:
    from engine.distributed.ingest import KafkaIngest
    from engine.http.app import create_app
    from engine.http.auth import Tokens
    from engine.metrics import Metrics
    from tests.engine.embedded.test_api import check_schema

    tokens = Tokens(write="wr", admin="adm")
    ingest = KafkaIngest("127.0.0.1:1", "events", redis=redis)  # Kafka is not needed here
    app = create_app(ingest, tokens, Metrics())
    admin = {"Authorization": "Bearer adm"}
    async with TestClient(TestServer(app)) as client:
        r = await client.get("/v1/models", headers=admin)
        assert r.status == 200
        body = await r.json()
        check_schema("/v1/models", "get", 200, body)
        assert body["rfm"] is None
        assert body["clv"] is None
        r = await client.get("/v1/models", headers={"Authorization": "Bearer wr"})
        assert r.status == 403
        await save(redis, params(1))
        r = await client.post("/v1/models/reload", headers=admin)
        assert r.status == 200
        body = await r.json()
        check_schema("/v1/models/reload", "post", 200, body)
        assert body["clv"] == params(1).to_dict()
        await save(redis, {"version": 2, "r": "x"})
        r = await client.post("/v1/models/reload", headers=admin)
        assert r.status == 409
        # no worker runs: the round starts, its boundaries do not come within the wait
        ingest_models = app_models(app)
        ingest_models.wait_s = 0.1
        r = await client.post("/v1/models/rfm/refresh", headers=admin)
        assert r.status == 202
        body = await r.json()
        check_schema("/v1/models/rfm/refresh", "post", 202, body)
        assert body["rfm"] is None
        assert isinstance(body["requested_at"], int)
        status = await redis.rfm_status()
        assert status[0] == body["requested_at"]


def app_models(app: Any) -> RedisModels:
    from engine.http.models import served_models

    got = served_models(app)
    assert isinstance(got, RedisModels)
    return got
