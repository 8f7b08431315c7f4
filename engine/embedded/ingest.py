"""Group commit: accepted events are journaled in batches; a request is acknowledged only
after the transaction holding its events committed.

While one commit runs, new requests gather in the buffer and go in the next transaction,
so the commit rate adapts to load without a timer. ``pending_since`` is the earliest
acceptance time of events not yet handed to their partitions: partitions never fire a
timer at or after it, so the live order of timers and events equals the replay order.

A failed commit (disk full, an I/O error) fails that commit's requests with what
``on_error`` makes of the exception (the runtime: ``StorageUnavailable``, answered 507 or
503 with ``Retry-After``) and the writer goes on with the next ones: nothing it failed was
acknowledged, and the journal's next seq did not move.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from engine.clock import Clock
from engine.embedded.supervise import Supervisor
from engine.exceptions import Backpressure
from engine.types import Event

__all__ = ["Batch", "GroupCommitWriter"]

logger = logging.getLogger(__name__)

Batch = tuple[list[Event], bytes]  # one request: its events and their JSON array
AppendFn = Callable[[int, list[tuple[int, bytes]]], Awaitable[int]]
DeliverFn = Callable[[int, int, list[Event]], None]  # first seq, accepted_at, events
ErrorFn = Callable[[Exception], Exception]  # a failed commit's error -> what requests get


class GroupCommitWriter:
    """Buffers accepted events and journals them with ``append`` (first seq returned),
    then hands them to ``deliver`` and acknowledges the requests."""

    def __init__(
        self,
        clock: Clock,
        append: AppendFn,
        deliver: DeliverFn,
        *,
        max_queue: int,
        queued: Callable[[], int],
        on_commit: Callable[[int, float], None],
        on_error: ErrorFn | None = None,
    ) -> None:
        self.clock = clock
        self._append = append
        self._deliver = deliver
        self._max_queue = max_queue
        self._queued = queued
        self._on_commit = on_commit
        self._on_error = on_error
        self._buf: list[Batch] = []
        self._buffered = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._buf_since: int | None = None
        self._inflight_since: int | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pending_since(self) -> int | None:
        a, b = self._buf_since, self._inflight_since
        if a is None:
            return b
        return a if b is None else min(a, b)

    @property
    def buffered(self) -> int:
        return self._buffered

    def start(self, supervisor: Supervisor | None = None) -> None:
        """Start the commit task (under ``supervisor``: restarted if it fails)."""
        if supervisor is None:
            self._task = asyncio.create_task(self._run(), name="journal-writer")
        else:
            self._task = supervisor.spawn("journal-writer", self._run)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def accept(self, batch: Batch) -> None:
        """Journal one request's events; returns once they are durable. Raises
        Backpressure when the pipeline would hold more than ``max_queue`` events."""
        queued = self._queued() + self._buffered
        if queued + len(batch[0]) > self._max_queue:
            raise Backpressure(1.0, queued)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._buf:
            self._buf_since = self.clock.now()
        self._buf.append(batch)
        self._buffered += len(batch[0])
        self._waiters.append(fut)
        self._wake.set()
        await fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._buf:
                if self._closing:
                    return
                continue
            batches, waiters = self._buf, self._waiters
            self._inflight_since = self._buf_since
            self._buf, self._waiters, self._buf_since = [], [], None
            n = self._buffered
            self._buffered = 0
            accepted_at = max(self.clock.now(), self._inflight_since or 0)
            t0 = time.perf_counter()
            try:
                first = await self._append(accepted_at, [(len(e), body) for e, body in batches])
            except Exception as err:  # disk full, I/O error: fail these requests, go on
                failure = self._on_error(err) if self._on_error is not None else err
                if failure is err:  # not a known storage error: worth a traceback
                    logger.exception("journal append failed")
                for fut in waiters:
                    if not fut.done():
                        fut.set_exception(failure)
                self._inflight_since = None
                continue
            try:
                self._on_commit(n, time.perf_counter() - t0)
                self._deliver(first, accepted_at, [ev for events, _ in batches for ev in events])
            finally:  # committed: durable, acknowledged even if handing them over failed
                self._inflight_since = None
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(None)
            if self._buf or self._closing:  # closing: return once the buffer is empty
                self._wake.set()
