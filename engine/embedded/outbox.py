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

Delivery rides out a provider outage (issue 19; docs/sinks.md "Outages"):

- **Per-customer order.** Each customer's pending actions form a lane, in the order they
  were made; only the first is attempted, so an SMS is never sent before the email made
  ahead of it, also when that email waits out an outage. Different customers go in
  parallel (``concurrency`` delivery tasks).
- **Retry by time.** A retryable failure puts the customer's lane to sleep until the next
  attempt (:func:`connectors.retry.next_attempt`: full-jitter backoff, ``Retry-After``);
  no task is held while it waits: a timer heap, drained by one task by the injected
  clock. The action stays ``pending`` in ``state.db``, so a restart (``kill -9``
  included) re-queues it from ``load_pending``, in order.
- **Circuit breaker per sink** (:mod:`connectors.breaker`): while open no send goes out;
  lanes park behind it and one is woken for each probe; when the sink answers again the
  parked lanes are woken at the pace the breaker ramps up to.
- **Send-by deadline** (:mod:`connectors.deadline`): an action past it is not sent; it is
  recorded ``expired``. Quiet hours (``hold``) still apply to a delayed send: it waits for
  their end if that is before its deadline, else it expires.
- **Dead letters** only for permanent failures (refused, retry horizon passed, an attempt
  cap), with the reason. They are written to the dead-letter store, then marked ``dead``
  (``expired``) in the outbox; only then counted and the customer's next action let go.
  If that write fails (disk full, an I/O error, the store closed), the action is kept in
  memory (``graves``), still pending, and the delivery task's exception goes to its
  supervisor (engine/embedded/supervise.py: logged, counted, restarted with backoff);
  every delivery task writes the kept ones first, before taking a new action. An
  unexpected error while delivering puts the customer back in the queue the same way: a
  failing task never loses the action it held.
- **Replay** (``nudge deadletter replay`` while this engine runs): the letters it marks
  are taken back into the outbox by ``_replay_loop``.

What is not kept across a restart: attempt counts and backoff (a restarted engine tries
each pending action at once, then backs off again; the horizon and deadlines count from
``fire_at``, so they hold), and a replay's "no deadline, horizon from the replay".

What is not guaranteed: an action delivered just before a crash, whose "sent" mark had
not been committed, is delivered again after the restart with the same
``Idempotency-Key`` header (receivers dedupe on it). The window is one flush interval (a
few milliseconds). A forward so repeated is journaled twice and processed once (its
event id, or the merge's ``merged_from``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from connectors.breaker import BreakerState, CircuitBreaker
from connectors.deadletter import DeadLetterStore
from connectors.deadline import Deadlines
from connectors.exceptions import Expired, SinkError
from connectors.retry import RetryPolicy, next_attempt
from connectors.routing import Router
from connectors.sinks.base import Sink
from engine.clock import Clock
from engine.embedded.health import Health
from engine.embedded.supervise import Supervisor
from engine.metrics import Metrics
from engine.types import Action, Event

__all__ = ["FORWARD", "Forward", "Outbox", "forward_action", "forwarded_event"]

logger = logging.getLogger(__name__)

DbCall = Callable[..., Awaitable[Any]]
Forward = Callable[[list[Event]], Awaitable[None]]
Hold = Callable[[Action, int], int | None]
"""``hold(action, now)``: the epoch ms until which ``action`` must not be sent now (quiet
hours in the customer's time zone), or ``None``."""
_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Action)
FORWARD = "_forward"
_FORWARD_BATCH = 500
_FORWARD_RETRY_S = 0.05


