"""The runtime's process-level background loops: the GC freeze and the storage probe (the
event loop's own measures, which the distributed worker runs too: engine/loop_samplers.py).

Each is a coroutine the runtime spawns under its supervisor as a non-vital task (one
down does not make ``/readyz`` unready); each runs until cancelled at stop. They touch
no customer: they keep the process responsive (:func:`gc_freeze_loop`) or find out when a
storage fault is over (:func:`probe_loop`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from engine.embedded.health import Health, probe_write

__all__ = ["gc_freeze_loop", "probe_loop"]

logger = logging.getLogger(__name__)


async def probe_loop(
    interval: float,
    health: Health,
    data_dir: Path,
    run: Callable[..., Awaitable[Any]],
) -> None:
    """While a storage fault is recorded: every ``interval`` seconds, write and sync a
    small file in ``data_dir`` (with ``run``: on the journal's thread); once that
    succeeds, the faults are over (a store that still fails records its own again), and
    /readyz turns ready with no client having to retry first."""
    while True:
        await asyncio.sleep(interval)
        if not health.faults:
            continue
        try:
            await run(probe_write, data_dir)
        except OSError as err:
            logger.debug("storage probe failed: %s", err)
            continue
        health.clear()


async def gc_freeze_loop(interval: float) -> None:
    """Customer states are long-lived and acyclic, and a busy engine creates some
    100k surviving containers a second. Left to the cyclic GC, each full collection
    walks every survivor since the last freeze: measured 30-130 ms loop stalls about
    every second under bench_ingest, collecting nothing. So, every ``interval``
    (``gc_freeze_interval``): collect the young generations (where cyclic garbage dies),
    then move the survivors to the permanent generation. Every 0.25 s rather than every
    second: each call then walks a quarter of the survivors (bench_ingest at 25k
    events/s: worst calls 5-7 ms instead of 11-20 ms), and the automatic full
    collections in between, which walk everything not yet frozen, became rare (1
    against 5-6 per run, 15-49 ms each)."""
    while True:
        await asyncio.sleep(interval)
        gc.collect(1)
        gc.freeze()
