"""Smoke tests for the real-server fixtures (tests/support/fixtures.py).

faust-streaming compatibility notes (measured here: faust-streaming 0.15.3,
aiokafka 0.14.0, mode-streaming, Python 3.11, Kafka 4.1.2 KRaft):

WORKS.  A faust.Worker subprocess (one agent + one Table, store="memory://")
consumes 10 keyed events from a 4-partition topic and updates the table; the 10th
event is processed ~1.5 s after import, the whole run (incl. SIGTERM shutdown,
rc 0) takes ~2.7 s.  Checked by hand too: a second worker run with the same
app id resumes from committed offsets and recovers the table from its changelog
(counts 4/3/3 -> 8/6/6).  Gotchas:

* Topic partitions must equal table partitions (co-partitioning): the source
  topic here has 4 partitions == ``topic_partitions=4`` == ``Table(partitions=4)``
  (broker ``num.partitions=4`` so auto-created/changelog topics also match).
* ``topic_replication_factor=1`` is needed on a one-broker cluster (faust
  creates ``<app>-__assignor-__leader`` and ``<app>-<table>-changelog`` itself).
* ``broker_session_timeout`` / ``broker_heartbeat_interval`` /
  ``stream_wait_empty=False`` / ``table_standby_replicas=0`` are NOT required
  for a single worker (the same test passes with faust defaults); keep them for
  faster rebalances/shutdown when tests kill and restart workers.  The broker
  allows sessions down to 1 s (``group.min.session.timeout.ms=1000``).
* The faust Worker redirects stdout into its logger (and prints ANSI cursor
  codes): report results via a file (as here) or ``Worker(redirect_stdouts=False)``.
* ``web_enabled=False`` avoids binding the 6066 web port (parallel workers clash).
* Startup has a fixed ~1 s "Waiting for tables to be registered" pause.
* An ``ERROR Group Coordinator Request failed: [Error 15]
  GroupCoordinatorNotAvailableError`` line on first join (``__consumer_offsets``
  being created) is harmless; aiokafka retries.  Likewise a WARNING
  ``NotLeaderForPartitionError ... retrying`` on the first produce to a just
  created topic (metadata shows a leader before the log exists).
* faust-streaming 0.15.3 resolved aiokafka 0.14.0; ``mode.__version__``
  reports 0.0.1 (mode-streaming packaging quirk, harmless).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.fixtures import KafkaTopicFactory, PrometheusFactory
from tests.support.servers import KafkaServer, RedisServer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_kafka_produce_consume(
    kafka_server: KafkaServer, kafka_topic_factory: KafkaTopicFactory
) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = kafka_topic_factory("smoke", partitions=2)

    async def roundtrip() -> Any:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_server.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b'{"event": "cart_add"}', key=b"user-1")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_server.bootstrap,
            group_id=f"{topic}-g",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            return await asyncio.wait_for(consumer.getone(), timeout=20)
        finally:
            await consumer.stop()

    msg = asyncio.run(roundtrip())
    assert (msg.key, msg.value) == (b"user-1", b'{"event": "cart_add"}')
    assert kafka_server.version.startswith("4.")


def test_redis_set_get_survives_restart(redis_server: RedisServer, redis_client: Any) -> None:
    redis_client.set("nudge:k", "v1")
    assert redis_client.get("nudge:k") == b"v1"
    port = redis_server.port
    redis_server.restart()
    assert redis_server.port == port
    # No persistence: data is gone; the client's pooled connection is dead, and
    # redis-py transparently reconnects on the next command.
    assert redis_client.get("nudge:k") is None
    redis_client.set("nudge:k", "v2")
    assert redis_client.get("nudge:k") == b"v2"


def test_prometheus_scrapes_itself(prometheus_factory: PrometheusFactory) -> None:
    port = free_port()
    config = textwrap.dedent(
        f"""\
        global:
          scrape_interval: 500ms
          evaluation_interval: 500ms
        scrape_configs:
          - job_name: self
            static_configs:
              - targets: ["127.0.0.1:{port}"]
        """
    )
    prom = prometheus_factory(config, port=port)
    query = urllib.parse.urlencode({"query": 'up{job="self"}'})
    deadline = time.monotonic() + 15
    result: list[Any] = []
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{prom.url}/api/v1/query?{query}", timeout=5) as resp:
            body = json.load(resp)
        assert body["status"] == "success"
        result = body["data"]["result"]
        if result:
            break
        time.sleep(0.2)
    assert result, "prometheus never scraped itself"
    assert result[0]["value"][1] == "1"


FAUST_APP = """
import os, signal, sys, time, json
import faust

BOOTSTRAP, TOPIC, APP_ID, RESULT_FILE = sys.argv[1:5]
N = 10
t0 = time.monotonic()
app = faust.App(
    APP_ID,
    broker=f"kafka://{BOOTSTRAP}",
    store="memory://",
    topic_partitions=4,
    topic_replication_factor=1,
    consumer_auto_offset_reset="earliest",
    web_enabled=False,
    broker_session_timeout=10.0,
    broker_heartbeat_interval=1.0,
    stream_wait_empty=False,
    table_standby_replicas=0,
)
source = app.topic(TOPIC, key_type=str, value_type=bytes, value_serializer="raw")
counts = app.Table("counts", default=int, partitions=4)
seen = 0


@app.agent(source)
async def count(stream):
    global seen
    async for user, _value in stream.items():
        counts[user] += 1
        seen += 1
        if seen == N:
            # faust redirects stdout into its logger: report through a file
            with open(RESULT_FILE, "w") as fh:
                secs = round(time.monotonic() - t0, 2)
                json.dump({"table": dict(counts.items()), "seconds": secs}, fh)
            os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()
"""


def test_faust_agent_and_table(
    kafka_server: KafkaServer, kafka_topic_factory: KafkaTopicFactory, tmp_path: Path
) -> None:
    from aiokafka import AIOKafkaProducer

    topic = kafka_topic_factory("faust-src", partitions=4)
    app_id = f"nudge-faust-smoke-{topic.rsplit('-', 1)[1]}"

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_server.bootstrap)
        await producer.start()
        try:
            for i in range(10):
                await producer.send_and_wait(topic, b"{}", key=f"user-{i % 3}".encode())
        finally:
            await producer.stop()

    asyncio.run(produce())
    script = tmp_path / "faust_smoke.py"
    script.write_text(FAUST_APP)
    result_file = tmp_path / "result.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, str(script), kafka_server.bootstrap, topic, app_id, str(result_file)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=90,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"faust worker hung; output:\n{exc.stdout!r}\n{exc.stderr!r}") from exc
    elapsed = time.monotonic() - started
    assert result_file.exists(), f"no result (rc={proc.returncode})\nstderr:\n{proc.stderr[-5000:]}"
    result = json.loads(result_file.read_text())
    assert result["table"] == {"user-0": 4, "user-1": 3, "user-2": 3}
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(
        f"faust: 10 events via agent+table {result['seconds']}s after import, {elapsed:.1f}s total"
    )
