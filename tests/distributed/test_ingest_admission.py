"""Time-bounded admission on the distributed ingest (engine/distributed/admission.py):
the decision on a virtual clock, then the HTTP ingest in front of the real Kafka broker,
paused (SIGSTOP) and flooded. Refused requests get their 429 with ``Retry-After`` while
the broker is still paused (no hang), views are refused before orders and carts, and
every event answered 202 is in the topic afterwards."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.distributed.admission import BrokerAdmission
from engine.distributed.metrics import MeteredIngest
from engine.http.app import create_app
from engine.http.auth import Tokens
from engine.metrics import Metrics
from tests.support.servers import KafkaServer

WRITE = {"Authorization": "Bearer wr"}
PROPS: dict[str, Any] = {
    "order_completed": {"total": 10},
    "cart_item_added": {"product_id": "p1", "price": 5},
    "product_viewed": {"product_id": "p1"},
}


class Ticks:
    """A monotonic clock the test advances."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# --- the decision alone ----------------------------------------------------------------
def test_pace_is_measured_from_acks_while_busy() -> None:
    clock = Ticks()
    a = BrokerAdmission(0.25, clock=clock)
    for _ in range(500):  # 2 x 1,000 events acked every 10 ms, the queue never empty
        first = a.sent(1000)
        clock.t += 0.005
        second = a.sent(1000)
        clock.t += 0.005
        a.acked(first)
        a.acked(second)
    assert a.cost == pytest.approx(5e-6, rel=0.1)
    clock.t += 10  # idle: says nothing about the pace
    a.acked(a.sent(10))
    assert a.cost == pytest.approx(5e-6, rel=0.1)
    assert a.queued == 0
    assert a.limit_events("normal") == pytest.approx(0.25 / a.cost, rel=0.01)


def test_the_oldest_unacknowledged_request_bounds_the_drain_time() -> None:
    clock = Ticks()
    a = BrokerAdmission(0.25, clock=clock)
    stuck = a.sent(1)  # the broker acknowledges nothing
    clock.t += 0.3
    assert a.decide(a.queued, ["page_viewed"]).admitted is False  # low: 0.125 s
    assert a.decide(a.queued, ["page_viewed", "order_completed"]).admitted is True
    clock.t += 0.8
    refused = a.decide(a.queued, ["order_completed"])
    assert not refused.admitted
    assert refused.priority == "high"
    assert refused.drain == pytest.approx(1.1)
    assert refused.retry_after >= 1
    a.acked(stuck, ok=False)
    assert a.drain_time(a.queued) == 0.0
    assert a.decide(a.queued, ["page_viewed"]).admitted


# --- against the real broker ------------------------------------------------------------
@pytest.fixture
def paused(kafka_server: KafkaServer) -> Iterator[Any]:
    """``pause()`` / ``resume()`` the session's broker; resumed after the test whatever
    happens."""
    pid = kafka_server.pid
    assert pid is not None
    state = {"stopped": False}

    def pause() -> None:
        os.kill(pid, signal.SIGSTOP)
        state["stopped"] = True

    def resume() -> None:
        if state["stopped"]:
            os.kill(pid, signal.SIGCONT)
            state["stopped"] = False

    yield pause, resume
    resume()


@pytest.fixture
async def ingest_client(
    kafka_server: KafkaServer, kafka_topic_factory: Any
) -> AsyncIterator[tuple[TestClient[Any, Any], MeteredIngest, str]]:
    topic = kafka_topic_factory("events", partitions=2)
    metrics = Metrics()
    ingest = MeteredIngest(kafka_server.bootstrap, topic, metrics=metrics, linger_ms=1)
    await ingest.start()
    app = create_app(ingest, Tokens(write="wr", admin="adm"), metrics)
    try:
        async with TestClient(TestServer(app)) as client:
            yield client, ingest, topic
    finally:
        await ingest.stop()


def _events(etype: str, n: int, tag: str) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"{tag}-{i}",
            "type": etype,
            "customer_id": f"c{i % 50}",
            "timestamp": f"2026-01-01T00:00:{i % 60:02d}Z",
            "properties": {**PROPS.get(etype, {}), "order_id": f"{tag}{i}"},
        }
        for i in range(n)
    ]


