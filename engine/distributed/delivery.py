"""Delivering actions from the ``actions`` topic: claim the idempotency key in Redis
(``SET NX EX``), send through the routed sink, mark it sent; ride out a sink's outage.

An action is never sent without a successful claim: while Redis is down the delivery
waits (and the actions consumer with it). A claim held by another sender (a rebalance
race, or a sender that died mid-send) is waited on until it is marked sent (skip) or
its short TTL expires (send). Marks are coalesced: the sends that finish while one
mark pipeline is in flight are marked together in the next (one round trip instead of
one per action; a crash between a send and its mark is the same window as before,
longer by at most one round trip).

Outages (issue 19; docs/sinks.md): a retryable failure is retried by time
(:func:`connectors.retry.next_attempt`: backoff with jitter, ``Retry-After``, up to the
sink's retry horizon); the claim is given back while the action waits, and taken again
before the next attempt, so a claim never outlives its TTL and a worker that dies while
waiting leaves nothing locked. The action waits in its fetch: the fetch's offsets are
not committed until every action in it is settled, so the actions topic holds it
durably (a worker killed meanwhile: the next one reads it again). With ``delivery_batches``
fetches waiting, the consumer pauses: the backlog stays in Kafka. A circuit breaker per
sink (per worker) stops sending to a failing sink and probes it; waiting actions are
woken when it lets more through. An action past its send-by deadline is produced to the
dead-letter topic with reason ``expired`` and not sent; permanent refusals, the horizon
and an attempt cap with their reasons. A customer's actions go in order (each waits for
the one before it, also across fetches in flight). Not here: quiet hours at a delayed
send (a delivery worker has no customer state; ``nudge run`` applies them), and the rule
steps' ``deliver_within`` on a ``deliver``-only worker (it has no rule set: the sink's
and the channel's apply).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from connectors.breaker import BreakerState, CircuitBreaker
from connectors.deadline import Deadlines
from connectors.exceptions import Expired, SinkError
from connectors.retry import RetryPolicy, next_attempt
from connectors.routing import Router
from engine.distributed.storage.redis import Claim, RedisState
from engine.metrics import Metrics
from engine.types import Action

__all__ = ["Deliverer", "DeliveryStats", "MarkBatcher"]

logger = logging.getLogger(__name__)

DeadLetter = Callable[[Action, str, str], Awaitable[None]]
"""``dead_letter(action, error, reason)``: produce it to the dead-letter topic."""
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
    """Sends actions at most once each (per idempotency key) through ``router``, riding
    out a sink's outage (module docstring)."""

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
        deadlines: Deadlines | None = None,
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
        self.deadlines = deadlines if deadlines is not None else router.deadlines()
        self.breakers: dict[str, CircuitBreaker] = {}
        self._changed: dict[str, asyncio.Event] = {}  # pulsed when a breaker lets more by
        # per customer, the settling of its latest action: the next one waits for it
        self._tails: dict[str, asyncio.Future[None]] = {}
        for name in router.sinks:
            self._breaker(name)

    async def deliver_all(self, actions: list[Action]) -> None:
        """Deliver (or skip) every action; returns when each one is settled. A customer's
        actions go one after the other, in order, after its actions of earlier calls
        still in flight; different customers in parallel. The claims of the actions
        with nothing ahead go to Redis in one pipeline."""
        loop = asyncio.get_running_loop()
        chained: list[tuple[Action, asyncio.Future[None] | None, asyncio.Future[None]]] = []
        for a in actions:  # no await before this is done: calls chain in call order
            prev = self._tails.get(a.customer_id)
            fut: asyncio.Future[None] = loop.create_future()
            self._tails[a.customer_id] = fut
            chained.append((a, prev if prev is not None and not prev.done() else None, fut))
        free = [a.idempotency_key for a, prev, _ in chained if prev is None]
        got = iter(await self.redis.claim_many(free) if len(free) > 1 else [None] * len(free))
        await asyncio.gather(
            *(self._chained(a, prev, fut, None if prev else next(got)) for a, prev, fut in chained)
        )

    async def _chained(
        self,
        action: Action,
        prev: asyncio.Future[None] | None,
        fut: asyncio.Future[None],
        claim: Claim | None,
    ) -> None:
        try:
            if prev is not None:
                await asyncio.shield(prev)
            async with self._sem:
                await self.deliver_one(action, claim)
        finally:
            if not fut.done():
                fut.set_result(None)
            if self._tails.get(action.customer_id) is fut:
                del self._tails[action.customer_id]

    async def deliver_one(self, action: Action, claim: Claim | None = None) -> None:
        """Claim, attempt, decide: sent (marked), retried later (the claim is given back
        while it waits), or given up (dead letter with its reason, marked dead)."""
        key = action.idempotency_key
        sink = self.router.sink_for(action)
        policy = self.router.policy_for(sink, self.policy)
        deadline = self.deadlines.deadline(action, sink.name)
        breaker = self._breaker(sink.name)
        m = self.metrics
        attempt = 0
        t0 = time.perf_counter()
        while True:
            if not await self._own(key, claim):
                return
            claim = None
            try:
                now = self._wall_ms()
                if deadline is not None and now >= deadline:
                    await self._give_up(
                        action,
                        sink.name,
                        Expired("send-by deadline passed", deadline=deadline, attempts=attempt),
                    )
                    return
                later = breaker.acquire()
                if later is not None:  # open (or probing): no send now
                    await asyncio.shield(self.redis.release(key))
                    wake = later if deadline is None else min(later, deadline)
                    await self._sleep_until(wake, sink.name)
                    continue
                attempt += 1
                try:
                    await sink.send(action)
                except SinkError as err:
                    failure: SinkError = err
                except asyncio.CancelledError:
                    self._released(sink.name, breaker, ok=True)
                    raise
                except Exception as err:  # a sink bug: permanent, as deliver() treats it
                    logger.exception("sink %s raised an unexpected error", sink.name)
                    failure = SinkError(f"sink {sink.name} failed: {err!r}", retryable=False)
                else:
                    self._released(sink.name, breaker, ok=True)
                    break
                self._released(sink.name, breaker, ok=not failure.retryable)
                if m is not None:
                    result = "retry" if failure.retryable else "refused"
                    m.sink_attempts.labels(sink.name, result).inc()
                try:
                    at = next_attempt(
                        policy,
                        action,
                        failure,
                        attempt,
                        self._wall_ms(),
                        deadline=deadline,
                        who=sink.name,
                    )
                except SinkError as final:
                    await self._give_up(action, sink.name, final)
                    return
                await asyncio.shield(self.redis.release(key))  # free while it waits
            except BaseException:
                await asyncio.shield(self.redis.release(key))  # cancelled: let a retry send it
                raise
            await self._sleep_until(at, sink.name)
        sent = time.perf_counter()
        await self._marks.mark(key, "sent")
        stats = self.stats
        stats.sent += 1
        latency = self._wall_ms() - action.fire_at
        stats.observe(latency)
        if m is not None:
            # nudge run's names: event-to-action from the time the action was due (its
            # event's acceptance, or its timer's due time)
            m.sink_attempts.labels(sink.name, "ok").inc()
            m.actions.labels(action.channel, "delivered").inc()
            m.action_send.observe(sent - t0)
            m.event_to_action.observe(max(0, latency) / 1000)

    async def _own(self, key: str, claim: Claim | None) -> bool:
        """Hold the key's claim (waiting while another sender has it); ``False`` when
        the action was settled already (sent or dead)."""
        stats = self.stats
        while True:
            if claim is None:
                claim = await self.redis.claim(key)
            if claim is Claim.DONE:
                stats.skipped_done += 1
                return False
            if claim is Claim.BUSY:
                stats.waited_busy += 1
                await asyncio.sleep(self.busy_wait)
                claim = None
                continue
            return True

    async def _give_up(self, action: Action, sink_name: str, err: SinkError) -> None:
        reason = err.reason or "rejected"
        log = logger.info if reason == "expired" else logger.error
        log("action %s to %s %s: %s", action.idempotency_key, sink_name, reason, err)
        await self.dead_letter(action, str(err), reason)
        await self._marks.mark(action.idempotency_key, "dead")
        self.stats.dead += 1
        if self.metrics is not None:
            outcome = "expired" if reason == "expired" else "dead_lettered"
            self.metrics.actions.labels(action.channel, outcome).inc()

    # --- breakers -----------------------------------------------------------------------
    def _breaker(self, sink_name: str) -> CircuitBreaker:
        br = self.breakers.get(sink_name)
        if br is None:
            br = self.breakers[sink_name] = CircuitBreaker(
                sink_name,
                self.router.breaker_policy(sink_name),
                self._wall_ms,
                self._on_state,
            )
        return br

    def _on_state(self, sink_name: str, state: BreakerState) -> None:
        if self.metrics is not None:
            self.metrics.sink_state.labels(sink_name).set(int(state))

    def _released(self, sink_name: str, breaker: CircuitBreaker, *, ok: bool) -> None:
        breaker.release(ok)
        if breaker.state is not BreakerState.OPEN:  # more may go: wake the waiters
            ev = self._changed.pop(sink_name, None)
            if ev is not None:
                ev.set()

    async def _sleep_until(self, at: int, sink_name: str) -> None:
        """Until wall time ``at`` (ms), or earlier when the sink's breaker lets more sends
        by (it recovered: the waiting actions go at its pace, not their backoff's)."""
        delay = (at - self._wall_ms()) / 1000
        if delay <= 0:
            return
        ev = self._changed.setdefault(sink_name, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), delay)
