"""The action outbox: actions are written to SQLite (keyed by idempotency key) before any
delivery; delivered ones are marked sent, undeliverable ones go to the dead-letter store.

A key already in the outbox is never queued again, so a journal replay after a crash
re-creates actions harmlessly.

Identity forwards (events the core routes to another customer: engine/identity.py) ride
the same table as actions on channel ``_forward``: persisted before the state that made
them is checkpointed, then handed in order, one batch at a time, by a single task to
``forward`` (the runtime's own ingest, which journals them). They are never dead-lettered:
a forward that cannot be accepted now (not ready, backpressure) is retried until it is,
and after a restart the pending ones go first.

Undeliverable actions (the sink refused them, or attempts ran out) are written to the
dead-letter store, then marked ``dead`` in the outbox; only then are they counted
``dead_lettered``. If that write fails (disk full, an I/O error, the store closed), the
action is kept in memory (``graves``), still pending, and the delivery task's exception
goes to its supervisor (engine/embedded/supervise.py: logged, counted, restarted with
backoff); every delivery task writes the kept ones first, before taking a new action. An
unexpected error while delivering puts the action back in the queue the same way: a
failing task never loses the action it held.

What is not guaranteed: an action delivered just before a crash, whose "sent" mark had
not been committed, is delivered again after the restart with the same
``Idempotency-Key`` header (receivers dedupe on it). The window is one flush interval (a
few milliseconds). A forward so repeated is journaled twice and processed once (its
event id, or the merge's ``merged_from``).
"""

from __future__ import annotations

import asyncio
import hashlib
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
from engine.embedded.health import Health
from engine.embedded.supervise import Supervisor
from engine.metrics import Metrics
from engine.types import Action, Event

__all__ = ["FORWARD", "Forward", "Outbox", "forward_action", "forwarded_event"]

logger = logging.getLogger(__name__)

DbCall = Callable[..., Awaitable[Any]]
Forward = Callable[[list[Event]], Awaitable[None]]
_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Action)
FORWARD = "_forward"
_FORWARD_BATCH = 500
_FORWARD_RETRY_S = 0.05


def forward_action(event: Event, now: int) -> Action:
    """An identity forward as an outbox row: keyed by (event id, target), so the replay
    of the input that made it finds it there."""
    raw = f"{event.event_id}\0{event.customer_id}".encode()
    key = "fwd-" + hashlib.blake2b(raw, digest_size=16).hexdigest()
    body = msgspec.to_builtins(event)
    return Action("", 0, event.customer_id, FORWARD, event.type, body, "", key, now)