async def _topic_ids(bootstrap: str, topic: str) -> list[str]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or ())]
        if not parts:
            parts = [TopicPartition(topic, p) for p in range(2)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        ids: list[str] = []
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                ids += [orjson.loads(r.value)["event_id"] for r in records]
        return ids
    finally:
        await consumer.stop()


async def test_a_paused_broker_gets_fast_429s_views_first(
    ingest_client: tuple[TestClient[Any, Any], MeteredIngest, str],
    paused: Any,
    kafka_server: KafkaServer,
) -> None:
    client, ingest, topic = ingest_client
    pause, resume = paused
    clock = Ticks()
    ingest.admission.clock = clock  # the broker is real; the age of a wait is virtual
    r = await client.post("/v1/events", json=_events("page_viewed", 5, "warm"), headers=WRITE)
    assert r.status == 202

    pause()
    admitted: list[asyncio.Task[Any]] = []

    def post(events: list[dict[str, Any]]) -> asyncio.Task[Any]:
        return asyncio.create_task(client.post("/v1/events", json=events, headers=WRITE))

    admitted.append(post(_events("order_completed", 3, "o1")))
    for _ in range(100):  # handed to the producer: awaiting acks that do not come
        if ingest.admission.queued:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    assert ingest.admission.queued == 3
    clock.t += 0.3  # the oldest wait: 0.3 s (low 0.125 s, normal 0.25 s, high 1 s)
    refused = await asyncio.wait_for(post(_events("page_viewed", 10, "v1")), 10)
    assert refused.status == 429, await refused.text()
    assert int(refused.headers["Retry-After"]) >= 1
    assert (await refused.json())["error"]["code"] == "backpressure"
    admitted.append(post(_events("cart_item_added", 2, "c1")))
    mixed = [*_events("page_viewed", 2, "mix"), *_events("email_unsubscribed", 1, "u1")]
    admitted.append(post(mixed))
    await asyncio.sleep(0.2)
    assert not any(t.done() for t in admitted)  # waiting for the paused broker
    clock.t += 0.8  # 1.1 s: over every class's limit
    for events in (_events("order_completed", 2, "o2"), _events("page_viewed", 2, "v2")):
        late = await asyncio.wait_for(post(events), 10)
        assert late.status == 429
    resume()
    statuses = [(await asyncio.wait_for(t, 60)).status for t in admitted]
    assert statuses == [202, 202, 202]
    m = ingest.metrics
    assert m.admission_shed.labels("low")._value.get() == 12
    assert m.admission_shed.labels("high")._value.get() == 2
    assert m.admission_admitted.labels("high")._value.get() == 3 + 2 + 3

    ids = await _topic_ids(kafka_server.bootstrap, topic)
    assert sorted(ids) == sorted(
        [f"warm-{i}" for i in range(5)]
        + [f"o1-{i}" for i in range(3)]
        + [f"c1-{i}" for i in range(2)]
        + [f"mix-{i}" for i in range(2)]
        + ["u1-0"]
    )


async def test_a_flood_is_shed_and_nothing_acknowledged_is_lost(
    ingest_client: tuple[TestClient[Any, Any], MeteredIngest, str],
    kafka_server: KafkaServer,
) -> None:
    """Sixteen clients send 500-event batches as fast as they can, with a target the
    broker cannot meet: some are refused at once, and every 202 is in the topic."""
    client, ingest, topic = ingest_client
    ingest.admission.target = 0.002
    acked: list[str] = []
    refused = 0

    async def sender(k: int) -> None:
        nonlocal refused
        for j in range(12):
            events = _events("product_viewed", 500, f"f{k}.{j}.{uuid.uuid4().hex[:4]}")
            r = await client.post("/v1/events", json=events, headers=WRITE)
            if r.status == 202:
                acked.extend(e["event_id"] for e in events)
            else:
                assert r.status == 429
                assert int(r.headers["Retry-After"]) >= 1
                refused += 1

    await asyncio.wait_for(asyncio.gather(*(sender(k) for k in range(16))), 120)
    assert refused > 0
    assert acked
    ids = await _topic_ids(kafka_server.bootstrap, topic)
    assert len(ids) == len(set(ids))
    assert set(ids) == set(acked)
