"""Backfill of segments for existing customers on ``nudge run`` (docs/segments.md, "Backfill").

A customer's segments are evaluated at its events and its segment timer. A segment added by
a deploy (or present when the runtime restarts on states written before it existed) would
then never be computed for a customer who sends nothing more, and a time-based one (no
order in 90 days) would never flip for a dormant customer, who has no segment timer. So
after the start (recovery done) and after each deploy, :class:`SegmentBackfill` walks every
partition's customers and, for each whose state was last evaluated under other segments
(``CustomerState.segments_digest`` differs from ``RuleSet.segments_digest``), calls the pure
core's :meth:`~engine.processor.Processor.backfill_segments` through the partition's
driver: the output goes through the runtime's normal handler (actions to the outbox, entries
to ``segment_entered`` flows, the segment index updated) and the state is marked changed
for the next checkpoint, which persists the digest, so a restart does not backfill again.

Processing time is what a timer due then would get: the partition first fires its timers
due up to the runtime's ``safe_time`` (never at or after an accepted event not yet handed
to it), then the backfill runs at that time, and only while the partition's queue is empty,
so an event queued earlier is never processed after it at a later time.

It runs on the event loop a slice of customers at a time, in two passes per partition:
finding who needs it (a live state's field; a compacted state's digest is decoded from its
bytes alone, without inflating it: engine/segment_digest.py, ~1.3 us a customer), then
evaluating them (~16 us a customer with a send, inflating and compacting again included;
100k packed customers, one core). ``slice_size`` (100) customers are evaluated per loop
turn, ~1.6 ms like a partition's slice of events (``RuntimeConfig.slice_events``), ten
times as many digests read; 1M customers take some 20 s of loop time in all. A compacted
state inflated for its backfill is compacted again right after, so a deploy does not bring
every idle customer back into memory. A deploy during a backfill cancels it and starts
over for the new rule set (customers already done under the previous one are evaluated
again). A rule set without segments still backfills the states evaluated under some
(digest set): that clears their memberships and their segment timer.

Progress: :attr:`progress` (``GET /v1/segments``' ``backfill``), and log lines at the start,
every ``log_every`` customers and the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from engine.segment_digest import held_digest
from state.customer import CustomerState, pack

if TYPE_CHECKING:
    from engine.partition import Partition
    from rules.ruleset import RuleSet


class Host(Protocol):
    """What the backfill reads of the runtime that runs it (engine/embedded/runtime.py's
    Runtime): its partitions, whether one has queued events, and how far timers may
    fire."""

    parts: list[Partition]

    def partition_idle(self, index: int) -> bool: ...

    def safe_time(self) -> int: ...


__all__ = ["SegmentBackfill"]

logger = logging.getLogger(__name__)


class SegmentBackfill:
    """The runtime's background backfill (see the module doc). ``start`` after recovery
    and after every deploy; ``stop`` before the final checkpoint."""

    def __init__(self, runtime: Host, *, slice_size: int = 100, log_every: int = 100_000):
        self.runtime = runtime
        self.slice_size = slice_size
        self.log_every = log_every
        self.done = 0
        self.total = 0
        self.backfilled = 0  # customers evaluated (the others were current)
        self.digest: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def progress(self) -> dict[str, Any]:
        """``done`` of ``total`` customers found to need a backfill so far; ``total`` is
        final once every partition has been scanned."""
        return {"done": self.done, "total": self.total, "running": self.running}

    async def start(self, ruleset: RuleSet) -> None:
        """(Re)start the backfill for ``ruleset``: one running is cancelled first."""
        await self.stop()
        self.done = self.total = self.backfilled = 0
        self.digest = ruleset.segments_digest
        self._task = asyncio.create_task(self._run(ruleset), name="segment-backfill")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait(self) -> None:
        """Until no backfill runs (one restarted meanwhile by a deploy included)."""
        while (task := self._task) is not None and not task.done():
            await asyncio.wait({task})

    async def _run(self, ruleset: RuleSet) -> None:
        t0 = time.perf_counter()
        digest = ruleset.segments_digest
        try:
            todo = [await self._find(p, digest) for p in self.runtime.parts]
            if self.total:
                logger.info(
                    "segment backfill started",
                    extra={"customers": self.total, "digest": digest},
                )
            for part, ids in zip(self.runtime.parts, todo, strict=True):
                await self._backfill(part, ids)
        except Exception:
            logger.exception("segment backfill failed; the next deploy or start retries it")
            return
        if self.total:
            logger.info(
                "segment backfill done",
                extra={
                    "customers": self.total,
                    "evaluated": self.backfilled,
                    "seconds": round(time.perf_counter() - t0, 3),
                },
            )

    async def _find(self, part: Partition, digest: str | None) -> list[str]:
        """The ids of ``part``'s customers whose state needs a backfill under ``digest``."""
        # the store's own mapping (live states or packed bytes): iterating the store
        # would inflate every compacted state (engine/embedded/models.py does the same)
        held = part.store._data
        ids = list(held)
        found: list[str] = []
        size = self.slice_size * 10  # a digest read is a tenth of an evaluation
        for i in range(0, len(ids), size):
            before = len(found)
            for cid in ids[i : i + size]:
                st = held.get(cid)
                if st is None:
                    continue
                have, merged = held_digest(st)
                if have != digest and not merged:
                    found.append(cid)
            self.total += len(found) - before
            await asyncio.sleep(0)
        return found

    async def _backfill(self, part: Partition, ids: list[str]) -> None:
        rt = self.runtime
        digest = self.digest
        held = part.store._data
        backfill = part.driver.processor.backfill_segments
        emit = part.driver._emit  # the driver's output path: touch, sweep, on_output
        size = self.slice_size
        i = 0
        while i < len(ids):
            if not rt.partition_idle(part.index):
                await asyncio.sleep(0.001)  # its events first, at their acceptance times
                continue
            t = rt.safe_time()
            part.fire_until(t)  # what is due first, as the partition loop does
            part.clock.set(t)
            now = part.clock.now()
            for cid in ids[i : i + size]:
                self.done += 1
                if self.done % self.log_every == 0:
                    logger.info(
                        "segment backfill progress",
                        extra={"done": self.done, "total": self.total},
                    )
                st = held.get(cid)
                if st is None:  # erased since
                    continue
                have, merged = held_digest(st)
                if have == digest or merged:  # made current since (a merge, a timer)
                    continue
                emit(backfill(cid, now))
                self.backfilled += 1
                if isinstance(st, bytes):
                    _repack(part, cid)
            i += size
            await asyncio.sleep(0)


def _repack(part: Partition, customer_id: str) -> None:
    """Compact again a state that was compacted before its backfill inflated it (as
    ``MemoryStore.compact_idle`` does; the checkpoint reads packed bytes as they are)."""
    store = part.store
    st = store._data.get(customer_id)
    if type(st) is CustomerState:
        store._hot.pop(customer_id, None)
        store._data[customer_id] = pack(st)