def forwarded_event(action: Action) -> Event:
    """The event :func:`forward_action` carried."""
    return msgspec.convert(action.params, Event)


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
        forward: Forward | None = None,
        supervisor: Supervisor | None = None,
        health: Health | None = None,
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
        self._concurrency = concurrency
        self.erased: set[str] = set()
        self._forward = forward
        self._forwards: list[Action] = []  # persisted, in production order
        self._fwake = asyncio.Event()
        # dead letters whose write failed: (action, sink name, error, attempts), written
        # by the next delivery task before anything else
        self.graves: list[tuple[Action, str, str, int]] = []
        self._sup = supervisor if supervisor is not None else Supervisor(metrics)
        self._health = health if health is not None else Health(metrics)
        self._names: list[str] = []

    def add(self, action: Action, from_event: bool) -> None:
        self._buf.append((action, from_event))
        self._wake.set()

    def take_buffer(self) -> list[tuple[Action, bool]]:
        """The actions buffered so far (a checkpoint persists them with the states)."""
        buf, self._buf = self._buf, []
        return buf

    def give_back(self, buf: list[tuple[Action, bool]]) -> None:
        """Actions ``take_buffer`` returned whose commit failed: buffered again, first."""
        if buf:
            self._buf = buf + self._buf
            self._wake.set()

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
        except Exception as err:
            if self._health.failed("outbox", err) is None:
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
                self._enqueue(action, from_event)

    def _enqueue(self, action: Action, from_event: bool) -> None:
        self._inflight.add(action.idempotency_key)
        if action.channel == FORWARD:
            self._forwards.append(action)
            self._fwake.set()
        else:
            self._queue.put_nowait((action, from_event))

    def start(self) -> None:
        """Start the flush, delivery and forward tasks (supervised: restarted if they
        fail)."""
        sup = self._sup
        self._names = ["outbox-flush", "outbox-forward"]
        sup.spawn("outbox-flush", self._flush_loop)
        sup.spawn("outbox-forward", self._forward_loop)
        for i in range(self._concurrency):
            self._names.append(f"deliver-{i}")
            sup.spawn(f"deliver-{i}", self._deliver_loop, kind="deliver")

    async def close(self) -> None:
        """Flush, stop the tasks, record the last deliveries. A write failing now (a full
        disk at stop) is logged, not raised: the actions it held come back from the
        journal's replay at the next start, and those delivered are sent again with the
        same idempotency key (the documented window, wider by this)."""
        try:
            await self.flush()
        except Exception as err:
            self._health.failed("outbox", err)
            logger.error("outbox flush at stop failed: %s", err)
        await self._sup.cancel(self._names)
        try:
            await self._mark_sent()
        except Exception as err:
            self._health.failed("outbox", err)
            logger.error("recording the last deliveries at stop failed: %s", err)

    async def load_pending(self) -> int:
        """Queue every action persisted but not delivered (after a restart)."""
        rows = await self._db(self._store.outbox_pending)
        for key, body, _ in rows:
            if key not in self._inflight:
                self._enqueue(_dec.decode(body), False)
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
            except Exception as err:  # kept buffered: retried until it commits
                if self._health.failed("outbox", err) is None:
                    logger.exception("outbox flush failed; retrying")
                await asyncio.sleep(0.5)
                self._wake.set()
            else:
                if "outbox" in self._health.faults:
                    self._health.ok("outbox")

    async def _deliver_loop(self) -> None:
        m = self._metrics
        while True:
            await self._bury()  # dead letters a failed write left behind come first
            action, from_event = await self._queue.get()
            key = action.idempotency_key
            if action.customer_id in self.erased:
                self._inflight.discard(key)
                continue
            try:
                sink = self._router.sink_for(action)
            except Exception:  # a routing bug: keep the action, fail the task
                self._queue.put_nowait((action, from_event))
                raise
            try:
                t0 = time.perf_counter()
                await deliver(sink, action, self._router.policy_for(sink, self._policy))
                m.action_send.observe(time.perf_counter() - t0)
            except SinkError as err:
                logger.warning("action %s to %s dead-lettered: %s", key, sink.name, err)
                self.graves.append((action, sink.name, str(err), err.attempts))
                await self._bury()  # raises to the supervisor if the store fails
                continue
            except Exception:  # a bug or a broken sink: keep the action, fail the task
                self._queue.put_nowait((action, from_event))
                raise
            m.actions.labels(action.channel, "delivered").inc()
            if from_event:
                m.event_to_action.observe(max(0, self._clock.now() - action.fire_at) / 1000)
            self._sent.append(key)
            self._inflight.discard(key)
            self._wake.set()

    async def _bury(self) -> None:
        """Write the kept dead letters to the dead-letter store and mark them ``dead`` in
        the outbox (both idempotent by key). On failure the letter stays kept, pending,
        and the exception propagates (the supervisor restarts the task with backoff)."""
        while self.graves:
            grave = self.graves.pop(0)
            action, sink_name, err, attempts = grave
            key = action.idempotency_key
            try:
                await self._db(self._dead.add, action, sink_name, err, attempts)
                await self._db(self._store.outbox_mark, [key], "dead")
            except BaseException as err:
                self.graves.insert(0, grave)
                if isinstance(err, Exception):
                    self._health.failed("deadletter", err)
                raise
            if "deadletter" in self._health.faults:
                self._health.ok("deadletter")
            self._metrics.actions.labels(action.channel, "dead_lettered").inc()
            self._inflight.discard(key)

    async def _forward_loop(self) -> None:
        """Hand the persisted forwards to ``forward`` in order, a batch at a time; retry a
        batch refused (not ready, backpressure, a journal error) until it is taken."""
        while True:
            await self._fwake.wait()
            self._fwake.clear()
            while self._forwards:
                # the batch is fixed before the await: forwards queued meanwhile wait for
                # the next one (slicing again after it marked them sent unforwarded)
                taken = self._forwards[:_FORWARD_BATCH]
                erased = self.erased
                batch = [a for a in taken if a.customer_id not in erased]
                if batch and self._forward is not None:
                    try:
                        await self._forward([forwarded_event(a) for a in batch])
                    except Exception as err:  # retried until taken
                        logger.debug("forwarding %d events deferred: %r", len(batch), err)
                        await asyncio.sleep(getattr(err, "retry_after", _FORWARD_RETRY_S))
                        continue
                del self._forwards[: len(taken)]
                for a in taken:
                    self._inflight.discard(a.idempotency_key)
                    self._sent.append(a.idempotency_key)
                self._metrics.actions.labels(FORWARD, "delivered").inc(len(batch))
                self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._inflight) + len(self._buf)
