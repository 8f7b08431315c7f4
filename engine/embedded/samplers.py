"""The runtime's process-level background loops: the GC freeze, the event loop's lag and
busy share, the storage probe.

Each is a coroutine the runtime spawns under its supervisor as a non-vital task (one
down does not make ``/readyz`` unready); each runs until cancelled at stop. They touch
no customer: they keep the process responsive (:func:`gc_freeze_loop`), measure it
(:func:`lag_loop`, :func:`busy_loop`) or find out when a storage fault is over
(:func:`probe_loop`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from engine.embedded.health import Health, probe_write

__all__ = ["busy_loop", "busy_ratio", "gc_freeze_loop", "lag_loop", "probe_loop"]

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


def busy_ratio(cpu_seconds: float, wall_seconds: float) -> float:
    """The share of ``wall_seconds`` a thread that used ``cpu_seconds`` of CPU was busy,
    within 0..1 (a clock step or a coarse CPU clock can put the raw ratio outside)."""
    if wall_seconds <= 0.0:
        return 0.0
    return min(1.0, max(0.0, cpu_seconds / wall_seconds))


async def busy_loop(
    set_busy: Callable[[float], None],
    interval: float = 1.0,
    cpu: Callable[[], float] = time.thread_time,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """``nudge_event_loop_busy_ratio``: every ``interval`` seconds, the CPU time the
    event loop's thread used (``cpu``, read on that thread: ``time.thread_time``) over
    the wall time passed. Waiting for I/O does not count, so this is how near the loop is
    to saturation whatever the event rate: under ``bench_ingest`` the p99 stayed under
    50 ms while it was at most ~72% and not past ~78% (BENCHMARKS.md)."""
    c0, t0 = cpu(), clock()
    while True:
        await asyncio.sleep(interval)
        c1, t1 = cpu(), clock()
        set_busy(busy_ratio(c1 - c0, t1 - t0))
        c0, t0 = c1, t1


async def lag_loop(observe: Callable[[float], None]) -> None:
    """``nudge_event_loop_lag_seconds``: how late a 0.1 s sleep wakes."""
    clock = time.perf_counter
    while True:
        t0 = clock()
        await asyncio.sleep(0.1)
        observe(max(0.0, clock() - t0 - 0.1))


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
