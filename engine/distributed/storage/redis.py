"""Redis for the distributed runtime: action idempotency keys, the deployed rule set (with
pub/sub so every worker hot-reloads it), population models and backfill progress.

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
from dataclasses import dataclass, field
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

# Store a rule set only if its version is newer than the stored one (concurrent deploys);
# keep the last RULES_HISTORY records, newest first (rollback).
_PUT_RULES = """
local cur = redis.call('GET', KEYS[2])
local v = tonumber(ARGV[1])
if cur and tonumber(cur) >= v then return 0 end
if redis.call('LLEN', KEYS[4]) == 0 then
  local old = redis.call('GET', KEYS[1])
  if old then redis.call('LPUSH', KEYS[4], old) end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('LPUSH', KEYS[4], ARGV[2])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[3]) - 1)
redis.call('PUBLISH', KEYS[3], ARGV[1])
return 1
"""
RULES_HISTORY = 20
"""Deployed rule set records kept in Redis for ``nudge rules rollback`` (the current one
included)."""


# Start an RFM round (engine/distributed/models.py) unless one started recently.
_START_ROUND = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
local now = tonumber(ARGV[1])
if cur >= 0 and (now <= cur or now - cur < tonumber(ARGV[2])) then return cur end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[2], 'rfm:' .. ARGV[1])
return now
"""

# Store merged RFM boundaries only if they rank higher (round * 2 + complete).
_PUT_BOUNDS = """
local cur = tonumber(redis.call('GET', KEYS[2]) or '-1')
if tonumber(ARGV[1]) <= cur then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('PUBLISH', KEYS[3], 'bounds:' .. ARGV[3])
return 1
"""


class Claim(Enum):
    """The answer of :meth:`RedisState.claim`."""

    ACQUIRED = "acquired"  # send it, then mark it (mark_many)
    DONE = "done"  # already sent (or dead-lettered): skip
    BUSY = "busy"  # another sender holds it: try again later


