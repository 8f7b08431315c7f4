"""Redis for the distributed runtime: action idempotency keys, the deployed rule set (with
pub/sub so every worker hot-reloads it) and per-channel rate limits.

Every call retries while Redis is unreachable (connection refused, reset, timeout): a
worker never sends an action without its key check, it waits instead. ``retry_for``
bounds the wait (``None``: forever, the worker default).

Idempotency keys have three states, stored as the value of ``<prefix>:idem:<key>``:

* absent: nobody claimed the action; :meth:`RedisState.claim` sets ``sending`` with
  ``SET NX EX claim_ttl`` and the caller sends;
* ``sending``: a sender holds it. If that sender dies, the short TTL frees it and a
  redelivery sends it (a duplicate only if the first send had reached the receiver: the
  receiver dedupes on the same key);
* ``sent`` (or ``dead``): done, kept ``ttl`` seconds; redeliveries skip it.

Redis restarts without persistence lose the keys; actions already delivered are then
not redelivered by the runtime anyway (their offsets were committed), so a restart only
matters together with a crash in the same window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Claim", "RedisState", "RulesRecord"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)

# Store a rule set only if its version is newer than the stored one (concurrent deploys).
_PUT_RULES = """
local cur = redis.call('GET', KEYS[2])
local v = tonumber(ARGV[1])
if cur and tonumber(cur) >= v then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('PUBLISH', KEYS[3], ARGV[1])
return 1
"""


class Claim(Enum):
    """The answer of :meth:`RedisState.claim`."""

    ACQUIRED = "acquired"  # send it, then mark it (mark_many)
    DONE = "done"  # already sent (or dead-lettered): skip
    BUSY = "busy"  # another sender holds it: try again later


@dataclass(frozen=True)
class RulesRecord:
    """A deployed rule set: monotonically increasing ``version`` and the file texts."""

    version: int
    files: dict[str, str]


class RedisState:
    """Async Redis access for one worker. ``prefix`` namespaces every key (tests)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "nudge",
        claim_ttl: int = 30,
        ttl: int = 7 * 86_400,
        retry_for: float | None = None,
        socket_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.claim_ttl = claim_ttl
        self.ttl = ttl
        self.retry_for = retry_for
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
        )
        self.rules_key = f"{prefix}:rules"
        self.rules_version_key = f"{prefix}:rules:version"
        self.rules_channel = f"{prefix}:rules:deploy"
        self.unavailable_since: float | None = None
        self.outages = 0

    async def close(self) -> None:
        await self.client.aclose()

    async def _retry(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        """Run ``op`` until Redis answers (backoff 50 ms .. 1 s)."""
        delay = 0.05
        start = time.monotonic()
        while True:
            try:
                result = await op()
            except _UNAVAILABLE as err:
                if self.unavailable_since is None:
                    self.unavailable_since = time.monotonic()
                    self.outages += 1
                    logger.warning("redis unavailable (%s: %r); waiting", what, err)
                if self.retry_for is not None and time.monotonic() - start > self.retry_for:
                    raise
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
                continue
            if self.unavailable_since is not None:
                logger.info("redis back after %.1fs", time.monotonic() - self.unavailable_since)
                self.unavailable_since = None
            return result

    # --- idempotency keys ----------------------------------------------------------
    def _idem(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"

    async def claim(self, key: str) -> Claim:
        """Try to become the one sender of action ``key`` (``SET NX EX claim_ttl``)."""
        (claim,) = await self.claim_many([key])
        return claim

    async def claim_many(self, keys: list[str]) -> list[Claim]:
        """:meth:`claim` for each of ``keys``, in one pipeline (plus one for the values
        of the keys already held: ``sending`` or expired meanwhile is BUSY, else DONE)."""
        names = [self._idem(k) for k in keys]

        async def op() -> list[Claim]:
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.set(name, b"sending", nx=True, ex=self.claim_ttl)
            got = await pipe.execute()
            held = [i for i, ok in enumerate(got) if not ok]
            out = [Claim.ACQUIRED] * len(names)
            if held:
                pipe = self.client.pipeline(transaction=False)
                for i in held:
                    pipe.get(names[i])
                for i, value in zip(held, await pipe.execute(), strict=True):
                    done = value is not None and value not in (b"sending", "sending")
                    out[i] = Claim.DONE if done else Claim.BUSY
            return out

        return await self._retry(op, "claim")

    async def mark_many(self, marks: list[tuple[str, str]]) -> None:
        """Record that each action ``key`` was sent (or dead-lettered: the ``outcome``),
        kept ``ttl`` seconds; one pipeline."""

        async def op() -> None:
            pipe = self.client.pipeline(transaction=False)
            for key, outcome in marks:
                pipe.set(self._idem(key), outcome.encode(), ex=self.ttl)
            await pipe.execute()

        await self._retry(op, "mark")

    async def release(self, key: str) -> None:
        """Give a claim back (the send failed in a way worth retrying later)."""
        name = self._idem(key)
        await self._retry(lambda: self.client.delete(name), "release")

    async def _get(self, name: str) -> bytes | None:
        value = await self.client.get(name)
        return value.encode() if isinstance(value, str) else value

    async def status(self, key: str) -> str | None:
        value = await self._retry(lambda: self._get(self._idem(key)), "get")
        return None if value is None else value.decode()

    # --- rate limits ---------------------------------------------------------------
    async def take_rate(self, channel: str, limit: int, period: int, now_ms: int) -> float:
        """One send on ``channel`` under ``limit`` per ``period`` seconds, shared by every
        worker (fixed windows). Returns 0.0 when allowed, else the seconds until the
        window ends (nothing was taken)."""
        window = now_ms // (period * 1000)
        name = f"{self.prefix}:rate:{channel}:{window}"

        async def op() -> int:
            pipe = self.client.pipeline(transaction=True)
            pipe.incr(name)
            pipe.expire(name, period + 1)
            count, _ = await pipe.execute()
            return int(count)

        count = await self._retry(op, "rate")
        if count <= limit:
            return 0.0
        await self._retry(lambda: self.client.decr(name), "rate")
        return ((window + 1) * period * 1000 - now_ms) / 1000

    # --- rule sets -----------------------------------------------------------------
    async def load_rules(self) -> RulesRecord | None:
        """The deployed rule set, or None when none was deployed."""
        raw = await self._retry(lambda: self._get(self.rules_key), "rules")
        if raw is None:
            return None
        data = orjson.loads(raw)
        return RulesRecord(int(data["version"]), dict(data["files"]))

    async def put_rules(self, files: dict[str, str], version: int | None = None) -> int:
        """Store ``files`` as a new version (the stored version + 1, or ``version`` when
        given and newer) and announce it on the deploy channel. Returns the version; 0 if
        a newer version was stored meanwhile. Callers validate the files first."""

        async def op() -> int:
            cur = await self.client.get(self.rules_version_key)
            v = version if version is not None else int(cur or 0) + 1
            body = orjson.dumps({"version": v, "files": files})
            keys = [self.rules_key, self.rules_version_key, self.rules_channel]
            done = await self.client.eval(_PUT_RULES, 3, *keys, v, body)
            return v if int(done) else 0

        return await self._retry(op, "put_rules")

    async def seed_rules(self, files: dict[str, str]) -> RulesRecord:
        """The deployed rule set; when there is none (first start, Redis lost its data)
        store ``files`` as version 1 (or whatever a concurrent worker stored first)."""
        while True:
            rec = await self.load_rules()
            if rec is not None:
                return rec
            await self.put_rules(files, 1)

    async def rule_updates(self, poll: float = 5.0) -> AsyncIterator[int]:
        """Yield the version of every deploy message, forever. Reconnects after Redis
        outages and then yields the stored version (a deploy may have been missed); also
        yields it every ``poll`` seconds, so a lost message delays a deploy, never drops
        it. 0 means no rule set is stored. Callers compare with what they run."""
        while True:
            pubsub: Any = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.rules_channel)
                rec = await self.load_rules()
                yield 0 if rec is None else rec.version
                while True:
                    msg = await pubsub.get_message(timeout=poll)
                    if msg is not None and msg.get("type") == "message":
                        yield int(msg["data"])
                    elif msg is None:
                        rec = await self.load_rules()
                        yield 0 if rec is None else rec.version
            except _UNAVAILABLE as err:
                logger.warning("rule subscription lost (%r); resubscribing", err)
                await asyncio.sleep(0.2)
            finally:
                with contextlib.suppress(*_UNAVAILABLE):
                    await pubsub.aclose()
