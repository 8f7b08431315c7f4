"""The distributed ingest's address book (state/addresses.py) in Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["RedisAddressBook"]


class RedisAddressBook:
    """One Redis hash per channel, ``<prefix>:<channel>`` (default
    ``nudge:addresses:sms``): field = address, value = customer id. Shared by every
    ingest process of the distributed runtime. Redis errors propagate (the request then
    answers 500 and the provider retries)."""

    def __init__(self, client: aioredis.Redis, prefix: str = "nudge:addresses") -> None:
        self._redis = client
        self._prefix = prefix

    async def record(self, channel: str, address: str, customer_id: str) -> None:
        await self._redis.hset(f"{self._prefix}:{channel}", address, customer_id)

    async def lookup(self, channel: str, address: str) -> str | None:
        got = await self._redis.hget(f"{self._prefix}:{channel}", address)
        if got is None:
            return None
        return got.decode() if isinstance(got, bytes) else str(got)

    async def erase(self, customer_id: str) -> int:
        """Every channel's hash scanned (erasure is rare): fields naming the customer go."""
        n = 0
        want = customer_id.encode()
        async for key in self._redis.scan_iter(match=f"{self._prefix}:*"):
            fields = [f for f, v in (await self._redis.hgetall(key)).items() if v == want]
            if fields:
                n += int(await self._redis.hdel(key, *fields))
        return n
