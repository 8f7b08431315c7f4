"""How the event loop is doing, sampled on the loop itself: how late a short sleep wakes
(``nudge_event_loop_lag_seconds``) and how much of the time the loop's thread is on a CPU
(``nudge_event_loop_busy_ratio``). Both runtimes run them, ``nudge run`` under its
supervisor (engine/embedded/runtime.py), ``nudge worker`` as app tasks of its faust loop
(engine/distributed/cli.py); each runs until cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["busy_loop", "busy_ratio", "lag_loop"]


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
