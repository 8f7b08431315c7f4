"""pytest plugin: real Kafka / Redis / Prometheus servers for integration tests.

Enable with ``pytest_plugins = ["tests.support.fixtures"]`` in the top-level
conftest.  Fixtures (none of them ever skip: a server that cannot start fails
the test loudly, with the server log tail in the error):

* ``kafka_server`` (session): :class:`~tests.support.servers.KafkaServer`
  (``.bootstrap`` "127.0.0.1:N", ``.url`` "kafka://127.0.0.1:N", ``.port``,
  ``.version``, ``.log_path``).
* ``kafka_topic_factory`` (function): ``create(prefix="t", partitions=4,
  config=None) -> str`` makes a uniquely named topic (waits for partition
  leaders) and deletes every created topic after the test.
* ``redis_server`` (session): :class:`~tests.support.servers.RedisServer`
  (``.url``, ``.host``, ``.port``, ``.restart()``).
* ``redis_client`` (function): sync ``redis.Redis`` on ``redis_server``,
  FLUSHALL before each test.
* ``prometheus_factory`` (function): ``start(config_text, port=None) ->
  PrometheusServer`` (``.url``, ``.port``); all are stopped after the test.

Also registers the ``integration`` marker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pytest

from tests.support.servers import (
    KafkaServer,
    PrometheusServer,
    RedisServer,
    start_kafka,
    start_prometheus,
    start_redis,
)

__all__ = [
    "KafkaTopicFactory",
    "PrometheusFactory",
    "kafka_server",
    "kafka_topic_factory",
    "prometheus_factory",
    "pytest_configure",
    "redis_client",
    "redis_server",
    "run_coro",
]

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)
T = TypeVar("T")


class KafkaTopicFactory(Protocol):
    def __call__(
        self, prefix: str = "t", partitions: int = 4, config: Mapping[str, str] | None = None
    ) -> str: ...


class PrometheusFactory(Protocol):
    def __call__(self, config_text: str, port: int | None = None) -> PrometheusServer: ...


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: needs real servers (Kafka/Redis/Prometheus) started by fixtures"
    )


def run_coro(factory: Callable[[], Coroutine[Any, Any, T]], timeout: float = 60.0) -> T:
    """Run a coroutine to completion on a private loop in a worker thread.

    Safe to call from sync fixtures even when the test itself is async
    (an event loop may already be running in the main thread).
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, factory()).result(timeout=timeout)


@pytest.fixture(scope="session")
def kafka_server() -> Iterator[KafkaServer]:
    server = start_kafka()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kafka_topic_factory(kafka_server: KafkaServer) -> Iterator[KafkaTopicFactory]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    created: list[str] = []

    async def _create(name: str, partitions: int, config: Mapping[str, str] | None) -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=kafka_server.bootstrap, request_timeout_ms=15000
        )
        await admin.start()
        try:
            topic = NewTopic(name, partitions, 1, topic_configs=dict(config or {}))
            await admin.create_topics([topic])
        finally:
            await admin.close()

    async def _delete(names: list[str]) -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=kafka_server.bootstrap, request_timeout_ms=15000
        )
        await admin.start()
        try:
            await admin.delete_topics(names)
        finally:
            await admin.close()

    def create(
        prefix: str = "t", partitions: int = 4, config: Mapping[str, str] | None = None
    ) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        run_coro(lambda: _create(name, partitions, config))
        created.append(name)
        kafka_server.wait_for_leaders([name])
        return name

    yield create
    if created:
        try:
            run_coro(lambda: _delete(created))
        except Exception:  # cleanup must not mask the test result
            logger.exception("could not delete test topics %s", created)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    import redis as redis_lib

    client = redis_lib.Redis.from_url(redis_server.url, socket_timeout=5)
    client.flushall()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def prometheus_factory() -> Iterator[PrometheusFactory]:
    servers: list[PrometheusServer] = []

    def start(config_text: str, port: int | None = None) -> PrometheusServer:
        server = start_prometheus(config_text, port=port)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
