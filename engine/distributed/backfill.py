"""Segment backfill on ``nudge worker`` (docs/segments.md, "Backfill"; the embedded
runtime's is engine/embedded/segment_backfill.py).

After the recovery of the owned partitions (start, every rebalance) and after each rule
deploy, :class:`WorkerBackfill` walks the owned partitions' customers and, for those whose
state was last evaluated under other segments (``segments_digest`` differs from the rule
set's), has the engine call the pure core's ``backfill_segments``
(:meth:`~engine.distributed.processing.PartitionEngine.backfill`). Its output (entries and
exits, actions of ``segment_entered`` flows, the changed rows) goes through the output
pipeline like a timer tick's: membership records and actions acknowledged before the
changelog rows, so a restart does not backfill again what reached the changelog.

- **Under the processing lock, a slice at a time** (``slice_size`` customers, then the
  lock is released and the batch or tick waiting for it runs): a backfill never stops
  the partitions for long.
- **Processing time** is what a timer fired then would get (``limit``: the wall clock
  when the partition is caught up, else its clock), after the timers due up to it fire.
- **Finding who needs it** reads the digests of the held states (packed ones without
  inflating them) ``scan_size`` ids per loop turn, outside the lock. A customer made
  current meanwhile (an event, a merge, the segment timer) is skipped.
- **Cancelled** by a newer start (a deploy, a rebalance) or :meth:`stop` (revocation):
  at the next slice boundary, never in the middle of one (its output is queued whole).
  A restart evaluates again customers the previous run had not reached.

Progress (``done`` of ``total``, ``running``) is kept in Redis per worker
(:meth:`engine.distributed.storage.redis.RedisState.put_backfill`, every ``publish_every`` seconds
while it runs and at the end); the ingest sums the live workers' entries into ``GET
/v1/segments``' ``backfill``. A backfilled state is left inflated (the memory store
compacts it again once idle for an hour); the embedded runtime packs it again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from engine.distributed.processing import PartitionEngine

__all__ = ["BackfillHost", "Publish", "WorkerBackfill"]

logger = logging.getLogger(__name__)

Publish = Callable[[dict[str, Any], int], Awaitable[None]]
"""Store the progress (a JSON-able dict) for ``ttl`` seconds."""


class BackfillHost(Protocol):
    """What the backfill reads of the worker (engine/distributed/app.py's WorkerApp)."""

    @property
    def engine(self) -> PartitionEngine | None: ...
    @property
    def rebalancing(self) -> bool: ...
    @property
    def lock(self) -> asyncio.Lock: ...

    def limit(self, index: int) -> int:
        """How far timers of partition ``index`` may fire now (epoch ms)."""
        ...

    def failed(self, exc: BaseException) -> None:
        """Processing failed half-way (memory may be ahead of Kafka): the worker exits."""
        ...


class WorkerBackfill:
    """The worker's background segment backfill (see the module doc)."""

    RUNNING_TTL = 60
    DONE_TTL = 86_400

    def __init__(
        self,
        host: BackfillHost,
        publish: Publish | None = None,
        *,
        slice_size: int = 100,
        scan_size: int = 2000,
        publish_every: float = 1.0,
    ) -> None:
        self.host = host
        self.publish = publish
        self.slice_size = slice_size
        self.scan_size = scan_size
        self.publish_every = publish_every
        self.done = 0
        self.total = 0
        self.digest: str | None = None
        self._gen = 0
        self._task: asyncio.Task[None] | None = None
        self._published = 0.0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def progress(self) -> dict[str, Any]:
        return {"done": self.done, "total": self.total, "running": self.running}

    def start(self) -> None:
        """(Re)start for the engine's rule set and owned partitions; a run in progress
        stops at its next slice boundary first."""
        self._gen += 1
        prev = self._task
        self._task = asyncio.get_running_loop().create_task(
            self._run(prev, self._gen), name="segment-backfill"
        )

    async def stop(self) -> None:
        """Stop the run in progress (at its next slice boundary) and wait for it."""
        self._gen += 1
        task = self._task
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    async def wait(self) -> None:
        """Until no backfill runs (one restarted meanwhile included)."""
        while (task := self._task) is not None and not task.done():
            await asyncio.wait({task})

    async def _run(self, prev: asyncio.Task[None] | None, gen: int) -> None:
        if prev is not None:
            await asyncio.wait({prev})
        if gen != self._gen:
            return
        engine = self.host.engine
        if engine is None:
            return
        t0 = time.perf_counter()
        digest = self.digest = engine.ruleset.segments_digest
        self.done = self.total = 0
        todo: dict[int, list[str]] = {}
        for p in sorted(engine.parts):
            ids = engine.customer_ids(p)
            found: list[str] = []
            for i in range(0, len(ids), self.scan_size):
                found += engine.needs_backfill(p, ids[i : i + self.scan_size], digest)
                await asyncio.sleep(0)
                if gen != self._gen:
                    return
            todo[p] = found
            self.total += len(found)
        if self.total:
            logger.info(
                "segment backfill started",
                extra={"customers": self.total, "digest": digest, "partitions": sorted(todo)},
            )
        await self._publish(force=True)
        for p, ids in todo.items():
            for i in range(0, len(ids), self.slice_size):
                if not await self._slice(engine, p, ids[i : i + self.slice_size], gen):
                    return
                self.done += min(self.slice_size, len(ids) - i)
                await self._publish()
                await asyncio.sleep(0)
        if gen != self._gen:
            return
        await self._publish(force=True, running=False)
        if self.total:
            logger.info(
                "segment backfill done",
                extra={"customers": self.total, "seconds": round(time.perf_counter() - t0, 3)},
            )

    async def _slice(self, engine: PartitionEngine, index: int, ids: list[str], gen: int) -> bool:
        """One slice under the lock; False when stopped (a newer run, a rebalance)."""
        host = self.host
        async with host.lock:
            if gen != self._gen or host.rebalancing or index not in engine.parts:
                return False
            try:
                durable = await engine.backfill(index, ids, host.limit(index))
                await asyncio.shield(durable)  # acknowledged before the next batch or tick
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                host.failed(exc)
                return False
        return True

    async def _publish(self, *, force: bool = False, running: bool = True) -> None:
        if self.publish is None:
            return
        now = time.monotonic()
        if not force and now - self._published < self.publish_every:
            return
        self._published = now
        progress: dict[str, Any] = {
            "done": self.done,
            "total": self.total,
            "running": running,
            "digest": self.digest,
        }
        await self.publish(progress, self.RUNNING_TTL if running else self.DONE_TTL)
