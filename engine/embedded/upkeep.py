"""The runtime's periodic upkeep of its data: the checkpoint rounds and what runs with them.

One supervised, vital task (:meth:`Upkeep.loop`): every ``checkpoint_interval`` (a paced
round takes most of the interval, so rounds start an interval apart) it writes a
checkpoint (engine/embedded/checkpoints.py; a failure is recorded in the health, and
retried next round), compacts idle customers (also when no event arrives to trigger the
drivers' own sweep) and counts the dead letters for their gauge. Beside it, a task that is
not vital (:meth:`Upkeep.index_loop`) keeps the journal's customer index current, every
``journal_index_interval``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from engine.clock import Clock
from engine.embedded.checkpoints import Checkpoints
from engine.embedded.config import RuntimeConfig
from engine.embedded.health import Health
from engine.embedded.storage.sqlite import SqliteStore
from engine.metrics import Metrics
from engine.partition import Partition

__all__ = ["Upkeep"]

logger = logging.getLogger(__name__)

_INDEX_SLICE = 256 * 1024  # bytes of journal bodies per slice: ~1 ms of the loop


class Upkeep:
    """The checkpoint loop of one started runtime, over its partitions and stores.
    ``count_dead`` counts the dead letters (on the state database's thread)."""

    def __init__(
        self,
        cfg: RuntimeConfig,
        clock: Clock,
        metrics: Metrics,
        health: Health,
        checkpoints: Checkpoints,
        parts: list[Partition],
        store: SqliteStore,
        count_dead: Callable[[], Awaitable[Any]],
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.metrics = metrics
        self.health = health
        self.checkpoints = checkpoints
        self.parts = parts
        self.store = store
        self.count_dead = count_dead

    async def loop(self) -> None:
        """The checkpoint rounds (see the module doc); runs until cancelled."""
        m = self.metrics
        mode = self.cfg.checkpoint_mode
        took = 0.0
        while True:
            # a paced round takes most of the interval: rounds start an interval apart
            await asyncio.sleep(max(0.0, self.cfg.checkpoint_interval - took))
            t0 = time.monotonic()
            try:
                if mode == "paced":
                    written = await self.checkpoints.paced_checkpoint()
                else:
                    await self.checkpoints.checkpoint(spread=self.cfg.checkpoint_interval * 0.4)
                    written = True
                if written:
                    self.health.ok("checkpoint")
            except Exception as err:
                if self.health.failed("checkpoint", err) is None:
                    logger.exception("checkpoint failed; will retry")
            await self.compact()  # also when no event arrives to trigger the drivers' sweep
            try:
                m.dead_letters.set(await self.count_dead())
            except Exception as err:  # a gauge: never worth the task
                logger.warning("dead letters not counted: %s", err)
            took = time.monotonic() - t0 if mode == "paced" else 0.0

    async def compact(self) -> int:
        """Compact idle customers (state/memory.py) a slice per loop turn; how many."""
        before = self.clock.now() - int(self.cfg.compact_idle_s * 1000)
        size = self.cfg.compact_slice
        n = 0
        for p in self.parts:
            while (k := p.store.compact_idle(before, size)) > 0:
                n += k
                await asyncio.sleep(0)
                if k < size:
                    break
        return n

    async def index_loop(self) -> None:
        """Keep the journal's customer index current (built at start, then every
        ``journal_index_interval``); runs until cancelled."""
        while True:
            await self.index_journal()
            await asyncio.sleep(self.cfg.journal_index_interval)

    async def index_journal(self) -> None:
        """Index the journal rows appended since the last call (an erase then reads only
        the rows it names: engine/embedded/storage/journal_index.py), on the loop in slices
        of ``_INDEX_SLICE`` bytes, the loop's other work between them. A failure is logged:
        the erase refreshes the index before it reads."""
        while True:
            try:
                more = self.store.index_step(_INDEX_SLICE)
            except Exception as err:
                logger.warning("journal index not refreshed: %s", err)
                return
            if not more:  # done; or None: an erase refreshes it now
                return
            await asyncio.sleep(0)
