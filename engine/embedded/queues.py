"""Journaled events on their way to their partitions, and the loop that processes each.

The group commit (engine/embedded/ingest.py) hands every committed batch to
:meth:`PartitionQueues.deliver`, which appends each event to its partition's queue (the
partition of a customer: :func:`partition_of`) and wakes that partition's loop. One
loop per partition (:meth:`PartitionQueues.run`, supervised by the runtime) applies its
queue in slices of at most ``slice_events`` events or ``slice_seconds`` of CPU, yielding
to the event loop between slices; with nothing queued it fires the timers due up to
``safe_time`` (never past an accepted event not yet delivered), then sleeps until woken
or until its next timer is due (50 ms at most).

``queued`` counts the events delivered and not yet applied, over all partitions: the
admission's backlog (with the writer's buffer), and what a graceful stop waits out.
:meth:`PartitionQueues.drained` waits for it to reach zero: background work on the loop
(a checkpoint's packing) goes between the events' slices instead of among them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Callable

from engine.admission import Admission
from engine.clock import Clock
from engine.metrics import Metrics
from engine.partition import Partition
from engine.types import Event

__all__ = ["PartitionQueues", "partition_of"]

logger = logging.getLogger(__name__)


def partition_of(customer_id: str, n: int) -> int:
    """The partition (of ``n``) that owns ``customer_id``: stable across restarts."""
    return zlib.crc32(customer_id.encode()) % n


class PartitionQueues:
    """The per-partition queues of delivered events and their processing loops.

    Built with the runtime; :meth:`attach` gives it the partitions at start (before the
    first delivery). ``safe_time`` is the runtime's bound for firing timers."""

    def __init__(
        self,
        clock: Clock,
        metrics: Metrics,
        admission: Admission,
        safe_time: Callable[[], int],
        *,
        slice_events: int,
        slice_seconds: float,
    ) -> None:
        self.clock = clock
        self.metrics = metrics
        self.admission = admission
        self.safe_time = safe_time
        self.slice_events = slice_events
        self.slice_seconds = slice_seconds
        self.parts: list[Partition] = []
        self._queues: list[list[tuple[int, int, Event]]] = []
        self._wakes: list[asyncio.Event] = []
        self.queued = 0
        self._drained = asyncio.Event()  # set while nothing is queued
        self._drained.set()

    def attach(self, parts: list[Partition]) -> None:
        """One queue and one wake-up per partition of ``parts``."""
        self.parts = parts
        self._queues = [[] for _ in parts]
        self._wakes = [asyncio.Event() for _ in parts]

    def deliver(self, first: int, accepted_at: int, events: list[Event]) -> None:
        """Queue journaled ``events`` (seqs from ``first``) for their partitions."""
        n = len(self.parts)
        touched = set()
        for i, ev in enumerate(events):
            p = partition_of(ev.customer_id, n)
            self._queues[p].append((first + i, accepted_at, ev))
            touched.add(p)
        self.queued += len(events)
        if events:
            self._drained.clear()
        for p in touched:
            self._wakes[p].set()

    async def drained(self, limit: float) -> None:
        """Return once no event waits for its partition, or after ``limit`` seconds (work
        that can wait, under a load that never lets the queues empty, still goes on)."""
        if self.queued:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), limit)

    def _applied(self, n: int) -> None:
        """``n`` queued events left their partition's queue."""
        self.queued -= n
        if not self.queued:
            self._drained.set()

    def idle(self, index: int) -> bool:
        """Whether partition ``index`` has no queued event (it may fire timers then)."""
        return not self._queues[index]

    async def run(self, index: int) -> None:
        """Partition ``index``'s loop (see the module doc). An event that raises is
        dropped from the queue, the rest stay queued, and the error propagates (the
        supervisor logs it and restarts the loop)."""
        part = self.parts[index]
        queue = self._queues[index]
        wake = self._wakes[index]
        m = self.metrics
        size = self.slice_events
        budget = self.slice_seconds
        clock = time.perf_counter
        while True:
            if queue:
                t0 = clock()
                done = 0
                try:
                    for i in range(min(size, len(queue))):
                        seq, accepted_at, ev = queue[i]
                        done = i + 1
                        out = part.apply(seq, accepted_at, ev)
                        if out is None or out.duplicate:
                            m.events_duplicate.inc()
                        if clock() - t0 >= budget:
                            break
                except Exception:  # skip the event that failed, keep the rest queued
                    del queue[:done]
                    self._applied(done)
                    logger.error("partition %d: event seq %d failed; skipped", index, seq)
                    raise
                del queue[:done]
                batch_n = done
                took = clock() - t0
                m.processing.observe(took / batch_n)
                m.events_processed.inc(batch_n)
                self._applied(batch_n)
                self.admission.processed(batch_n)
                self.admission.tick(self.queued > 0)
                await asyncio.sleep(0)
                continue
            self.admission.tick(self.queued > 0)
            part.fire_until(self.safe_time())
            wake.clear()
            nxt = part.timers.next_due()
            timeout = (
                0.05 if nxt is None else min(0.05, max(0.001, (nxt - self.clock.now()) / 1000))
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)
