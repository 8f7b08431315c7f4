"""MarkBatcher against a real Redis: concurrent marks share pipelines, each one lands,
and a mark waits out a Redis restart instead of failing."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
import redis

from engine.distributed.delivery import MarkBatcher
from engine.distributed.storage.redis import RedisState
from tests.support.servers import RedisServer

pytestmark = [pytest.mark.integration]


class CountingRedis(RedisState):
    """Real RedisState that counts its mark pipelines."""

    pipelines: list[int]

    async def mark_many(self, marks: list[tuple[str, str]]) -> None:
        self.pipelines.append(len(marks))
        await super().mark_many(marks)


async def test_concurrent_marks_coalesce(redis_server: RedisServer, redis_client: Any) -> None:
    state = CountingRedis(redis_server.url, prefix="t", ttl=60)
    state.pipelines = []
    marks = MarkBatcher(state)
    try:
        await asyncio.gather(*(marks.mark(f"k{i}", "sent") for i in range(500)))
        await marks.mark("last", "dead")
    finally:
        await state.close()
    assert sum(state.pipelines) == 501
    assert len(state.pipelines) < 10, state.pipelines  # 500 concurrent marks: not 500 trips
    assert redis_client.get("t:idem:k0") == b"sent"
    assert redis_client.get("t:idem:k499") == b"sent"
    assert redis_client.get("t:idem:last") == b"dead"
    assert 0 < redis_client.ttl("t:idem:k7") <= 60


async def test_marks_wait_out_a_redis_restart(redis_server: RedisServer, redis_client: Any) -> None:
    state = RedisState(redis_server.url, prefix="t", ttl=60, socket_timeout=1.0)
    marks = MarkBatcher(state)
    try:
        await marks.mark("before", "sent")
        with contextlib.suppress(redis.exceptions.ConnectionError):
            redis_client.shutdown(nosave=True)
        pending = asyncio.gather(*(marks.mark(f"during{i}", "sent") for i in range(20)))
        await asyncio.sleep(0.5)
        assert not pending.done()  # waiting for Redis, not failed
        await asyncio.to_thread(redis_server.restart)
        await asyncio.wait_for(pending, 30)
    finally:
        await state.close()
    assert state.outages >= 1
    assert all(redis_client.get(f"t:idem:during{i}") == b"sent" for i in range(20))