@dataclass(frozen=True)
class RulesRecord:
    """A deployed rule set: monotonically increasing ``version``, the file texts and the
    earlier rule versions it keeps for open flows (``RuleSet.archive``,
    rules/versions.py; empty in a record stored before it existed)."""

    version: int
    files: dict[str, str]
    archive: dict[str, Any] = field(default_factory=dict)


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
        self.rules_history_key = f"{prefix}:rules:history"
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

    # --- population models (engine/distributed/models.py) -------------------------
    # CLV parameters: hash <prefix>:models:<kind>, version -> JSON body (never
    # overwritten). RFM: the round key (the reference time of the current scan), per
    # partition the round its summary was taken at and the summary (two hashes), and the
    # merged boundaries. Every change is announced on <prefix>:models.
    def _models_key(self, name: str) -> str:
        return f"{self.prefix}:models:{name}"

    @property
    def models_channel(self) -> str:
        return f"{self.prefix}:models"

    async def save_model(self, kind: str, version: int, body: str) -> bool:
        """Store ``body`` as ``version`` of model ``kind`` unless that version exists
        (False: a concurrent fit took it; nothing changed), and announce it."""
        key, channel = self._models_key(kind), self.models_channel

        async def op() -> bool:
            stored = bool(await self.client.hsetnx(key, str(version), body))
            if stored:
                await self.client.publish(channel, f"{kind}:{version}")
            return stored

        return await self._retry(op, "save_model")

    async def latest_model(self, kind: str) -> tuple[int, str] | None:
        """The highest stored version of model ``kind`` and its body; None if none."""
        key = self._models_key(kind)

        async def op() -> tuple[int, str] | None:
            versions = [int(v) for v in await self.client.hkeys(key)]
            if not versions:
                return None
            latest = max(versions)
            body = await self.client.hget(key, str(latest))
            if body is None:  # pragma: no cover - versions are never deleted
                return None
            return latest, body.decode() if isinstance(body, bytes) else str(body)

        return await self._retry(op, "latest_model")

    async def model_versions(self, kind: str) -> list[tuple[int, str]]:
        """Every stored version of model ``kind`` with its body, oldest first."""
        key = self._models_key(kind)

        async def op() -> list[tuple[int, str]]:
            got = await self.client.hgetall(key)
            out = [(int(v), b.decode() if isinstance(b, bytes) else str(b)) for v, b in got.items()]
            return sorted(out)

        return await self._retry(op, "model_versions")

    async def notify_models(self, what: str) -> None:
        """Announce a change (``reload``, ``rfm:<round>``) to every worker."""
        channel = self.models_channel
        await self._retry(lambda: self.client.publish(channel, what), "notify_models")

    async def model_updates(self, poll: float) -> AsyncIterator[str | None]:
        """Yield every announcement on the models channel, and None every ``poll``
        seconds without one, forever (a lost message delays a change by a poll, never
        drops it). Reconnects after Redis outages (then yields None)."""
        while True:
            pubsub: Any = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.models_channel)
                yield None
                while True:
                    msg = await pubsub.get_message(timeout=poll)
                    if msg is not None and msg.get("type") == "message":
                        data = msg["data"]
                        yield data.decode() if isinstance(data, bytes) else str(data)
                    elif msg is None:
                        yield None
            except _UNAVAILABLE as err:
                logger.warning("models subscription lost (%r); resubscribing", err)
                await asyncio.sleep(0.2)
            finally:
                with contextlib.suppress(*_UNAVAILABLE):
                    await pubsub.aclose()

    async def start_rfm_round(self, now_ms: int, min_gap_ms: int) -> int:
        """Start an RFM round at ``now_ms`` unless the current one started less than
        ``min_gap_ms`` before (0: any earlier round); returns the round in force (and
        announces a new one)."""
        keys = [self._models_key("rfm:round"), self.models_channel]

        async def op() -> int:
            return int(await self.client.eval(_START_ROUND, 2, *keys, now_ms, min_gap_ms))

        return await self._retry(op, "start_rfm_round")

    async def rfm_status(self) -> tuple[int | None, dict[int, int], bytes | None]:
        """The current round (None: never started), the round each partition's stored
        summary was taken at, and the stored merged boundaries (JSON), in one pipeline."""
        keys = [self._models_key(n) for n in ("rfm:round", "rfm:rounds", "rfm:bounds")]

        async def op() -> tuple[int | None, dict[int, int], bytes | None]:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(keys[0])
            pipe.hgetall(keys[1])
            pipe.get(keys[2])
            rnd, rounds, bounds = await pipe.execute()
            return (
                None if rnd is None else int(rnd),
                {int(p): int(r) for p, r in rounds.items()},
                bounds,
            )

        return await self._retry(op, "rfm_status")

    async def put_rfm_summary(self, partition: int, round_at: int, summary: bytes) -> None:
        """Store partition ``partition``'s RFM summary taken at round ``round_at``."""
        parts, rounds = self._models_key("rfm:parts"), self._models_key("rfm:rounds")

        async def op() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(parts, str(partition), summary)
            pipe.hset(rounds, str(partition), str(round_at))
            await pipe.execute()

        await self._retry(op, "put_rfm_summary")

    async def rfm_summaries(self, partitions: int) -> list[bytes | None]:
        """The stored summaries of partitions ``0 .. partitions - 1`` (None: none)."""
        key = self._models_key("rfm:parts")
        fields = [str(p) for p in range(partitions)]

        async def op() -> list[bytes | None]:
            got = await self.client.hmget(key, fields)
            return [v.encode() if isinstance(v, str) else v for v in got]

        return await self._retry(op, "rfm_summaries")

    async def put_rfm_bounds(self, round_at: int, complete: bool, body: bytes) -> bool:
        """Store merged boundaries of round ``round_at`` unless newer ones are stored
        (a later round, or the same round complete while these are not); announces them.
        False: nothing stored."""
        keys = [
            self._models_key("rfm:bounds"),
            self._models_key("rfm:bounds:at"),
            self.models_channel,
        ]
        rank = round_at * 2 + int(complete)

        async def op() -> bool:
            return bool(await self.client.eval(_PUT_BOUNDS, 3, *keys, rank, body, round_at))

        return await self._retry(op, "put_rfm_bounds")

    async def rfm_bounds(self) -> bytes | None:
        """The stored merged boundaries (JSON), None before the first round completes."""
        key = self._models_key("rfm:bounds")
        return await self._retry(lambda: self._get(key), "rfm_bounds")

    # --- rule sets -----------------------------------------------------------------
    async def load_rules(self) -> RulesRecord | None:
        """The deployed rule set, or None when none was deployed."""
        raw = await self._retry(lambda: self._get(self.rules_key), "rules")
        if raw is None:
            return None
        return _record(raw)

    async def rules_history(self) -> list[RulesRecord]:
        """The last RULES_HISTORY deployed records, newest first (the current one
        first; records stored before the history existed are not in it)."""
        key = self.rules_history_key
        raws = await self._retry(lambda: self.client.lrange(key, 0, -1), "rules_history")
        return [_record(raw) for raw in raws]

    async def put_rules(
        self,
        files: dict[str, str],
        version: int | None = None,
        archive: dict[str, Any] | None = None,
    ) -> int:
        """Store ``files`` (and the earlier rule versions it keeps, ``archive``) as a new
        version (the stored version + 1, or ``version`` when given and newer) and announce
        it on the deploy channel. Returns the version; 0 if a newer version was stored
        meanwhile. Callers validate the files first."""

        async def op() -> int:
            cur = await self.client.get(self.rules_version_key)
            v = version if version is not None else int(cur or 0) + 1
            body = orjson.dumps({"version": v, "files": files, "archive": archive or {}})
            keys = [
                self.rules_key,
                self.rules_version_key,
                self.rules_channel,
                self.rules_history_key,
            ]
            done = await self.client.eval(_PUT_RULES, 4, *keys, v, body, RULES_HISTORY)
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

    # --- segment backfill progress (engine/distributed/backfill.py) -----------------
    def _backfill_key(self, worker: str) -> str:
        return f"{self.prefix}:segments:backfill:{worker}"

    async def put_backfill(self, worker: str, progress: dict[str, Any], ttl: int) -> None:
        """Store one worker's segment backfill progress for ``ttl`` seconds (a worker that
        dies stops refreshing it and it expires)."""
        key, body = self._backfill_key(worker), orjson.dumps(progress)

        async def op() -> None:
            await self.client.set(key, body, ex=ttl)

        await self._retry(op, "backfill progress")

    async def backfill_progress(self) -> list[dict[str, Any]]:
        """Every live worker's stored segment backfill progress (no particular order)."""

        async def op() -> list[dict[str, Any]]:
            keys = [k async for k in self.client.scan_iter(match=self._backfill_key("*"))]
            if not keys:
                return []
            return [orjson.loads(v) for v in await self.client.mget(keys) if v is not None]

        return await self._retry(op, "backfill progress")


def _record(raw: bytes | str) -> RulesRecord:
    data = orjson.loads(raw)
    archive = data.get("archive")
    return RulesRecord(
        int(data["version"]),
        dict(data["files"]),
        dict(archive) if isinstance(archive, dict) else {},
    )
