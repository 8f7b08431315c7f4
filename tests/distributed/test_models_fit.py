"""`nudge models fit --broker` (engine/distributed/models.py fit_changelog): the CLV fit
over the customers changelog, read from a real Kafka topic filled with state rows (latest
row per customer, tombstones delete), stored as versions in a real Redis; `--every`
repeats it."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest

from engine.cli import main
from engine.distributed.models import CLV, changelog_states
from engine.distributed.storage.changelog import encode_row
from engine.distributed.storage.redis import RedisState
from engine.intelligence.clv import CLVParams
from engine.intelligence.fit import buyer_summaries, fit
from engine.intelligence.rfm import DAY_MS
from engine.testing import START
from load_tests.clv_synth import simulate
from state.customer import CustomerState
from tests.support.fixtures import KafkaTopicFactory
from tests.support.servers import KafkaServer, RedisServer


def synthetic_base(n: int) -> list[CustomerState]:
    """``n`` buyers drawn by the models' own process, as states at START."""
    out = []
    for i, s in enumerate(simulate(n, seed=5).summaries):
        first = START - round(s.T * DAY_MS)
        st = CustomerState(f"c{i}", first, START)
        st.orders = s.frequency + 1
        st.revenue = round(s.monetary * st.orders, 2)
        st.first_order = first
        st.last_order = first + round(s.recency * DAY_MS)
        out.append(st)
    return out


async def produce_rows(bootstrap: str, topic: str, rows: list[tuple[bytes, bytes | None]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in rows:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


@pytest.mark.slow
async def test_fit_from_the_changelog_into_redis(
    kafka_server: KafkaServer,
    kafka_topic_factory: KafkaTopicFactory,
    redis_server: RedisServer,
    redis_client: Any,
) -> None:
    pytest.importorskip("pymc_marketing", reason="the `predict` extra is not installed")
    topic = kafka_topic_factory("changelog", partitions=2, config={"cleanup.policy": "compact"})
    base = synthetic_base(300)
    rows: list[tuple[bytes, bytes | None]] = []
    for st in base[:40]:  # older rows first: the latest per key wins
        old = CustomerState(st.customer_id, st.first_seen, st.first_seen, orders=0)
        rows.append((st.customer_id.encode(), encode_row(old)))
    rows += [(st.customer_id.encode(), encode_row(st)) for st in base]
    gone = base[-20:]
    rows += [(st.customer_id.encode(), None) for st in gone]  # erased: tombstones
    rows.append((b"broken", b"\xc1 not a row"))
    await produce_rows(kafka_server.bootstrap, topic, rows)
    kept = base[:-20]
    read = await changelog_states(kafka_server.url, topic)
    assert sorted(st.customer_id for st in read) == sorted(st.customer_id for st in kept)

    prefix = f"t{uuid.uuid4().hex[:6]}"
    argv = [
        "models", "fit", "--broker", kafka_server.url, "--redis", redis_server.url,
        "--redis-prefix", prefix, "--topic", topic, "--every", "10ms", "--count", "2",
    ]  # fmt: skip
    assert await asyncio.to_thread(main, argv) == 0
    redis = RedisState(redis_server.url, prefix=prefix)
    try:
        stored = await redis.model_versions(CLV)
    finally:
        await redis.close()
    assert [v for v, _ in stored] == [1, 2]  # --every: fit, store, again
    got = CLVParams.from_dict(orjson.loads(stored[-1][1]))
    assert got.version == 2
    assert got.customers == len(kept)
    # the same summaries the embedded fit makes, at the same time: the same parameters
    summaries, now = buyer_summaries(kept, got.fitted_at, wall_ms=0)
    direct = fit(summaries, fitted_at=now, version=2)
    for name in ("r", "alpha", "a", "b"):
        assert getattr(got, name) == pytest.approx(getattr(direct, name), rel=1e-4), name
    # Gamma-Gamma on 280 buyers lies on a ridge (p large, v small: one spend level for
    # all); the population mean order value p v / (q - 1) along it is what is determined
    assert got.p * got.v / (got.q - 1) == pytest.approx(
        direct.p * direct.v / (direct.q - 1), rel=1e-3
    )