class _Ready(asyncio.Queue[str]):
    """Customers whose first action is due, each with when it was put (monotonic), so
    the age of the oldest is known: how long the delivery tasks are behind."""

    _queue: deque[tuple[str, float]]

    def _init(self, maxsize: int) -> None:
        self._queue = deque()

    def _put(self, item: str) -> None:
        self._queue.append((item, time.monotonic()))

    def _get(self) -> str:
        return self._queue.popleft()[0]

    def oldest_age(self) -> float:
        """Seconds the first in line has waited (0: none waits)."""
        return time.monotonic() - self._queue[0][1] if self._queue else 0.0


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
        deadlines: Deadlines | None = None,
        hold: Hold | None = None,
        tick_s: float = 0.25,
        replay_poll_s: float = 1.0,
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
        # per customer, the actions not settled yet, in the order they were made: only the
        # first is attempted (an SMS goes after its email, also across an outage)
        self._lanes: dict[str, deque[tuple[Action, bool]]] = {}
        self._ready = _Ready()  # customers whose first action is due
        self._waiting: dict[str, int] = {}  # customer -> generation of its wait
        self._timers: list[tuple[int, int, str, str]] = []  # (due, gen, customer, sink)
        self._parked: dict[str, deque[tuple[str, int]]] = {}  # sink -> waiting on its breaker
        self._sink_due: dict[str, int] = {}  # sink -> end of its open period (a timer)
        self._gen = 0
        self._twake = asyncio.Event()
        self._attempts: dict[str, int] = {}
        self._replayed: dict[str, int] = {}  # key -> when a replay re-queued it
        self._breakers: dict[str, CircuitBreaker] = {}
        self._counters: dict[tuple[str, str], Any] = {}
        self._deadlines = deadlines if deadlines is not None else router.deadlines()
        self._hold = hold
        self._tick_s = tick_s
        self._replay_poll_s = replay_poll_s
        self._inflight: set[str] = set()
        self._wake = asyncio.Event()
        self._concurrency = concurrency
        self.erased: set[str] = set()
        self._forward = forward
        self._forwards: list[Action] = []  # persisted, in production order
        self._fwake = asyncio.Event()
        # dead letters whose write failed: (action, sink name, error, attempts, reason),
        # written by the next delivery task before anything else
        self.graves: list[tuple[Action, str, str, int, str]] = []
        self._sup = supervisor if supervisor is not None else Supervisor(metrics)
        self._health = health if health is not None else Health(metrics)
        self._names: list[str] = []

    def purge(self, customer_id: str) -> int:
        """Drop ``customer_id``'s actions held in memory (the buffer, the delivery lane,
        the forwards, the dead letters waiting for a write): the erasure's, once its rows
        are deleted. Returns how many."""
        n = 0
        lane = self._lanes.pop(customer_id, None)
        for a, _ in lane or ():
            self._inflight.discard(a.idempotency_key)
            n += 1
        keep = [x for x in self._buf if x[0].customer_id != customer_id]
        n += len(self._buf) - len(keep)
        self._buf = keep
        forwards = [a for a in self._forwards if a.customer_id != customer_id]
        n += len(self._forwards) - len(forwards)
        self._forwards = forwards
        graves = [g for g in self.graves if g[0].customer_id != customer_id]
        n += len(self.graves) - len(graves)
        self.graves = graves
        return n

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
            return
        cid = action.customer_id
        lane = self._lanes.get(cid)
        if lane is None:  # nothing of this customer's ahead: due now
            self._lanes[cid] = deque([(action, from_event)])
            self._ready.put_nowait(cid)
        else:  # behind the customer's earlier actions: sent after them
            lane.append((action, from_event))

    def start(self) -> None:
        """Start the flush, delivery and forward tasks (supervised: restarted if they
        fail)."""
        sup = self._sup
        self._names = ["outbox-flush", "outbox-forward", "outbox-retry", "outbox-replay"]
        sup.spawn("outbox-flush", self._flush_loop)
        sup.spawn("outbox-forward", self._forward_loop)
        sup.spawn("outbox-retry", self._retry_loop)
        sup.spawn("outbox-replay", self._replay_loop, vital=False)
        for name in self._router.sinks:  # nudge_sink_state{sink} from the start
            self._breaker(name)
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

    # --- delivery ---------------------------------------------------------------------
    async def _deliver_loop(self) -> None:
        """Take a customer whose first action is due, make one attempt, decide what
        next: delivered (the customer's next action is due), retried later (the customer
        waits: order kept), expired or dead-lettered (the next one is due)."""
        while True:
            await self._bury()  # dead letters a failed write left behind come first
            cid = await self._ready.get()
            lane = self._lanes.get(cid)
            if not lane:
                continue
            action, from_event = lane[0]
            if cid in self.erased:
                for a, _ in lane:
                    self._inflight.discard(a.idempotency_key)
                del self._lanes[cid]
                continue
            try:
                sink = self._router.sink_for(action)
            except Exception:  # a routing bug: keep the action, fail the task
                self._ready.put_nowait(cid)
                raise
            try:
                await self._attempt(cid, action, from_event, sink)
            except Exception:  # a bug: keep the action, fail the task
                self._ready.put_nowait(cid)
                raise

    async def _attempt(self, cid: str, action: Action, from_event: bool, sink: Sink) -> None:
        key = action.idempotency_key
        now = self._clock.now()
        replayed = self._replayed.get(key)
        deadline = None if replayed is not None else self._deadlines.deadline(action, sink.name)
        if deadline is not None and now >= deadline:
            self._give_up(cid, action, sink, Expired("send-by deadline passed", deadline=deadline))
            return
        if self._hold is not None:
            until = self._hold(action, now)
            if until is not None:  # quiet hours: wait for their end, if still worth it
                if deadline is not None and until >= deadline:
                    self._give_up(
                        cid, action, sink, Expired("quiet hours last past it", deadline=deadline)
                    )
                else:
                    self._wait(cid, until)
                return
        breaker = self._breaker(sink.name)
        later = breaker.acquire()
        if later is not None:  # open, or half open at its limit: wait for a probe
            self._park(cid, sink.name, deadline)
            if breaker.state is BreakerState.OPEN:
                self._sink_timer(sink.name, later)
            return
        attempt = self._attempts.get(key, 0) + 1
        self._attempts[key] = attempt
        t0 = time.perf_counter()
        try:
            await sink.send(action)
        except SinkError as err:
            failure: SinkError = err
        except Exception as err:  # a sink bug: a permanent failure, as deliver() treats it
            logger.exception("sink %s raised an unexpected error", sink.name)
            failure = SinkError(f"sink {sink.name} failed unexpectedly: {err!r}", retryable=False)
        else:
            self._released(sink.name, breaker, ok=True)
            m = self._metrics
            self._attempt_counter(sink.name, "ok").inc()
            m.action_send.observe(time.perf_counter() - t0)
            m.actions.labels(action.channel, "delivered").inc()
            if from_event:
                m.event_to_action.observe(max(0, self._clock.now() - action.fire_at) / 1000)
            self._done(cid, key)
            self._sent.append(key)
            self._wake.set()
            return
        self._released(sink.name, breaker, ok=not failure.retryable)
        self._attempt_counter(sink.name, "retry" if failure.retryable else "refused").inc()
        try:
            at = next_attempt(
                self._router.policy_for(sink, self._policy),
                action,
                failure,
                attempt,
                self._clock.now(),
                deadline=deadline,
                horizon_from=replayed,
                who=sink.name,
            )
        except SinkError as final:
            self._give_up(cid, action, sink, final)
            return
        logger.debug("retrying %s to %s at %d: %s", key, sink.name, at, failure)
        self._wait(cid, at)
        self._park(cid, sink.name, None, keep=True)  # and woken early if the sink recovers

    def _attempt_counter(self, sink_name: str, result: str) -> Any:
        """``nudge_sink_attempts{sink, result}``'s child (looked up once: every send)."""
        key = (sink_name, result)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = self._metrics.sink_attempts.labels(sink_name, result)
        return child

    def _give_up(self, cid: str, action: Action, sink: Sink, err: SinkError) -> None:
        """Expired or dead: recorded by ``_bury`` (before the customer's next action)."""
        reason = err.reason or "rejected"
        log = logger.info if reason == "expired" else logger.warning
        log("action %s to %s %s: %s", action.idempotency_key, sink.name, reason, err)
        attempts = max(err.attempts, self._attempts.get(action.idempotency_key, 0))
        self.graves.append((action, sink.name, str(err), attempts, reason))
        self._unpark(sink.name)  # pass a probe slot on

    def _done(self, cid: str, key: str) -> None:
        """The customer's first action is settled: the next one (if any) is due."""
        self._inflight.discard(key)
        self._attempts.pop(key, None)
        self._replayed.pop(key, None)
        lane = self._lanes.get(cid)
        if lane:
            lane.popleft()
            if lane:
                self._ready.put_nowait(cid)
            else:
                del self._lanes[cid]

    # --- waiting: timers, parking behind a sink's breaker -----------------------------------
    def _wait(self, cid: str, at: int) -> None:
        """The customer's first action waits until ``at`` (epoch ms), or a wake-up."""
        gen = self._gen = self._gen + 1
        self._waiting[cid] = gen
        heapq.heappush(self._timers, (at, gen, cid, ""))
        self._twake.set()

    def _park(self, cid: str, sink_name: str, deadline: int | None, *, keep: bool = False) -> None:
        """Wait for ``sink_name``'s breaker to let a send through (and for ``deadline``:
        it expires then). ``keep``: already waiting on a timer, add the wake-up."""
        if keep:
            gen = self._waiting[cid]
        elif deadline is not None:
            self._wait(cid, deadline)
            gen = self._waiting[cid]
        else:
            gen = self._gen = self._gen + 1
            self._waiting[cid] = gen
        self._parked.setdefault(sink_name, deque()).append((cid, gen))

    def _sink_timer(self, sink_name: str, at: int) -> None:
        if self._sink_due.get(sink_name) == at:
            return
        self._sink_due[sink_name] = at
        self._gen += 1
        heapq.heappush(self._timers, (at, self._gen, "", sink_name))
        self._twake.set()

    def _wake_cid(self, cid: str, gen: int) -> bool:
        if self._waiting.get(cid) != gen:
            return False  # woken already, by its timer or another wake-up
        del self._waiting[cid]
        self._ready.put_nowait(cid)
        return True

    def _unpark(self, sink_name: str, n: int = 1) -> None:
        """Wake up to ``n`` customers waiting on ``sink_name``'s breaker."""
        parked = self._parked.get(sink_name)
        while parked and n > 0:
            cid, gen = parked.popleft()
            if self._wake_cid(cid, gen):
                n -= 1

    def _released(self, sink_name: str, breaker: CircuitBreaker, *, ok: bool) -> None:
        before = breaker.state
        breaker.release(ok)
        after = breaker.state
        if after is BreakerState.CLOSED and before is not BreakerState.CLOSED:
            self._unpark(sink_name, len(self._parked.get(sink_name, ())))  # recovered: all
        elif after is BreakerState.HALF_OPEN:
            self._unpark(sink_name, max(0, breaker.limit - breaker.inflight))
        elif after is BreakerState.OPEN:
            self._sink_timer(sink_name, breaker.open_until)

    def _breaker(self, sink_name: str) -> CircuitBreaker:
        br = self._breakers.get(sink_name)
        if br is None:
            br = self._breakers[sink_name] = CircuitBreaker(
                sink_name,
                self._router.breaker_policy(sink_name),
                self._clock.now,
                self._on_breaker,
            )
        return br

    def _on_breaker(self, sink_name: str, state: BreakerState) -> None:
        self._metrics.sink_state.labels(sink_name).set(int(state))

    def tick(self) -> int:
        """Wake every waiting action whose time came (by the injected clock); returns
        the epoch ms of the next timer, or 0 if none."""
        now = self._clock.now()
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, gen, cid, sink_name = heapq.heappop(timers)
            if cid:
                self._wake_cid(cid, gen)
            elif self._sink_due.get(sink_name) is not None:
                del self._sink_due[sink_name]
                self._unpark(sink_name)  # the open period is over: one probe
        return timers[0][0] if timers else 0

    async def _retry_loop(self) -> None:
        """Moves due retries back to the delivery tasks. Sleeps until the next one, at
        most ``tick_s`` (so a clock that jumps, or a virtual one, is noticed)."""
        while True:
            nxt = self.tick()
            self._twake.clear()
            if nxt == 0:
                await self._twake.wait()
                continue
            delay = min(max(0, nxt - self._clock.now()) / 1000, self._tick_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._twake.wait(), delay)

    # --- dead letters ---------------------------------------------------------------------
    async def _bury(self) -> None:
        """Write the kept dead letters to the dead-letter store and mark them ``dead`` (or
        ``expired``) in the outbox (both idempotent by key), then let the customer's next
        action go. On failure the letter stays kept, pending, and the exception
        propagates (the supervisor restarts the task with backoff)."""
        while self.graves:
            grave = self.graves.pop(0)
            action, sink_name, err, attempts, reason = grave
            key = action.idempotency_key
            status = "expired" if reason == "expired" else "dead"
            try:
                await self._db(self._dead.add, action, sink_name, err, attempts, reason)
                await self._db(self._store.outbox_mark, [key], status)
            except BaseException as exc:
                self.graves.insert(0, grave)
                if isinstance(exc, Exception):
                    self._health.failed("deadletter", exc)
                raise
            if "deadletter" in self._health.faults:
                self._health.ok("deadletter")
            outcome = "expired" if reason == "expired" else "dead_lettered"
            self._metrics.actions.labels(action.channel, outcome).inc()
            self._metrics.dead_letters.inc()
            self._done(action.customer_id, key)

    async def _replay_loop(self) -> None:
        """Take the dead letters ``nudge deadletter replay`` asked for (it marks them in
        the store while this engine runs): back into the outbox as pending (durable), out
        of the dead-letter store, delivered like new ones (breaker, order, metrics) but
        with no send-by deadline and the retry horizon counted from now."""
        while True:
            await asyncio.sleep(self._replay_poll_s)
            letters = await self._db(self._dead.take_replays, 500)
            if not letters:
                continue
            actions = [(d.action, False) for d in letters]
            await self._db(self._store.outbox_add, self.rows(actions))
            keys = [d.key for d in letters]
            await self._db(self._store.outbox_mark, keys, "pending")
            now = self._clock.now()
            for d in letters:
                if d.key in self._inflight:
                    continue
                self._replayed[d.key] = now
                self._enqueue(d.action, False)
            await self._db(self._dead.remove_many, keys)
            self._metrics.dead_letters.set(await self._db(self._dead.count))
            logger.info("replaying %d dead letters", len(letters))

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

    def delivery_wait(self) -> float:
        """Seconds the oldest due action has waited for a delivery task (0: none): the
        admission adds it to an accepted event's expected wait. Actions waiting out a
        retry, a breaker or quiet hours are not due, so not counted."""
        return self._ready.oldest_age()

    @property
    def waiting(self) -> int:
        """Customers whose first action waits (a retry, a breaker, quiet hours)."""
        return len(self._waiting)

    def breakers(self) -> dict[str, CircuitBreaker]:
        """The sinks' circuit breakers made so far, by sink name."""
        return dict(self._breakers)
