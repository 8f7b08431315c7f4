"""The action outbox: actions are written to SQLite (keyed by idempotency key) before any
delivery; delivered ones are marked sent, undeliverable ones go to the dead-letter store.

A key already in the outbox is never queued again, so a journal replay after a crash
re-creates actions harmlessly. What is not guaranteed: an action delivered just before a
crash, whose "sent" mark had not been committed, is delivered again after the restart with
the same ``Idempotency-Key`` header (receivers dedupe on it). The window is one flush
interval (a few milliseconds).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from connectors.deadletter import DeadLetterStore
from connectors.exceptions import SinkError
from connectors.retry import RetryPolicy, deliver
from connectors.routing import Router
from engine.clock import Clock
from engine.metrics import Metrics
from engine.types import Action

__all__ = ["Outbox"]

logger = logging.getLogger(__name__)

DbCall = Callable[..., Awaitable[Any]]
_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Action)


class Outbox:
    """Buffers new actions, persists them, delivers them with bounded concurrency."""

    def __init__(
        self,
        db: DbCall,
        store: Any,
        router: Router,
        dead: DeadLetterStore,
        metrics: Metrics,
        clock: Clock,
        *,
        concurrency: int = 32,
        policy: RetryPolicy | None = None,
    ) -> None:
        self._db = db
        self._store = store
        self._router = router
        self._dead = dead
        self._metrics = metrics
        self._clock = clock
        self._policy = policy if policy is not None else RetryPolicy()
        self._buf: list[tuple[Action, bool]] = []  # (action, caused by an event)
        self._persisting: list[list[tuple[Action, bool]]] = []  # taken, not yet committed
        self._sent: list[str] = []
        self._queue: asyncio.Queue[tuple[Action, bool]] = asyncio.Queue()
        self._inflight: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._concurrency = concurrency
        self.erased: set[str] = set()

    def add(self, action: Action, from_event: bool) -> None:
        self._buf.append((action, from_event))
        self._wake.set()

    def take_buffer(self) -> list[tuple[Action, bool]]:
        """The actions buffered so far (a checkpoint persists them with the states)."""
        buf, self._buf = self._buf, []
        return buf

    def unpersisted(self) -> list[tuple[Action, bool]]:
        """Every action produced so far whose outbox insert may not have committed yet:
        the buffer and the flushes in flight. An inline checkpoint writes them with its
        states (inserts of a key already present are ignored, so writing twice is safe)."""
        return [x for buf in self._persisting for x in buf] + self._buf

    async def persist_all(self) -> list[tuple[Action, bool]]:
        """Commit every action produced so far through this outbox's own flush (after a
        flush in flight: one state thread); returns those whose commit failed, for the
        caller to persist otherwise (normally none). A paced checkpoint calls it before
        handing its states to the writer, so the writer need not touch ``state.db``,
        whose lock the flushes take hundreds of times a second."""
        before = self.unpersisted()
        if not before:
            return []
        try:
            await self.flush()
        except Exception:
            logger.exception("outbox flush before a checkpoint failed")
        still = {id(x) for x in self.unpersisted()}
        return [x for x in before if id(x) in still]

    @staticmethod
    def rows(buf: list[tuple[Action, bool]]) -> list[tuple[str, str, bytes, int]]:
        return [(a.idempotency_key, a.customer_id, _enc.encode(a), a.fire_at) for a, _ in buf]

    async def dispatch_persisted(self, buf: list[tuple[Action, bool]]) -> None:
        """Queue the persisted actions that are still pending (not delivered before)."""
        if not buf:
            return
        keys = [a.idempotency_key for a, _ in buf]
        self._queue_pending(buf, set(await self._db(self._store.outbox_pending_keys, keys)))

    def _queue_pending(self, buf: list[tuple[Action, bool]], pending: set[str]) -> None:
        for action, from_event in buf:
            key = action.idempotency_key
            if key in pending and key not in self._inflight:
                self._inflight.add(key)
                self._queue.put_nowait((action, from_event))

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._flush_loop(), name="outbox-flush"))
        for i in range(self._concurrency):
            self._tasks.append(asyncio.create_task(self._deliver_loop(), name=f"deliver-{i}"))

    async def close(self) -> None:
        await self.flush()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._mark_sent()

    async def load_pending(self) -> int:
        """Queue every action persisted but not delivered (after a restart)."""
        rows = await self._db(self._store.outbox_pending)
        for key, body, _ in rows:
            if key not in self._inflight:
                self._inflight.add(key)
                self._queue.put_nowait((_dec.decode(body), False))
        return len(rows)

    async def flush(self) -> None:
        """Persist buffered actions and mark delivered ones sent, in one transaction, then
        queue the new ones not delivered before. If the write fails, both go back to be
        retried by the next flush."""
        buf = self.take_buffer()
        sent, self._sent = self._sent, []
        if not buf and not sent:
            return
        self._persisting.append(buf)
        t0 = time.perf_counter()
        try:
            pending = await self._db(self._store.outbox_sync, self.rows(buf), sent)
            self._metrics.outbox_flush.observe(time.perf_counter() - t0)
        except BaseException:
            self._buf = buf + self._buf
            self._sent = sent + self._sent
            raise
        finally:  # by identity: two buffers may hold equal actions
            self._persisting = [b for b in self._persisting if b is not buf]
        self._queue_pending(buf, set(pending))

    async def _mark_sent(self) -> None:
        if self._sent:
            sent, self._sent = self._sent, []
            await self._db(self._store.outbox_mark, sent, "sent")

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                logger.exception("outbox flush failed; retrying")
                await asyncio.sleep(0.5)
                self._wake.set()

    async def _deliver_loop(self) -> None:
        m = self._metrics
        while True:
            action, from_event = await self._queue.get()
            key = action.idempotency_key
            if action.customer_id in self.erased:
                self._inflight.discard(key)
                continue
            sink = self._router.sink_for(action)
            t0 = time.perf_counter()
            try:
                await deliver(sink, action, self._router.policy_for(sink, self._policy))
                m.action_send.observe(time.perf_counter() - t0)
            except SinkError as err:
                logger.warning("action %s to %s dead-lettered: %s", key, sink.name, err)
                m.actions.labels(action.channel, "dead_lettered").inc()
                await self._db(self._dead.add, action, sink.name, str(err), err.attempts)
                await self._db(self._store.outbox_mark, [key], "dead")
            else:
                m.actions.labels(action.channel, "delivered").inc()
                if from_event:
                    m.event_to_action.observe(max(0, self._clock.now() - action.fire_at) / 1000)
                self._sent.append(key)
                self._wake.set()
            finally:
                self._inflight.discard(key)

    @property
    def pending(self) -> int:
        return len(self._inflight) + len(self._buf)
