"""Delivering actions from the ``actions`` topic: claim the idempotency key in Redis
(``SET NX EX``), send through the routed sink with retries, mark it sent.

An action is never sent without a successful claim: while Redis is down the delivery
waits (and the actions consumer with it). A claim held by another sender (a rebalance
race, or a sender that died mid-send) is waited on until it is marked sent (skip) or
its short TTL expires (send). A permanently refused action is produced to the dead
letter topic and marked ``dead``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from connectors.exceptions import SinkError
from connectors.retry import RetryPolicy, deliver
from connectors.routing import Router
from engine.types import Action
from state.redis import Claim, RedisState

__all__ = ["Deliverer", "DeliveryStats"]

logger = logging.getLogger(__name__)

DeadLetter = Callable[[Action, str], Awaitable[None]]
WallMs = Callable[[], int]


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class DeliveryStats:
    sent: int = 0
    skipped_done: int = 0  # already sent: a redelivery
    waited_busy: int = 0
    dead: int = 0
    # delivered - fire_at of the most recent sends
    latencies_ms: deque[int] = field(default_factory=lambda: deque(maxlen=10_000))

    def observe(self, ms: int) -> None:
        self.latencies_ms.append(ms)

    def counters(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "skipped_done": self.skipped_done,
            "waited_busy": self.waited_busy,
            "dead": self.dead,
        }


class Deliverer:
    """Sends actions at most once each (per idempotency key) through ``router``."""

    def __init__(
        self,
        router: Router,
        redis: RedisState,
        dead_letter: DeadLetter,
        *,
        policy: RetryPolicy | None = None,
        concurrency: int = 64,
        busy_wait: float = 0.2,
        wall_ms: WallMs = _wall_ms,
    ) -> None:
        self.router = router
        self.redis = redis
        self.dead_letter = dead_letter
        self.policy = policy if policy is not None else RetryPolicy()
        self.busy_wait = busy_wait
        self.stats = DeliveryStats()
        self._sem = asyncio.Semaphore(concurrency)
        self._wall_ms = wall_ms

    async def deliver_all(self, actions: list[Action]) -> None:
        """Deliver (or skip) every action; returns when each one is settled. The claims
        of the whole batch go to Redis in one pipeline; each send is marked on its own
        as soon as it succeeded."""
        if len(actions) == 1:
            await self.deliver_one(actions[0])
            return
        claims = await self.redis.claim_many([a.idempotency_key for a in actions])
        await asyncio.gather(*(self._bounded(a, c) for a, c in zip(actions, claims, strict=True)))

    async def _bounded(self, action: Action, claim: Claim) -> None:
        async with self._sem:
            await self.deliver_one(action, claim)

    async def deliver_one(self, action: Action, claim: Claim | None = None) -> None:
        key = action.idempotency_key
        stats = self.stats
        while True:
            if claim is None:
                claim = await self.redis.claim(key)
            if claim is Claim.DONE:
                stats.skipped_done += 1
                return
            if claim is Claim.BUSY:
                stats.waited_busy += 1
                await asyncio.sleep(self.busy_wait)
                claim = None
                continue
            break
        sink = self.router.sink_for(action)
        try:
            await deliver(sink, action, self.router.policy_for(sink, self.policy))
        except SinkError as err:
            logger.error("action %s to %s dead-lettered: %s", key, sink.name, err)
            await self.dead_letter(action, str(err))
            await self.redis.mark(key, "dead")
            stats.dead += 1
            return
        except BaseException:
            await asyncio.shield(self.redis.release(key))  # cancelled: let a retry send it
            raise
        await self.redis.mark(key, "sent")
        stats.sent += 1
        stats.observe(self._wall_ms() - action.fire_at)
