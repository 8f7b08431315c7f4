"""The runtime's periodic upkeep of its data: the checkpoint rounds and what runs with
them.

One supervised, vital task (:meth:`Upkeep.loop`): every ``checkpoint_interval`` (a paced
round takes most of the interval, so rounds start an interval apart) it brings the
journal's customer index up to date, writes a checkpoint (engine/embedded/checkpoints.py;
a failure is recorded in the health, and retried next round), compacts idle customers
(also when no event arrives to trigger the drivers' own sweep) and counts the dead
letters for their gauge.
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
        await self.index_journal()  # built once at start, then kept current
        while True:
            # a paced round takes most of the interval: rounds start an interval apart
            await asyncio.sleep(max(0.0, self.cfg.checkpoint_interval - took))
            await self.index_journal()
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

    async def index_journal(self) -> None:
        """Bring the journal's customer index up to date, off the journal's thread (an
        erase then reads only the rows it names: engine/embedded/storage/journal_index.py).
        A failure is logged: the erase refreshes it again before it reads."""
        try:
            await asyncio.to_thread(self.store.refresh_index)
        except Exception as err:
            logger.warning("journal index not refreshed: %s", err)
