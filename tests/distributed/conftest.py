"""Helpers for the distributed runtime tests: worker subprocesses, an event producer and
the expected actions (the core over the same events, via ``engine.backtest``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.backtest import backtest
from rules.ruleset import load_ruleset
from tests.support.fixtures import KafkaTopicFactory
from tests.support.servers import KafkaServer, RedisServer
from tests.support.traces import TIMING_FREE_RULES

ROOT = Path(__file__).resolve().parents[2]

RULES = TIMING_FREE_RULES


def expected_keys(rules_dir: Path, events: list[dict[str, Any]]) -> set[str]:
    result = backtest(load_ruleset([str(rules_dir)]), [orjson.dumps(e) for e in events])
    return {a.idempotency_key for a in result.actions}


async def produce(bootstrap: str, topic: str, events: list[dict[str, Any] | bytes]) -> None:
    """Events (dicts, keyed by customer id) or raw records (bytes, as a producer that
    bypasses the HTTP edge might write them)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        now = int(time.time() * 1000)
        futs = [
            await producer.send(topic, e, key=b"raw", timestamp_ms=now)
            if isinstance(e, bytes)
            else await producer.send(
                topic, orjson.dumps(e), key=e["customer_id"].encode(), timestamp_ms=now
            )
            for e in events
        ]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


@dataclass
class Cluster:
    """Topics, app id and settings shared by the workers of one test."""

    tmp: Path
    kafka: KafkaServer
    redis_url: str
    events_topic: str
    actions_topic: str
    app_id: str
    prefix: str
    rules_dir: Path
    sinks_file: Path
    partitions: int
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    killed: set[str] = field(default_factory=set)

    def start_worker(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("ab")
        cmd = [
            sys.executable,
            "-m",
            "engine.distributed.cli",
            "worker",
            "--broker",
            self.kafka.url,
            "--redis",
            self.redis_url,
            "--app-id",
            self.app_id,
            "--partitions",
            str(self.partitions),
            "--events-topic",
            self.events_topic,
            "--actions-topic",
            self.actions_topic,
            "--rules",
            str(self.rules_dir),
            "--sinks",
            str(self.sinks_file),
            "--redis-prefix",
            self.prefix,
            "--session-timeout",
            "3",
            "--heartbeat-interval",
            "0.5",
            "--claim-ttl",
            "3",
            "--stats-file",
            str(self.tmp / f"{name}.stats.json"),
            "--loglevel",
            os.environ.get("NUDGE_TEST_LOGLEVEL", "WARNING"),
            *extra,
        ]
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ}
        )
        log.close()
        self.procs[name] = proc
        return proc

    def stats(self, name: str) -> dict[str, Any]:
        path = self.tmp / f"{name}.stats.json"
        return orjson.loads(path.read_bytes()) if path.exists() else {}

    def log_tail(self, name: str, n: int = 3000) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.killed.add(name)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def webhook_sinks(url: str) -> dict[str, Any]:
    return {"default": "hook", "sinks": {"hook": {"type": "webhook", "url": url}}}


@pytest.fixture
def cluster_factory(
    tmp_path: Path,
    kafka_server: KafkaServer,
    kafka_topic_factory: KafkaTopicFactory,
    redis_server: RedisServer,
    redis_client: Any,
) -> Iterator[Any]:
    made: list[Cluster] = []

    def make(hook_url: str, partitions: int = 4) -> Cluster:
        events = kafka_topic_factory("events", partitions=partitions)
        actions = kafka_topic_factory("actions", partitions=partitions)
        rules_dir = tmp_path / "rules"
        rules_dir.mkdir(exist_ok=True)
        for name, text in RULES.items():
            (rules_dir / name).write_text(text)
        sinks = tmp_path / "sinks.json"
        sinks.write_bytes(orjson.dumps(webhook_sinks(hook_url)))
        c = Cluster(
            tmp=tmp_path,
            kafka=kafka_server,
            redis_url=redis_server.url,
            events_topic=events,
            actions_topic=actions,
            app_id=f"nudge-test-{uuid.uuid4().hex[:8]}",
            prefix=f"t{uuid.uuid4().hex[:6]}",
            rules_dir=rules_dir,
            sinks_file=sinks,
            partitions=partitions,
        )
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop_all()
