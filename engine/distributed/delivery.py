"""Delivering actions from the ``actions`` topic: claim the idempotency key in Redis
(``SET NX EX``), send through the routed sink with retries, mark it sent.

An action is never sent without a successful claim: while Redis is down the delivery
waits (and the actions consumer with it). A claim held by another sender (a rebalance
race, or a sender that died mid-send) is waited on until it is marked sent (skip) or
its short TTL expires (send). A permanently refused action is produced to the dead
letter topic and marked ``dead``. Marks are coalesced: the sends that finish while one
mark pipeline is in flight are marked together in the next (one round trip instead of
one per action; a crash between a send and its mark is the same window as before,
longer by at most one round trip).
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
from engine.metrics import Metrics
from engine.types import Action
from state.redis import Claim, RedisState

__all__ = ["Deliverer", "DeliveryStats", "MarkBatcher"]

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


class MarkBatcher:
    """``mark`` calls of one event loop, written to Redis in pipelines, one at a time."""

    def __init__(self, redis: RedisState) -> None:
        self.redis = redis
        self._pending: list[tuple[str, str]] = []
        self._next: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def mark(self, key: str, outcome: str) -> None:
        """Returns once ``key`` is marked ``outcome`` in Redis."""
        self._pending.append((key, outcome))
        fut = self._next
        if fut is None:
            loop = asyncio.get_running_loop()
            fut = self._next = loop.create_future()
            task = loop.create_task(self._flush(fut))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.shield(fut)  # a cancelled sender's mark is still written

    async def _flush(self, fut: asyncio.Future[None]) -> None:
        async with self._lock:  # marks arriving meanwhile wait for the next pipeline
            batch, self._pending, self._next = self._pending, [], None
            try:
                await self.redis.mark_many(batch)
            except asyncio.CancelledError:
                fut.cancel()
                raise
            except Exception as err:
                fut.set_exception(err)
                fut.exception()  # retrieved: its senders may have been cancelled meanwhile
            else:
                fut.set_result(None)


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
        metrics: Metrics | None = None,
    ) -> None:
        self.router = router
        self.redis = redis
        self.dead_letter = dead_letter
        self.policy = policy if policy is not None else RetryPolicy()
        self.busy_wait = busy_wait
        self.stats = DeliveryStats()
        self._sem = asyncio.Semaphore(concurrency)
        self._wall_ms = wall_ms
        self._marks = MarkBatcher(redis)
        self.metrics = metrics

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
        m = self.metrics
        t0 = time.perf_counter()
        try:
            await deliver(sink, action, self.router.policy_for(sink, self.policy))
        except SinkError as err:
            logger.error("action %s to %s dead-lettered: %s", key, sink.name, err)
            await self.dead_letter(action, str(err))
            await self._marks.mark(key, "dead")
            stats.dead += 1
            if m is not None:
                m.actions.labels(action.channel, "dead_lettered").inc()
            return
        except BaseException:
            await asyncio.shield(self.redis.release(key))  # cancelled: let a retry send it
            raise
        sent = time.perf_counter()
        await self._marks.mark(key, "sent")
        stats.sent += 1
        latency = self._wall_ms() - action.fire_at
        stats.observe(latency)
        if m is not None:
            # nudge run's names: event-to-action from the time the action was due (its
            # event's acceptance, or its timer's due time)
            m.actions.labels(action.channel, "delivered").inc()
            m.action_send.observe(sent - t0)
            m.event_to_action.observe(max(0, latency) / 1000)
