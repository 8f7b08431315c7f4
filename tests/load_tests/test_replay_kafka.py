"""``nudge replay --target kafka://...`` produces a trace to a real Kafka topic: every valid
event once, keyed by customer id, in file order per customer; invalid events rejected
locally (as HTTP ingest would answer 400), malformed lines skipped."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from load_tests.traffic import TrafficConfig, generate
from tests.support.cli import run_cli
from tests.support.servers import KafkaServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def _consume(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes, bytes]]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    got: list[tuple[bytes, bytes]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while len(got) < expected and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                got += [(r.key, r.value) for r in records]
        # nothing beyond what was expected shows up
        for records in (await consumer.getmany(timeout_ms=1000)).values():
            got += [(r.key, r.value) for r in records]
    finally:
        await consumer.stop()
    return got


def test_replay_to_kafka(
    kafka_server: KafkaServer, kafka_topic_factory: Any, tmp_path: Path
) -> None:
    topic = kafka_topic_factory("events", partitions=4)
    events = list(generate(TrafficConfig(customers=100, events=800, seed=11)))
    lines = [orjson.dumps(e) for e in events]
    invalid = orjson.dumps({"event_id": "x1", "type": "order_completed", "customer_id": "c1"})
    trace = tmp_path / "trace.jsonl"
    trace.write_bytes(b"\n".join([*lines[:400], invalid, b"{not json", *lines[400:]]) + b"\n")

    target = f"kafka://{kafka_server.bootstrap}/{topic}"
    res = run_cli("replay", str(trace), "--no-progress", "--target", target, "--rate", "4000/s")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = orjson.loads(res.stdout)
    assert (summary["lines"], summary["malformed"], summary["rejected"]) == (802, 1, 1)
    assert (summary["acknowledged"], summary["failed"]) == (800, 0)
    assert summary["target"] == f"kafka://{kafka_server.bootstrap}/{topic}"

    got = asyncio.run(_consume(kafka_server.bootstrap, topic, 800))
    assert len(got) == 800  # each event once
    assert all(orjson.loads(v)["customer_id"].encode() == k for k, v in got)
    # per customer, the file's order (one customer's events share a partition)
    by_customer: dict[bytes, list[bytes]] = {}
    for k, v in got:
        by_customer.setdefault(k, []).append(v)
    for k, values in by_customer.items():
        assert values == [ln for ln in lines if orjson.loads(ln)["customer_id"].encode() == k]
