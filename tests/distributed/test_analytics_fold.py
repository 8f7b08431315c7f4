"""The distributed analytics store and aggregator on the real Kafka and Redis: the counts
changelog rows carry are folded once each, by one aggregator or two racing, across a
restart that resumes from Redis's high water; rows without counts and old JSON-free
packed rows are skipped; the stored figures read back as the reports want them."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis

from engine.distributed.analytics import ChangelogAggregator
from engine.distributed.storage.analytics import RedisAnalytics
from engine.distributed.storage.changelog import decode_row, encode_row, row_counts
from engine.distributed.storage.counts import pack_counts, unpack_counts
from state.analytics import HOUR_MS, Cell
from state.customer import CustomerState
from tests.support.servers import KafkaServer, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NOW = int(time.time() * 1000)
HOUR = NOW // HOUR_MS


def _counts(i: int) -> Counter[Cell]:
    c: Counter[Cell] = Counter()
    c[("cart", 1, "a", -1, "entered", HOUR)] += 1
    c[("cart", 1, "a", 2, "sent:email", HOUR)] += i % 3
    c[("cart", 1, "a", -1, "revenue_cents", HOUR - 30)] += 100 * i  # a day or two back
    if i % 5 == 0:
        c[("view", 2, "", -1, "exited:order_completed", HOUR)] += 1
    return +c


def test_row_frame_round_trips() -> None:
    st = CustomerState("c1", NOW, NOW)
    plain = encode_row(st)
    assert row_counts(plain) is None
    c = _counts(5)
    c[("view", 2, "", 0, "feedback:opened", HOUR)] += 2  # a metric without a code
    body = pack_counts(c)
    framed = encode_row(st, body)
    assert row_counts(framed) == body
    assert unpack_counts(body) == c
    assert decode_row(framed).customer_id == "c1"
    assert decode_row(plain).customer_id == "c1"


async def _produce(bootstrap: str, topic: str, n: int, partitions: int) -> Counter[Cell]:
    from aiokafka import AIOKafkaProducer

    want: Counter[Cell] = Counter()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futs = []
        for i in range(n):
            st = CustomerState(f"c{i}", NOW, NOW)
            counts = _counts(i) if i % 4 else None  # some rows carry none
            if counts:
                want.update(counts)
            body = pack_counts(counts) if counts else None
            futs.append(
                await producer.send(
                    topic,
                    encode_row(st, body),
                    key=st.customer_id.encode(),
                    partition=i % partitions,
                )
            )
        await asyncio.gather(*futs)
    finally:
        await producer.stop()
    return want


async def _settle(*aggs: ChangelogAggregator, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if all(a.lag() == 0 for a in aggs):
            return
        await asyncio.sleep(0.1)
    raise AssertionError([a.lag() for a in aggs])


async def _stored(store: RedisAnalytics) -> Counter[tuple[str, int, str, int, str]]:
    got: Counter[tuple[str, int, str, int, str]] = Counter()
    day = HOUR * HOUR_MS // 86_400_000
    for _, rid, ver, entries in await store.periods(False, day - 3, day + 1):
        for variant, step, metric, n in entries:
            got[(rid, ver, variant, step, metric)] += n
    return got


async def _until(cond: Any, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.05)


def _flat(c: Counter[Cell]) -> Counter[tuple[str, int, str, int, str]]:
    out: Counter[tuple[str, int, str, int, str]] = Counter()
    for (rid, ver, variant, step, metric, _), n in c.items():
        out[(rid, ver, variant, step, metric)] += n
    return out


async def test_fold_is_compare_and_set(redis_server: RedisServer, redis_client: Any) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        store = RedisAnalytics(client, prefix="cas")
        c = _counts(4)
        assert await store.fold(0, None, 9, c, NOW)
        assert not await store.fold(0, None, 9, c, NOW)  # another folder got there first
        assert not await store.fold(0, 5, 12, c, NOW)
        assert await store.fold(0, 9, 12, c, NOW)
        assert await store.high_water() == {0: 12}
        assert await _stored(store) == _flat(c + c)
        day = HOUR * HOUR_MS // 86_400_000
        totals = {(d, r, v): t for d, r, v, t in await store.day_totals(day - 3, day)}
        assert totals[(day, "cart", 1)][0] == 2  # entered
        assert totals[(day, "cart", 1)][1] == 2  # sends (1 each)
        hours, _ = await store.analytics_counts(True, HOUR - 1, HOUR, "cart")
        assert {(p, r) for p, r, _, _ in hours} == {(HOUR, "cart")}
    finally:
        await client.aclose()


async def test_aggregators_fold_each_record_once(
    kafka_server: KafkaServer,
    kafka_topic_factory: Any,
    redis_server: RedisServer,
    redis_client: Any,
) -> None:
    topic = kafka_topic_factory("changelog", partitions=3, config={"cleanup.policy": "compact"})
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        store = RedisAnalytics(client, prefix="agg")
        want = await _produce(kafka_server.bootstrap, topic, 600, 3)
        # no lease: both fold, racing on the high water
        one = ChangelogAggregator(
            kafka_server.bootstrap, topic, store, max_records=50, lease_ms=None
        )
        two = ChangelogAggregator(
            kafka_server.bootstrap, topic, store, max_records=70, lease_ms=None
        )
        await one.start()
        await two.start()
        await _settle(one, two)
        assert one.folded + two.folded == 600  # each record folded by exactly one of them
        assert await _stored(store) == _flat(want)
        await one.stop()
        await two.stop()
        # more rows while none runs; a restart resumes from the stored high water
        want += await _produce(kafka_server.bootstrap, topic, 200, 3)
        three = ChangelogAggregator(kafka_server.bootstrap, topic, store)
        await three.start()
        await _until(lambda: three.folded == 200)
        assert await _stored(store) == _flat(want)
        # with the lease, a second aggregator stands by while the first folds ...
        four = ChangelogAggregator(kafka_server.bootstrap, topic, store, lease_ms=1500)
        await four.start()
        want += await _produce(kafka_server.bootstrap, topic, 90, 3)
        await _until(lambda: three.folded == 290)
        await asyncio.sleep(1.0)  # four polls the lease meanwhile
        assert (three.folded, four.folded, four.leading) == (290, 0, False)
        # ... and takes over once the first stops renewing it
        await three.stop()
        want += await _produce(kafka_server.bootstrap, topic, 60, 3)
        await _until(lambda: four.folded == 60)
        await four.stop()
        assert four.folded == 60
        assert await _stored(store) == _flat(want)
    finally:
        await client.aclose()
