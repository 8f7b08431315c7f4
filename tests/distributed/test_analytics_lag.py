"""How far the changelog aggregator trails the changelog, on the real Kafka and Redis, as
``/metrics`` shows it (``nudge_analytics_lag_records`` / ``_seconds``): held after one
fetch of a backlog, the lag is the records left and the age bound from the last record
folded; caught up, both are 0; an aggregator standing by reports no lag."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from engine.distributed.analytics import ChangelogAggregator
from engine.distributed.metrics import AggregatorCollector
from engine.distributed.storage.analytics import RedisAnalytics
from engine.distributed.storage.changelog import encode_row
from engine.distributed.storage.counts import pack_counts
from state.analytics import HOUR_MS, Cell
from state.customer import CustomerState
from tests.support.servers import KafkaServer, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROWS = 50
T0 = (int(time.time()) - 600) * 1000  # the first row's timestamp (ms): 10 min ago
WALL = T0 / 1000 + 3600.0  # the aggregator's wall clock (s), fixed: an hour after it


class GatedStore(RedisAnalytics):
    """The real Redis store; folds after the first wait for ``gate``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.calls = 0

    async def fold(self, *args: Any, **kwargs: Any) -> bool:
        self.calls += 1
        if self.calls > 1:
            await self.gate.wait()
        return await super().fold(*args, **kwargs)


async def _produce(bootstrap: str, topic: str) -> None:
    from aiokafka import AIOKafkaProducer

    cell: Cell = ("cart", 1, "a", -1, "entered", T0 // HOUR_MS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(ROWS):  # one second apart
            st = CustomerState(f"c{i}", T0, T0)
            body = encode_row(st, pack_counts(Counter({cell: 1})))
            await producer.send_and_wait(
                topic, body, key=st.customer_id.encode(), partition=0, timestamp_ms=T0 + i * 1000
            )
    finally:
        await producer.stop()


def _scrape(agg: ChangelogAggregator) -> dict[str, dict[str, float]]:
    """metric name -> partition label (or "") -> value, as /metrics shows them."""
    from prometheus_client import generate_latest

    registry = CollectorRegistry()
    registry.register(AggregatorCollector(agg))
    out: dict[str, dict[str, float]] = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out.setdefault(s.name, {})[s.labels.get("partition", "")] = s.value
    return out


async def _until(cond: Any, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.02)


async def test_lag_in_records_and_seconds(
    kafka_server: KafkaServer,
    kafka_topic_factory: Any,
    redis_server: RedisServer,
    redis_client: Any,
) -> None:
    topic = kafka_topic_factory("changelog", partitions=1, config={"cleanup.policy": "compact"})
    await _produce(kafka_server.bootstrap, topic)
    client = aioredis.Redis.from_url(redis_server.url)
    store = GatedStore(client, prefix="lag")
    agg = ChangelogAggregator(
        kafka_server.bootstrap, topic, store, max_records=10, lease_ms=3000, wall=lambda: WALL
    )
    standby = ChangelogAggregator(
        kafka_server.bootstrap, topic, RedisAnalytics(client, prefix="lag"), lease_ms=3000
    )
    try:
        assert "nudge_analytics_lag_records" not in _scrape(agg)  # nothing fetched yet
        await agg.start()
        await _until(lambda: store.calls >= 2)  # one fetch folded, the next one held
        done = agg.hw[0]
        assert done is not None
        assert 0 <= done < ROWS - 1
        m = _scrape(agg)
        assert m["nudge_analytics_folding"] == {"": 1.0}
        assert m["nudge_analytics_folded_records_total"] == {"": done + 1}
        assert m["nudge_analytics_lag_records"] == {"0": ROWS - 1 - done}
        # the oldest record not folded is younger than the last one folded (T0 + done s)
        assert m["nudge_analytics_lag_seconds"] == {"0": pytest.approx(3600 - done)}
        assert m["nudge_analytics_gaps_total"] == {"": 0.0}

        await standby.start()  # the lease is held: it stands by, and reports no lag
        await asyncio.sleep(1.5)
        s = _scrape(standby)
        assert s["nudge_analytics_folding"] == {"": 0.0}
        assert "nudge_analytics_lag_records" not in s
        assert "nudge_analytics_lag_seconds" not in s

        store.gate.set()
        await _until(lambda: agg.lag() == 0)
        m = _scrape(agg)
        assert m["nudge_analytics_lag_records"] == {"0": 0.0}
        assert m["nudge_analytics_lag_seconds"] == {"0": 0.0}
        assert m["nudge_analytics_folded_records_total"] == {"": float(ROWS)}
    finally:
        store.gate.set()
        await agg.stop()
        await standby.stop()
        await client.aclose()
