"""Suppressed customers on the distributed runtime: the same salted hashes as ``nudge run``
(state/suppression.py), kept in Redis (``<prefix>:suppressed``, a set; the salt in
``<prefix>:suppressed:salt``) so every ingest drops the events of a customer erased with
``?suppress=true``. Each ingest holds the set in memory and reads it again every
``refresh`` seconds (another ingest's erase is honoured within that time)."""

from __future__ import annotations

import asyncio
import logging
import os

from engine.distributed.storage.redis import RedisState
from engine.tasks import cancel
from state.suppression import digest

__all__ = ["RedisSuppression"]

logger = logging.getLogger(__name__)


class RedisSuppression:
    def __init__(self, redis: RedisState, refresh: float = 5.0) -> None:
        self.redis = redis
        self.key = f"{redis.prefix}:suppressed"
        self.refresh = refresh
        self._salt = b""
        self._digests: set[bytes] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        client = self.redis.client
        await client.set(f"{self.key}:salt", os.urandom(16), nx=True)  # first one wins
        salt = await client.get(f"{self.key}:salt")
        assert isinstance(salt, bytes)
        self._salt = salt
        await self._load()
        self._task = asyncio.create_task(self._follow(), name="ingest-suppressed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel(task)

    async def _load(self) -> None:
        members = await self.redis.client.smembers(self.key)
        self._digests = {d for d in members if isinstance(d, bytes)}

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)
            try:
                await self._load()
            except Exception as err:  # Redis down: keep the set we have
                logger.warning("suppressed customers not refreshed: %r", err)

    def digest(self, customer_id: str) -> bytes:
        return digest(self._salt, customer_id)

    async def add(self, customer_id: str) -> None:
        d = self.digest(customer_id)
        await self.redis.client.sadd(self.key, d)
        self._digests.add(d)

    def __len__(self) -> int:
        return len(self._digests)

    def __contains__(self, customer_id: str) -> bool:
        return bool(self._digests) and self.digest(customer_id) in self._digests
