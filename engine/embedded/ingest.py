"""Group commit: accepted events are journaled in batches; a request is acknowledged only
after the transaction holding its events committed.

One commit is in flight at a time, on the journal's thread. A request that finds none
schedules one for the next loop turn (so the requests read in one turn share a commit);
requests that come while one runs gather in the buffer and go in the next, which the
finished commit's callback starts (so the commit rate adapts to load without a timer).
No task sits between the thread and the requests: under load each hop through the event
loop waits for a whole loop turn (25 ms p50 at twice the sustained rate), and a writer
task awaiting an executor future took one more of them between the commit's end and the
acknowledgements than the thread's done-callback, which resolves them in the next turn.

``pending_since`` is the earliest acceptance time of events not yet handed to their
partitions: partitions never fire a timer at or after it, so the live order of timers
and events equals the replay order.

A failed commit (disk full, an I/O error) fails that commit's requests with what
``on_error`` makes of the exception (the runtime: ``StorageUnavailable``, answered 507 or
503 with ``Retry-After``) and the writer goes on with the next ones: nothing it failed was
acknowledged, and the journal's next seq did not move.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future

from engine.clock import Clock
from engine.exceptions import Backpressure
from engine.types import Event

__all__ = ["Batch", "GroupCommitWriter"]

logger = logging.getLogger(__name__)

Batch = tuple[list[Event], bytes]  # one request: its events and their JSON array
# starts appending rows on the journal's thread; the future holds their first seq
SubmitFn = Callable[[int, list[tuple[int, bytes]]], "Future[int]"]
DeliverFn = Callable[[int, int, list[Event]], None]  # first seq, accepted_at, events
ErrorFn = Callable[[Exception], Exception]  # a failed commit's error -> what requests get
RowsFn = Callable[[int, list[list[Event]]], None]  # first seq, the rows' events


class GroupCommitWriter:
    """Buffers accepted events and journals them with ``submit`` (on the journal's
    thread; first seq returned), then hands them to ``deliver`` and acknowledges the
    requests."""

    def __init__(
        self,
        clock: Clock,
        submit: SubmitFn,
        deliver: DeliverFn,
        *,
        max_queue: int,
        queued: Callable[[], int],
        on_commit: Callable[[int, float], None],
        on_error: ErrorFn | None = None,
        on_rows: RowsFn | None = None,
    ) -> None:
        self.clock = clock
        self._submit = submit
        self._deliver = deliver
        self._max_queue = max_queue
        self._queued = queued
        self._on_commit = on_commit
        self._on_error = on_error
        self._on_rows = on_rows  # told of each committed row (the journal's index)
        self._buf: list[Batch] = []
        self._buffered = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._buf_since: int | None = None
        self._inflight_since: int | None = None
        self._inflight = False
        self._scheduled = False  # a commit is to start at the next loop turn
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pending_since(self) -> int | None:
        a, b = self._buf_since, self._inflight_since
        if a is None:
            return b
        return a if b is None else min(a, b)

    @property
    def buffered(self) -> int:
        return self._buffered

    async def close(self) -> None:
        """Returns once every buffered request is committed (or failed)."""
        await self._idle.wait()

    async def accept(self, batch: Batch) -> None:
        """Journal one request's events; returns once they are durable. Raises
        Backpressure when the pipeline would hold more than ``max_queue`` events."""
        queued = self._queued() + self._buffered
        if queued + len(batch[0]) > self._max_queue:
            raise Backpressure(1.0, queued)
        loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if not self._buf:
            self._buf_since = self.clock.now()
        self._buf.append(batch)
        self._buffered += len(batch[0])
        self._waiters.append(fut)
        self._idle.clear()
        if not self._inflight and not self._scheduled:
            # at the next turn: the requests read in this one go in the same commit
            self._scheduled = True
            loop.call_soon(self._commit)
        await fut

    def _commit(self) -> None:
        """Start committing the buffer (nothing in flight)."""
        self._scheduled = False
        batches, waiters = self._buf, self._waiters
        self._inflight_since = self._buf_since
        self._buf, self._waiters, self._buf_since = [], [], None
        n = self._buffered
        self._buffered = 0
        accepted_at = max(self.clock.now(), self._inflight_since or 0)
        rows = [(len(e), body) for e, body in batches]
        self._inflight = True
        t0 = time.perf_counter()
        loop = self._loop
        assert loop is not None

        def done(f: Future[int]) -> None:  # on the journal's thread
            loop.call_soon_threadsafe(self._committed, f, batches, waiters, n, accepted_at, t0)

        try:
            self._submit(accepted_at, rows).add_done_callback(done)
        except Exception as err:  # the executor is shut down: fail these requests
            failed: Future[int] = Future()
            failed.set_exception(err)
            self._committed(failed, batches, waiters, n, accepted_at, t0)

    def _committed(
        self,
        f: Future[int],
        batches: list[Batch],
        waiters: list[asyncio.Future[None]],
        n: int,
        accepted_at: int,
        t0: float,
    ) -> None:
        """On the loop, once the commit of ``batches`` ended: hand the events over and
        acknowledge their requests (or fail them), then start the next commit."""
        try:
            err = f.exception()
            if err is not None:
                if not isinstance(err, Exception):
                    raise err
                failure = self._on_error(err) if self._on_error is not None else err
                if failure is err:  # not a known storage error: worth a traceback
                    logger.error("journal append failed", exc_info=err)
                for fut in waiters:
                    if not fut.done():
                        fut.set_exception(failure)
                return
            try:
                self._on_commit(n, time.perf_counter() - t0)
                first = f.result()
                self._deliver(first, accepted_at, [ev for events, _ in batches for ev in events])
                if self._on_rows is not None:  # after: a failure here loses nothing
                    self._on_rows(first, [events for events, _ in batches])
            except Exception:  # committed: durable, acknowledged even if handing over failed
                logger.exception("handing over %d journaled events failed", n)
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        finally:
            self._inflight_since = None
            self._inflight = False
            if self._buf:
                self._commit()
            else:
                self._idle.set()
