"""``nudge purge`` on the real Kafka: a dry run deletes nothing and says what would go;
the purge moves each partition's log start up to the lowest offset the workers' groups
committed there (the processing group's, and the delivery group's on ``actions``), and
leaves a partition no group committed alone; a broker that does not answer is exit 1."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.fixtures import run_coro
from tests.support.servers import KafkaServer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]


async def _fill_and_commit(bootstrap: str, app: str, events: str, actions: str) -> None:
    """10 records in each partition of both topics; the app's group commits events
    p0 at 6, p1 at 4 and actions p0 at 7; its delivery group actions p0 at 3 (behind)
    and p1 at 5."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for topic in (events, actions):
            for p in (0, 1):
                for i in range(10):
                    await producer.send_and_wait(topic, b"x%d" % i, key=b"k", partition=p)
    finally:
        await producer.stop()
    for group, commits in (
        (app, {(events, 0): 6, (events, 1): 4, (actions, 0): 7}),
        (f"{app}-deliver", {(actions, 0): 3, (actions, 1): 5}),
    ):
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                    enable_auto_commit=False)  # fmt: skip
        await consumer.start()
        try:
            tps = {TopicPartition(t, p): off for (t, p), off in commits.items()}
            consumer.assign(list(tps))
            await consumer.commit({tp: OffsetAndMetadata(off, "") for tp, off in tps.items()})
        finally:
            await consumer.stop()


async def _starts(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in (0, 1)]
        got = await consumer.beginning_offsets(tps)
        return {(tp.topic, tp.partition): off for tp, off in got.items()}
    finally:
        await consumer.stop()


def _nudge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "purge", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_purge_cli(kafka_server: KafkaServer, kafka_topic_factory: Any) -> None:
    events = kafka_topic_factory("events", partitions=2)
    actions = kafka_topic_factory("actions", partitions=2)
    app = f"purge-{uuid.uuid4().hex[:8]}"
    bs = kafka_server.bootstrap
    run_coro(lambda: _fill_and_commit(bs, app, events, actions))
    topics = ["--broker", kafka_server.url, "--app-id", app,
              "--events-topic", events, "--actions-topic", actions]  # fmt: skip

    dry = _nudge(*topics, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert run_coro(lambda: _starts(bs, [events, actions])) == {
        (events, 0): 0, (events, 1): 0, (actions, 0): 0, (actions, 1): 0,
    }  # fmt: skip
    assert f"{events}[0]: would delete the records below offset 6" in dry.stdout

    # one group named: only its commits count (the delivery group's: actions only)
    only = _nudge(*topics, "--group", f"{app}-deliver")
    assert only.returncode == 0, only.stderr
    assert run_coro(lambda: _starts(bs, [events, actions])) == {
        (events, 0): 0, (events, 1): 0, (actions, 0): 3, (actions, 1): 5,
    }  # fmt: skip

    done = _nudge(*topics)
    assert done.returncode == 0, done.stderr
    # actions p0: the delivery group is behind the processing group there: its 3 wins
    want = {(events, 0): 6, (events, 1): 4, (actions, 0): 3, (actions, 1): 5}
    assert run_coro(lambda: _starts(bs, [events, actions])) == want
    assert done.stdout.splitlines() == [
        f"{t}[{p}]: deleted the records below offset {off}" for (t, p), off in sorted(want.items())
    ]
    assert "4 partition(s)" in done.stderr

    away = _nudge("--broker", f"kafka://127.0.0.1:{free_port()}", "--timeout", "3")
    assert away.returncode == 1
    assert "nudge purge" in away.stderr


def test_no_group_committed_nothing_purged(
    kafka_server: KafkaServer, kafka_topic_factory: Any
) -> None:
    from engine.distributed.purge import purge_consumed

    events = kafka_topic_factory("events", partitions=2)
    got = asyncio.run(purge_consumed(kafka_server.bootstrap, ["nobody"], [events]))
    assert got == {}
